"""The follow-up's interventions beyond the negative-side clamp, each against its random control (Kong et al.,
ICLR 2026; PAPER.md §8): the positive-side mirror (``y → min(y, 0)``, asked for by its reviewers) and the
authors' post-activation patches ``posrelu`` and ``signflip`` (:mod:`wnb.compression.patches`).

:func:`intervention_study` measures, for each intervention, the Wasserstein neurons (the top ``fraction`` of
each layer by WD) and random neurons of the same count per layer (one row per seed), with the statistics of
:func:`wnb.sign_ablation_study` (paired differences to dense and Wasserstein − random, McNemar, verdicts,
spread over seeds: :func:`wnb.experiments.sign_statistics.compare_rows`).

    scores = wnb.wasserstein_scores(lm, calib)
    table = intervention_study(lm, held_out, scores, pairs=wnb.minimal_pairs("tse", n=20))
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import pandas as pd
from tqdm.auto import tqdm

from wnb.compression.patches import (
    INTERVENTIONS,
    PATCHES,
    check_intervention,
    intervened,
    patch_plan,
)
from wnb.core.inference import perplexity_of
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.experiments.minimal_pairs import check_pairs
from wnb.experiments.pair_scoring import minimal_pair_scores
from wnb.experiments.sign_statistics import (
    MINIMUM_DELTA_ACCURACY,
    MINIMUM_DELTA_NLL,
    accuracy_columns,
    compare_rows,
)
from wnb.model.lm import require_local
from wnb.scoring.selection import (
    check_fraction,
    check_scores,
    count_per_layer,
    select_random,
    select_wasserstein,
)
from wnb.tracing.nll import token_nll

# the negative-side clamp (the follow-up's intervention), its mirror, and the two patches
DEFAULT_INTERVENTIONS = ("negative", "positive", "posrelu", "signflip")


def measure(lm, held_out, selection: Mapping, intervention: str = "negative", pairs=None, batch_size: int = 8,
            pair_batch_size: int = 32, progress: bool = True, score: str = "sum") -> tuple[dict, dict]:
    """The model with ``intervention`` on ``selection`` (``{layer: indices}``; empty: dense): held-out
    ``perplexity, ppl_low, ppl_high`` (95% bootstrap over windows) when ``held_out`` is given, ``accuracy`` and
    ``accuracy_<phenomenon>`` with ``pairs``, ``seconds``; and what the paired comparisons need, ``{"nll": mean
    NLL per window or None, "scores": the minimal_pair_scores table or None}``."""
    start = time.perf_counter()
    row: dict = {}
    raw: dict = {"nll": None, "scores": None}
    with intervened(lm, selection, intervention):
        if held_out is not None:
            nll = token_nll(lm, held_out, batch_size=batch_size, progress=progress)
            row.update(perplexity_of(nll))
            raw["nll"] = nll.double().mean(1).numpy()
        if pairs is not None:
            raw["scores"] = minimal_pair_scores(lm, pairs, batch_size=pair_batch_size, progress=progress, score=score)
            row.update(accuracy_columns(raw["scores"]))
    row["seconds"] = time.perf_counter() - start
    return row, raw


def _check(lm, held_out, scores, fraction, interventions, seeds, pairs):
    require_local(lm, "interventions")
    check_fraction(fraction)
    interventions = [interventions] if isinstance(interventions, str) else list(interventions)
    if not interventions:
        raise WnbError(f"interventions is empty; choose from {', '.join(INTERVENTIONS)}")
    for intervention in interventions:
        check_intervention(intervention)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise WnbError("seeds is empty; the random control needs at least one seed")
    scores = check_scores(lm, scores)
    if any(i in PATCHES for i in interventions):
        patch_plan(lm, {name: [] for name in scores})  # the patches need first FFN projections
    held_out = check_windows(held_out, lm, min_len=2)
    if pairs is not None:
        pairs = check_pairs(pairs)
        if lm.tokenizer is None:
            raise WnbError(f"{lm.name} has no tokenizer; minimal pairs need one (pass pairs=None)")
    return held_out, scores, list(dict.fromkeys(interventions)), seeds, pairs


def intervention_study(lm, held_out, scores: Mapping, fraction: float = 0.01, interventions=DEFAULT_INTERVENTIONS,
                       seeds=(0, 1, 2), pairs=None, batch_size: int = 8, pair_batch_size: int = 32,
                       score: str = "sum", progress: bool = True, minimum_nll: float = MINIMUM_DELTA_NLL,
                       minimum_accuracy: float = MINIMUM_DELTA_ACCURACY) -> pd.DataFrame:
    """Each of ``interventions`` (:data:`wnb.compression.patches.INTERVENTIONS`; default: the negative-side
    clamp, its positive-side mirror, ``posrelu`` and ``signflip``) on the Wasserstein neurons (the top
    ``fraction`` of each layer of ``scores`` by WD, :func:`wnb.wasserstein_scores`) and on random neurons of
    the same count per layer (one row per seed), against the dense model.

    One table: the ``dense`` row first (``intervention`` ``"none"``), then per intervention a ``wasserstein``
    row and a ``random`` row per seed, with ``intervention, selection, seed, fraction, n_neurons, per_layer``,
    the measurements of :func:`measure` (``pairs``: minimal pairs, scored by ``score``) and, per
    intervention, the paired columns of :func:`wnb.experiments.sign_statistics.compare_rows`: every row
    against dense (``delta_*``, ``nll_verdict``, ``mcnemar_p``...), every random row against the Wasserstein
    row (``w_delta_*``, ``w_nll_verdict``...) and the spread over seeds. The model is unchanged afterwards.
    """
    held_out, scores, interventions, seeds, pairs = _check(lm, held_out, scores, fraction, interventions, seeds, pairs)
    wasserstein = select_wasserstein(scores, fraction)
    counts = {name: idx.numel() for name, idx in wasserstein.items()}
    opts = dict(pairs=pairs, batch_size=batch_size, pair_batch_size=pair_batch_size, progress=progress, score=score)
    plan = [("wasserstein", None, wasserstein)] + [("random", s, select_random(scores, counts, s)) for s in seeds]
    dense_row, dense_raw = measure(lm, held_out, {}, **opts)
    frames = []
    with tqdm(total=len(interventions) * len(plan), desc="interventions", disable=not progress, leave=False) as bar:
        for intervention in interventions:
            rows = [{"selection": "dense", "seed": None, "fraction": fraction, "n_neurons": 0, "per_layer": 0,
                     **dense_row}]
            raws = [dense_raw]
            for selection, seed, chosen in plan:
                bar.set_postfix_str(f"{intervention}: {selection}" + ("" if seed is None else f" {seed}"))
                row, raw = measure(lm, held_out, chosen, intervention, **opts)
                rows.append({"selection": selection, "seed": seed, "fraction": fraction,
                             "n_neurons": count_per_layer(chosen),
                             "per_layer": max((i.numel() for i in chosen.values()), default=0), **row})
                raws.append(raw)
                bar.update()
            table = compare_rows(rows, raws, minimum_nll, minimum_accuracy)
            table.insert(0, "intervention", intervention)
            frames.append(table if not frames else table.iloc[1:])
    out = pd.concat(frames, ignore_index=True)
    out.loc[0, "intervention"] = "none"
    out["seed"] = out["seed"].astype("Int64")
    return out
