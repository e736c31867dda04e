"""Sign-specific ablation of neurons (Kong, Ning, Adler, Shavit, "Negative Pre-activations Differentiate
Syntax", ICLR 2026; PAPER.md §8): the study with its controls. The clamp itself is
:func:`wnb.compression.clamp.sign_ablated`; the selections are :mod:`wnb.scoring.selection`'s and
:mod:`wnb.scoring.controls`'; the statistics the set is picked on and the matched search are
:mod:`wnb.experiments.sign_controls`'; the depth profile is :mod:`wnb.experiments.sign_depth`.

:func:`sign_ablation_study` ablates the top ``fraction`` of each layer's neurons by WD (the Wasserstein
neurons) and its controls, and measures held-out perplexity (and minimal-pair accuracy), each also as a
paired difference to dense and to the Wasserstein ablation with its bootstrap interval, McNemar's test
and a verdict worded by the interval (:mod:`wnb.core.inference`, :mod:`wnb.experiments.sign_statistics`).
The controls (:data:`wnb.scoring.selection.CONTROLS`):

- ``random``, one per seed: the same count per layer, uniform over all of the layer's neurons (they may
  overlap the Wasserstein set, as in the follow-up);
- ``matched``, one per ``matched_seeds`` (default: the first seed): neurons from ``pool`` —
  ``"outside"`` the top ``exclude`` (10%) of each layer by WD in a seeded random order, or the
  ``"bottom"`` of the WD ranking (the authors' ``location="bottom"``) — as many per layer as bisection
  finds for the held-out perplexity to come within ``tolerance`` (2%) of the Wasserstein ablation's
  (``target_perplexity``, ``within_tolerance``, ``evaluations``, ``pool`` and ``note`` report the search);
- ``mirror``: the Wasserstein neurons themselves with the other side clamped (``side="negative"``: their
  positive outputs, ``y → min(y, 0)``), the control the follow-up's reviewers asked for. Its ``w_delta_*``
  columns (this side − the other, paired) test sign specificity; ``side="both"`` has no mirror, and the
  default controls then leave it out;
- ``variance``, ``tokens``, ``positions``: one twin per Wasserstein neuron from outside the top 10%, with
  the closest output variance, or a tail on the same tokens or at the same positions
  (:mod:`wnb.scoring.controls`).

Selections are ``{layer: LongTensor of neuron indices}``; :func:`wasserstein_scores` gives the WD they
are chosen by, and can be computed once and passed to every function here as ``scores=``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from wnb.compression.clamp import check_side, mirror_side, sign_ablated
from wnb.core.inference import perplexity_of
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.experiments.minimal_pairs import check_pairs
from wnb.experiments.pair_sets import check_score, score_pair_sets
from wnb.experiments.sign_controls import (
    MATCHED_TOLERANCE,
    check_controls,
    match_perplexity,
    rank_columns,
    stability_columns,
    study_fields,
    study_statistics,
)
from wnb.experiments.sign_statistics import (
    MINIMUM_DELTA_ACCURACY,
    MINIMUM_DELTA_NLL,
    accuracy_columns,
    compare_rows,
)
from wnb.model.architectures import check_layers, first_ffn_layers
from wnb.model.lm import require_local
from wnb.scoring.controls import TWIN_CONTROLS, select_twins
from wnb.scoring.selection import (
    CONTROLS,
    DEFAULT_CONTROLS,
    MATCHED_EXCLUDE,
    check_fraction,
    check_pool,
    check_scores,
    count_per_layer,
    matched_candidates,
    select_matched,
    select_random,
    select_wasserstein,
    wd_ranks,
)
from wnb.tracing.nll import token_nll


def wasserstein_scores(lm, calib, layers=None, max_tokens: int | None = None, batch_size: int = 8,
                       streaming: bool = False, max_bytes: int | None = None,
                       progress: bool = True, skip_first: int = 0) -> dict[str, torch.Tensor]:
    """WD (to N(0, 1), PAPER.md §2) of every neuron of ``layers`` (default: the first FFN projection of
    every block) over the calibration tokens (the first ``skip_first`` positions of every window left
    out), as ``{layer: [n_neurons] float64}``.

    The one many-layer scorer (:func:`wnb.scoring.layers.score_layers`, the one-pass reader): exact WD keeps
    the layers' outputs during the pass, in as few passes as ``max_bytes`` allows (default: the smaller of
    1 GiB and 60% of free memory; each pass stops after its deepest layer); ``streaming=True`` keeps a sketch
    per neuron instead (one pass, memory per neuron, WD within 1e-3);
    :func:`wnb.experiments.sign_controls.study_statistics` gives the other fields the study uses."""
    layers = check_layers(lm, first_ffn_layers(lm) if layers is None else layers)
    stats = study_statistics(lm, calib, layers, ("wd",), skip_first=skip_first, max_tokens=max_tokens,
                             batch_size=batch_size, max_bytes=max_bytes, wd="streaming" if streaming else "exact",
                             progress=progress)
    return {name: s["wd"] for name, s in stats.items()}


# ---------------------------------------------------------------- evaluation

def ablated_nll(lm, held_out, selection, side: str = "negative", batch_size: int = 8,
                progress: bool = True) -> torch.Tensor:
    """Per-token NLL of ``held_out`` (:func:`wnb.token_nll`) with ``selection`` sign-ablated on ``side``:
    what every row of the study, the matched search and the depth profile measure. ``nll_fn`` of those
    functions replaces it (same arguments, e.g. a cached version)."""

    with sign_ablated(lm, selection, side):
        return token_nll(lm, held_out, batch_size=batch_size, progress=progress)


def evaluate_selection(lm, held_out, selection, side, pairs, batch_size, pair_batch_size, progress, seed, nll_fn,
                       nll=None, pair_score=None, prefix=None) -> tuple[dict, dict]:
    """One row's perplexity (and accuracy) columns, and what the paired comparisons need: ``{"nll": NLL per
    window [n_windows], "scores": the pairs' scores (:func:`wnb.experiments.pair_sets.score_pair_sets`) or
    None}``. With pairs the row says which and how they were scored: ``pair_sets``, ``pair_score`` and
    ``scoring_rule`` (what comes before each sentence)."""

    start = time.perf_counter()
    if nll is None:
        nll = nll_fn(lm, held_out, selection, side, batch_size=batch_size, progress=progress)
    row = perplexity_of(nll, seed=seed)
    scores = None
    with sign_ablated(lm, selection, side):
        if pairs is not None:
            scores = score_pair_sets(lm, pairs, score=pair_score, prefix=prefix, batch_size=pair_batch_size,
                                     progress=progress)
            row.update(accuracy_columns(scores))
            row.update(pair_sets=", ".join(dict.fromkeys(scores["set"])), pair_score=scores.attrs["score"],
                       scoring_rule=scores.attrs["scoring_rule"])
    row["seconds"] = time.perf_counter() - start
    return row, {"nll": torch.as_tensor(nll, dtype=torch.float64).mean(1).numpy(), "scores": scores}


def prepare_study(lm, calib, held_out, layers, fraction, side, pairs, scores, batch_size, progress,
                  statistics=None, fields=("wd",), skip_first: int = 0):
    """Validate everything and return (held_out, pairs, scores, statistics): WD and the other ``fields``
    computed over ``calib`` where ``scores`` / ``statistics`` do not give them."""

    require_local(lm, "sign ablation")
    check_side(side)
    check_fraction(fraction)
    held_out = check_windows(held_out, lm)
    if held_out.shape[1] < 2:
        raise WnbError("held-out windows need at least 2 tokens each")
    if pairs is not None:
        pairs = check_pairs(pairs)
        if lm.tokenizer is None:
            raise WnbError(f"{lm.name} has no tokenizer; minimal pairs need one (pass pairs=None)")
    statistics = {name: dict(s) for name, s in (statistics or {}).items()}
    if scores is not None:
        scores = check_scores(lm, scores, layers)
        fields = [f for f in fields if f not in ("wd", "wd_halves")]
    names = list(scores) if scores is not None else check_layers(lm, first_ffn_layers(lm) if layers is None else layers)
    missing = [f for f in fields if any(f not in statistics.get(n, {}) for n in names)]
    if missing and calib is not None:
        calib = check_windows(calib, lm)
        for name, stats in study_statistics(lm, calib, names, missing, skip_first=skip_first, batch_size=batch_size,
                                            progress=progress).items():
            statistics.setdefault(name, {}).update(stats)
    elif scores is None and "wd" in missing:
        raise WnbError("calibration windows are needed to compute WD: pass calib= (or scores=)")
    if scores is None:
        scores = {name: statistics[name]["wd"] for name in names}
    return held_out, pairs, scores, statistics


def sign_ablation_study(lm, calib, held_out, layers=None, fraction: float = 0.01, side: str = "negative",
                        controls=DEFAULT_CONTROLS, seeds=(0, 1, 2), pairs=None, progress: bool = True,
                        scores: Mapping | None = None, matched_seeds=None, exclude: float = MATCHED_EXCLUDE,
                        tolerance: float = MATCHED_TOLERANCE, batch_size: int = 8,
                        pair_batch_size: int = 32, nll_fn=None, minimum_nll: float = MINIMUM_DELTA_NLL,
                        minimum_accuracy: float = MINIMUM_DELTA_ACCURACY, pool: str = "outside",
                        skip_first: int = 0, statistics: Mapping | None = None, pair_score: str | None = None,
                        prefix: str | None = None) -> pd.DataFrame:
    """The follow-up's main experiment (module docstring: the controls): held-out perplexity (and
    minimal-pair accuracy) with the sign-specific ablation of the Wasserstein neurons — the top ``fraction``
    of each of ``layers`` (default: the first FFN projection of every block) by WD over all of ``calib``
    (the first ``skip_first`` positions of every window left out), or ``scores`` — and of each control.

    ``statistics`` (``{layer: {field: tensor}}``, :func:`wnb.experiments.sign_controls.study_statistics`)
    gives what ``calib`` would otherwise be scored for: ``wd_halves`` (the set's stability: the Wasserstein
    row's ``top_overlap``, ``top_overlap_min``, ``top_overlap_layer``), ``variance`` and the tails.
    ``pairs``: minimal pairs (a list, a set's name, or :func:`wnb.experiments.pair_sets.pair_sets`) scored
    for every row by ``pair_score`` (None: each set's own rule) after ``prefix`` (None: wnb's rule).

    Returns one row per ablation (``dense`` first): ``selection, seed, side, fraction, skip_first,
    n_neurons, per_layer`` (neurons in the widest layer), ``wd_rank_min / _median / _max`` (where its
    neurons rank by WD), ``perplexity, ppl_low, ppl_high`` (95% bootstrap over windows), with pairs
    ``accuracy``, ``accuracy_<phenomenon>``, ``pair_score``, ``scoring_rule``; the matched search's columns,
    ``seconds``, and every paired comparison (:func:`wnb.experiments.sign_statistics.compare_rows`). The
    model is unchanged afterwards (also after Ctrl-C). ``nll_fn`` (default :func:`ablated_nll`) computes
    each held-out pass; :func:`study_selections` gives each row's neurons back.
    """
    controls, seeds, matched_seeds = _check_study(side, fraction, controls, seeds, matched_seeds, exclude, tolerance,
                                                  minimum_nll, minimum_accuracy, pool, pair_score)
    held_out, pairs, scores, statistics = prepare_study(lm, calib, held_out, layers, fraction, side, pairs, scores,
                                                        batch_size, progress, statistics,
                                                        study_fields(controls, side), skip_first)
    check_controls(controls, statistics, side, calib)
    wasserstein = select_wasserstein(scores, fraction)
    context = dict(lm=lm, held_out=held_out, scores=scores, statistics=statistics, calib=calib, fraction=fraction,
                   wasserstein=wasserstein, exclude=exclude, tolerance=tolerance, pool=pool)
    opts = dict(side=side, pairs=pairs, batch_size=batch_size, pair_batch_size=pair_batch_size, progress=progress,
                seed=0, nll_fn=nll_fn or ablated_nll, pair_score=pair_score, prefix=prefix)
    rows, raws = [], []
    with tqdm(_plan(controls, seeds, matched_seeds), desc="sign ablation study", disable=not progress,
              leave=False) as bar:
        for selection, seed in bar:
            bar.set_postfix_str(selection if seed is None else f"{selection} {seed}")
            chosen, extra = _choose(selection, seed, rows, context, opts)
            row, raw = _study_row(lm, held_out, selection, seed, chosen, extra, opts, fraction, scores, skip_first)
            rows.append(row)
            raws.append(raw)
    rows[1].update(stability_columns(statistics, fraction))
    table = compare_rows(rows, raws, minimum_nll, minimum_accuracy)
    table["seed"] = table["seed"].astype("Int64")
    return table


def _plan(controls, seeds, matched_seeds) -> list[tuple[str, int | None]]:
    """The study's rows in order: dense, Wasserstein, its mirror, each random seed, each matched seed, each twin
    control."""
    return ([("dense", None), ("wasserstein", None)] + [("mirror", None)] * ("mirror" in controls)
            + [("random", s) for s in seeds if "random" in controls]
            + [("matched", s) for s in matched_seeds if "matched" in controls]
            + [(c, None) for c in TWIN_CONTROLS if c in controls])


def _choose(selection, seed, rows, context, opts) -> tuple[dict, dict]:
    """The neurons of one row of the plan and what its search reports (matched)."""
    c = context
    if selection == "matched":
        target = next(r["perplexity"] for r in rows if r["selection"] == "wasserstein")
        return match_perplexity(c["lm"], c["held_out"], c["scores"], target, seed, c["exclude"], c["tolerance"], opts,
                                c["pool"])
    if selection == "random":
        return select_random(c["scores"], {n: i.numel() for n, i in c["wasserstein"].items()}, seed), {}
    if selection in TWIN_CONTROLS:
        return select_twins(selection, c["scores"], c["statistics"], c["fraction"], c["calib"], opts["side"],
                            c["exclude"]), {}
    return {"dense": {}, "wasserstein": c["wasserstein"], "mirror": c["wasserstein"]}[selection], {}


def _study_row(lm, held_out, selection, seed, chosen, extra, opts, fraction, scores, skip_first) -> tuple[dict, dict]:
    """One row of the study (its selection measured, the mirror on the other side) and what the paired comparisons
    need of it."""
    if selection == "mirror":
        opts = {**opts, "side": mirror_side(opts["side"])}
    row = {"selection": selection, "seed": seed, "side": opts["side"], "fraction": fraction, "skip_first": skip_first,
           "n_neurons": count_per_layer(chosen), "per_layer": max((i.numel() for i in chosen.values()), default=0),
           **rank_columns(scores, chosen)}
    measured, raw = evaluate_selection(lm, held_out, chosen, nll=extra.pop("nll", None), **opts)
    row.update(measured)
    if extra:
        row["seconds"] += extra.pop("search_seconds")
        row.update(extra)
    return row, raw


def study_controls(controls, side: str) -> tuple[str, ...]:
    """The controls a study on ``side`` runs: ``controls`` as a tuple, without the mirror for ``side="both"``
    (which has no other side) when they are the defaults; asked for by name there, the mirror is refused."""
    controls = (controls,) if isinstance(controls, str) else tuple(controls)
    if side == "both" and "mirror" in controls:
        if controls != DEFAULT_CONTROLS:
            mirror_side(side)  # raises
        controls = tuple(c for c in controls if c != "mirror")
    return controls


def _check_study(side, fraction, controls, seeds, matched_seeds, exclude, tolerance, minimum_nll, minimum_accuracy,
                 pool, pair_score):
    """:func:`sign_ablation_study`'s own arguments, before any work; returns (controls, seeds, matched_seeds)."""
    check_side(side)
    check_fraction(fraction)
    check_pool(pool)
    check_score(pair_score)
    controls = study_controls(controls, side)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise WnbError(f"unknown controls {unknown}; choose from {', '.join(CONTROLS)}")
    seeds = [int(s) for s in seeds]
    if any(c in controls for c in ("random", "matched")) and not seeds:
        raise WnbError("seeds is empty; the random and matched controls need at least one seed")
    matched_seeds = seeds[:1] if matched_seeds is None else [int(s) for s in matched_seeds]
    if not 0 < tolerance < 1:
        raise WnbError(f"tolerance must be in (0, 1) (got {tolerance})")
    for name, value in (("minimum_nll", minimum_nll), ("minimum_accuracy", minimum_accuracy)):
        if not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise WnbError(f"{name} must be a positive number, the smallest effect the verdicts look for "
                           f"(got {value!r})")
    if not fraction < exclude < 1:
        raise WnbError(f"exclude must be in (fraction, 1) = ({fraction}, 1) so that the matched control "
                       f"is disjoint from the Wasserstein neurons (got {exclude})")
    return controls, seeds, matched_seeds


# ---------------------------------------------------------------- the neurons of each row

def study_selections(table: pd.DataFrame, scores: Mapping, exclude: float = MATCHED_EXCLUDE,
                     fraction: float | None = None, statistics: Mapping | None = None,
                     windows=None) -> dict[tuple[str, int | None], dict[str, torch.Tensor]]:
    """The neurons each row of a :func:`sign_ablation_study` table ablated, rebuilt from the same
    ``scores`` (and ``exclude``; ``fraction`` from the table's column unless given; the twin controls
    from the same ``statistics`` and calibration ``windows``): ``{(selection, seed): {layer: indices}}``
    (seed None for dense, wasserstein and the twins)."""
    out = {}
    for row in table.itertuples(index=False):
        seed = None if pd.isna(row.seed) else int(row.seed)
        share = fraction if fraction is not None else getattr(row, "fraction", None)
        if share is None and row.selection != "dense":
            raise WnbError("the table has no fraction column; pass fraction= (the study's)")
        chosen = _rebuild(row, seed, scores, exclude, share, statistics, windows)
        if count_per_layer(chosen) != row.n_neurons:
            raise WnbError(f"the {row.selection} row has {row.n_neurons} neurons but these scores give "
                           f"{count_per_layer(chosen)}: pass the scores (and exclude) the study used")
        out[(row.selection, seed)] = chosen
    return out


def _rebuild(row, seed, scores, exclude, share, statistics, windows) -> dict[str, torch.Tensor]:
    if row.selection == "dense":
        return {}
    wasserstein = select_wasserstein(scores, float(share))
    if row.selection in ("wasserstein", "mirror"):
        return wasserstein
    if row.selection == "random":
        return select_random(scores, {n: i.numel() for n, i in wasserstein.items()}, seed)
    if row.selection == "matched":
        pool = getattr(row, "pool", "outside")
        pool = "outside" if not isinstance(pool, str) else pool
        return select_matched(matched_candidates(scores, exclude, seed, pool), int(row.per_layer))
    if row.selection in TWIN_CONTROLS:
        if statistics is None:
            raise WnbError(f"the {row.selection} row's neurons need the study's statistics= (and windows=)")
        return select_twins(row.selection, scores, statistics, float(share), windows, row.side, exclude)
    raise WnbError(f"unknown selection {row.selection!r} in the table")


def selection_table(selections: Mapping, scores: Mapping | None = None) -> pd.DataFrame:
    """Long form of ``{(selection, seed): {layer: indices}}`` (or one ``{layer: indices}``): one row per
    ablated neuron, ``selection, seed, layer, neuron`` and, with ``scores``, its ``wd`` and ``wd_rank``
    in its layer (1 = highest)."""
    if selections and all(isinstance(k, str) for k in selections):
        selections = {("selection", None): selections}
    rows = []
    for (selection, seed), chosen in selections.items():
        for layer, idx in chosen.items():
            idx = torch.as_tensor(idx, dtype=torch.long)
            ranks = wd_ranks(scores, {layer: idx}).tolist() if scores is not None else [None] * idx.numel()
            for neuron, rank in zip(idx.tolist(), ranks):
                row = {"selection": selection, "seed": seed, "layer": layer, "neuron": int(neuron)}
                if scores is not None:
                    row.update(wd=float(torch.as_tensor(scores[layer])[neuron]), wd_rank=int(rank))
                rows.append(row)
    table = pd.DataFrame(rows, columns=["selection", "seed", "layer", "neuron"] + (["wd", "wd_rank"] if scores else []))
    table["seed"] = table["seed"].astype("Int64")
    return table
