"""Sign-specific ablation of neurons (Kong, Ning, Adler, Shavit, "Negative Pre-activations Differentiate
Syntax", ICLR 2026; PAPER.md §8): the study with its controls, and the depth profile. The clamp itself
is :func:`wnb.compression.clamp.sign_ablated`; the selections are :mod:`wnb.scoring.selection`'s.

- :func:`sign_ablation_study` ablates the top ``fraction`` of each layer's neurons by WD (the
  Wasserstein neurons), random neurons of the same count per layer, and a perplexity-matched set of
  neurons from outside the top 10% by WD, and measures held-out perplexity (and minimal-pair accuracy),
  each also as a paired difference to dense and to the Wasserstein ablation with its bootstrap interval,
  McNemar's test and a verdict worded by the interval (:mod:`wnb.core.inference`, :mod:`wnb.experiments.sign_statistics`).
- :func:`sign_ablation_depth` applies the Wasserstein ablation one layer at a time and cumulatively.

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

from wnb.compression.clamp import check_side, sign_ablated
from wnb.core.inference import perplexity_difference
from wnb.core.memory import available_memory
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
from wnb.model.architectures import block_of, check_layers, first_ffn_layers
from wnb.model.lm import require_local
from wnb.scoring.layers import score_layers
from wnb.scoring.selection import (
    CONTROLS,
    MATCHED_EXCLUDE,
    check_fraction,
    check_scores,
    count_per_layer,
    matched_candidates,
    select_matched,
    select_random,
    select_wasserstein,
)
from wnb.tracing.nll import interval_of, token_nll

MATCHED_TOLERANCE = 0.02  # ... and its perplexity must be within 2% of the Wasserstein ablation's


# ---------------------------------------------------------------- the clamp


# ---------------------------------------------------------------- selections

def wasserstein_scores(lm, calib, layers=None, max_tokens: int | None = None, batch_size: int = 8,
                       streaming: bool = False, max_bytes: int | None = None,
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """WD (to N(0, 1), PAPER.md §2) of every neuron of ``layers`` (default: the first FFN projection of
    every block) over the calibration tokens, as ``{layer: [n_neurons] float64}``.

    The one many-layer scorer (:func:`wnb.scoring.layers.score_layers`, the one-pass reader): exact WD keeps
    the layers' outputs during the pass, in as few passes as ``max_bytes`` allows (default: the smaller of
    1 GiB and 60% of free memory; each pass stops after its deepest layer); ``streaming=True`` keeps a sketch
    per neuron instead (one pass, memory per neuron, WD within 1e-3).
    """
    layers = check_layers(lm, first_ffn_layers(lm) if layers is None else layers)
    limit = min(1 << 30, int(0.6 * available_memory())) if max_bytes is None else int(max_bytes)
    stats = score_layers(lm, calib, layers, ("wd",), wd="streaming" if streaming else "exact", max_tokens=max_tokens,
                         max_bytes=limit, batch_size=batch_size, progress=progress)
    return {name: s["wd"] for name, s in stats.items()}



# ---------------------------------------------------------------- evaluation

def ablated_nll(lm, held_out, selection, side: str = "negative", batch_size: int = 8,
                progress: bool = True) -> torch.Tensor:
    """Per-token NLL of ``held_out`` (:func:`wnb.token_nll`) with ``selection`` sign-ablated on ``side``:
    what every row of the study, the matched search and the depth profile measure. ``nll_fn`` of those
    functions replaces it (same arguments, e.g. a cached version)."""

    with sign_ablated(lm, selection, side):
        return token_nll(lm, held_out, batch_size=batch_size, progress=progress)


def _evaluate(lm, held_out, selection, side, pairs, batch_size, pair_batch_size, progress, seed, nll_fn,
              nll=None) -> tuple[dict, dict]:
    """One row's perplexity (and accuracy) columns, and what the paired comparisons need: ``{"nll": NLL per
    window [n_windows], "scores": the minimal_pair_scores table or None}``."""

    start = time.perf_counter()
    if nll is None:
        nll = nll_fn(lm, held_out, selection, side, batch_size=batch_size, progress=progress)
    row = interval_of(nll, seed=seed)
    scores = None
    with sign_ablated(lm, selection, side):
        if pairs is not None:
            scores = minimal_pair_scores(lm, pairs, batch_size=pair_batch_size, progress=progress)
            row.update(accuracy_columns(scores))
    row["seconds"] = time.perf_counter() - start
    return row, {"nll": torch.as_tensor(nll, dtype=torch.float64).mean(1).numpy(), "scores": scores}



# ---------------------------------------------------------------- paired comparisons (wnb.core.inference)


def _prepare(lm, calib, held_out, layers, fraction, side, pairs, scores, batch_size, progress):
    """Validate everything and return (held_out, pairs, scores) — WD computed here if not given."""

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
    if scores is not None:
        scores = check_scores(lm, scores, layers)
    else:
        names = check_layers(lm, first_ffn_layers(lm) if layers is None else layers)
        if calib is None:
            raise WnbError("calibration windows are needed to compute WD: pass calib= (or scores=)")
        calib = check_windows(calib, lm)
        scores = wasserstein_scores(lm, calib, names, batch_size=batch_size, progress=progress)
    return held_out, pairs, scores


def sign_ablation_study(lm, calib, held_out, layers=None, fraction: float = 0.01, side: str = "negative",
                        controls=("random", "matched"), seeds=(0, 1, 2), pairs=None, progress: bool = True,
                        scores: Mapping | None = None, matched_seeds=None, exclude: float = MATCHED_EXCLUDE,
                        tolerance: float = MATCHED_TOLERANCE, batch_size: int = 8,
                        pair_batch_size: int = 32, nll_fn=None, minimum_nll: float = MINIMUM_DELTA_NLL,
                        minimum_accuracy: float = MINIMUM_DELTA_ACCURACY) -> pd.DataFrame:
    """The follow-up's main experiment: held-out perplexity (and minimal-pair accuracy) of the model
    with the sign-specific ablation of its Wasserstein neurons, of random neurons and of a
    perplexity-matched set of non-Wasserstein neurons.

    - ``wasserstein``: the top ``fraction`` of each of ``layers`` (default: the first FFN projection of
      every block) by WD over ``calib`` (or ``scores`` from :func:`wasserstein_scores`).
    - ``random``, one per seed: the same count per layer, uniform over all of the layer's neurons
      (they may overlap the Wasserstein set; nothing keeps them disjoint).
    - ``matched``, one per ``matched_seeds`` (default: the first seed): neurons from outside the top
      ``exclude`` (10%) of each layer by WD, in a seeded random order; the count per layer is found by
      bisection so that the held-out perplexity is within ``tolerance`` (2%) of the Wasserstein
      ablation's. ``target_perplexity``, ``within_tolerance``, ``evaluations`` (perplexity passes) and
      ``note`` report the search; when even all candidates stay below the target the row says so.

    ``pairs``: minimal pairs (:func:`wnb.experiments.minimal_pairs`, or its name) scored for every row.
    Returns one row per ablation (and a ``dense`` row first): ``selection, seed, side, fraction,
    n_neurons, per_layer`` (neurons in the widest layer), ``perplexity, ppl_low, ppl_high`` (95%
    bootstrap interval over held-out windows), ``accuracy`` and ``accuracy_<phenomenon>`` when pairs
    are given, the matched columns, ``seconds``. :func:`study_selections` gives each row's neurons back
    from ``scores``. The model is unchanged afterwards (also after Ctrl-C). ``nll_fn`` (default
    :func:`ablated_nll`, same arguments) computes each held-out pass; a cached one lets the surprisal
    and the depth profile reuse the study's passes. Every row also gets its paired comparisons, accuracy
    intervals, McNemar's p, verdicts against ``minimum_nll`` and ``minimum_accuracy`` and each control's
    spread over its seeds (:func:`wnb.experiments.sign_statistics.compare_rows` names every column).
    """
    controls, seeds, matched_seeds = _check_study(side, fraction, controls, seeds, matched_seeds, exclude, tolerance,
                                                  minimum_nll, minimum_accuracy)
    held_out, pairs, scores = _prepare(lm, calib, held_out, layers, fraction, side, pairs, scores, batch_size,
                                       progress)
    wasserstein = select_wasserstein(scores, fraction)
    counts = {name: idx.numel() for name, idx in wasserstein.items()}
    plan = [("dense", None), ("wasserstein", None)] + [("random", s) for s in seeds if "random" in controls] + \
        [("matched", s) for s in matched_seeds if "matched" in controls]
    opts = dict(side=side, pairs=pairs, batch_size=batch_size, pair_batch_size=pair_batch_size,
                progress=progress, seed=0, nll_fn=nll_fn or ablated_nll)
    rows, raws = [], []
    with tqdm(plan, desc="sign ablation study", disable=not progress, leave=False) as bar:
        for selection, seed in bar:
            bar.set_postfix_str(selection if seed is None else f"{selection} {seed}")
            extra: dict = {}
            if selection == "matched":
                target = next(r["perplexity"] for r in rows if r["selection"] == "wasserstein")
                chosen, extra = _match(lm, held_out, scores, target, seed, exclude, tolerance, opts)
            else:
                chosen = {"dense": {}, "wasserstein": wasserstein}.get(selection) if selection != "random" \
                    else select_random(scores, counts, seed)
            row, raw = _study_row(lm, held_out, selection, seed, chosen, extra, opts, fraction)
            rows.append(row)
            raws.append(raw)
    table = compare_rows(rows, raws, minimum_nll, minimum_accuracy)
    table["seed"] = table["seed"].astype("Int64")
    return table


def _study_row(lm, held_out, selection, seed, chosen, extra, opts, fraction) -> tuple[dict, dict]:
    """One row of the study (its selection measured) and what the paired comparisons need of it."""
    row = {"selection": selection, "seed": seed, "side": opts["side"], "fraction": fraction,
           "n_neurons": count_per_layer(chosen), "per_layer": max((i.numel() for i in chosen.values()), default=0)}
    measured, raw = _evaluate(lm, held_out, chosen, nll=extra.pop("nll", None), **opts)
    row.update(measured)
    if extra:
        row["seconds"] += extra.pop("search_seconds")
        row.update(extra)
    return row, raw


def _check_study(side, fraction, controls, seeds, matched_seeds, exclude, tolerance, minimum_nll, minimum_accuracy):
    """:func:`sign_ablation_study`'s own arguments, before any work; returns (controls, seeds, matched_seeds)."""
    check_side(side)
    check_fraction(fraction)
    controls = (controls,) if isinstance(controls, str) else tuple(controls)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise WnbError(f"unknown controls {unknown}; choose from {', '.join(CONTROLS)}")
    seeds = [int(s) for s in seeds]
    if controls and not seeds:
        raise WnbError("seeds is empty; the controls need at least one seed")
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


def _bisect(ppl, widest: int, target: float, tolerance: float) -> tuple[int, bool]:
    """The count in [0, widest] whose ``ppl(count)`` is within ``tolerance`` of ``target``, by bisection
    (assuming perplexity rises with the count; ``ppl(0)`` is the dense model's). Returns (count,
    reached): ``reached`` is False when even ``ppl(widest)`` stays below the target band, and the count
    is then ``widest``; when no count gets within the band, the closest one evaluated."""
    seen: dict[int, float] = {}

    def at(count: int) -> float:
        if count not in seen:
            seen[count] = ppl(count)
        return seen[count]

    if at(widest) < target * (1 - tolerance):
        return widest, False
    lo, hi = 0, widest
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if abs(at(mid) / target - 1) <= tolerance:
            return mid, True
        if at(mid) < target:
            lo = mid
        else:
            hi = mid
    return min(seen, key=lambda c: (abs(seen[c] / target - 1), c)), True


def _match(lm, held_out, scores, target, seed, exclude, tolerance, opts):
    """Bisection over the per-layer count of the matched control; returns (selection, report)."""
    start = time.perf_counter()
    candidates = matched_candidates(scores, exclude, seed)
    widest = max(c.numel() for c in candidates.values())
    cache: dict[int, float] = {}
    nlls: dict[int, torch.Tensor] = {}

    def ppl(count: int) -> float:
        if count not in cache:
            nlls[count] = opts["nll_fn"](lm, held_out, select_matched(candidates, count), opts["side"],
                                         batch_size=opts["batch_size"], progress=opts["progress"])
            cache[count] = math.exp(nlls[count].double().mean().item())
        return cache[count]

    best, reached = _bisect(ppl, widest, target, tolerance)
    within = abs(cache[best] / target - 1) <= tolerance
    total = count_per_layer(candidates)
    if not reached:
        note = (f"all {total} candidates (outside the top {exclude:.0%} by WD) reach perplexity only "
                f"{cache[widest]:.4g} < target {target:.4g}")
    elif within:
        note = f"within {tolerance * 100:g}% of the Wasserstein ablation's perplexity"
    else:
        note = (f"closest count found: perplexity {cache[best]:.4g} vs target {target:.4g} "
                f"(perplexity does not rise smoothly enough with the count to get within {tolerance * 100:g}%)")
    return select_matched(candidates, best), {
        "target_perplexity": target, "within_tolerance": within, "evaluations": len(cache),
        "candidates": total, "note": note, "search_seconds": time.perf_counter() - start, "nll": nlls[best]}


def study_selections(table: pd.DataFrame, scores: Mapping, exclude: float = MATCHED_EXCLUDE,
                     fraction: float | None = None) -> dict[tuple[str, int | None], dict[str, torch.Tensor]]:
    """The neurons each row of a :func:`sign_ablation_study` table ablated, rebuilt from the same
    ``scores`` (and ``exclude``; ``fraction`` from the table's column unless given):
    ``{(selection, seed): {layer: indices}}`` (seed None for dense and wasserstein)."""
    out = {}
    for row in table.itertuples(index=False):
        seed = None if pd.isna(row.seed) else int(row.seed)
        if row.selection == "dense":
            chosen = {}
        else:
            share = fraction if fraction is not None else getattr(row, "fraction", None)
            if share is None:
                raise WnbError("the table has no fraction column; pass fraction= (the study's)")
            wasserstein = select_wasserstein(scores, float(share))
            if row.selection == "wasserstein":
                chosen = wasserstein
            elif row.selection == "random":
                chosen = select_random(scores, {n: i.numel() for n, i in wasserstein.items()}, seed)
            elif row.selection == "matched":
                chosen = select_matched(matched_candidates(scores, exclude, seed), int(row.per_layer))
            else:
                raise WnbError(f"unknown selection {row.selection!r} in the table")
        if count_per_layer(chosen) != row.n_neurons:
            raise WnbError(f"the {row.selection} row has {row.n_neurons} neurons but these scores give "
                           f"{count_per_layer(chosen)}: pass the scores (and exclude) the study used")
        out[(row.selection, seed)] = chosen
    return out


def selection_table(selections: Mapping, scores: Mapping | None = None) -> pd.DataFrame:
    """Long form of ``{(selection, seed): {layer: indices}}`` (or one ``{layer: indices}``): one row per
    ablated neuron, ``selection, seed, layer, neuron`` and, with ``scores``, its ``wd`` and ``wd_rank``
    in its layer (1 = highest)."""
    if selections and all(isinstance(k, str) for k in selections):
        selections = {("selection", None): selections}
    rows = []
    ranks = {}
    for (selection, seed), chosen in selections.items():
        for layer, idx in chosen.items():
            for neuron in torch.as_tensor(idx).tolist():
                row = {"selection": selection, "seed": seed, "layer": layer, "neuron": int(neuron)}
                if scores is not None:
                    if layer not in ranks:
                        wd = torch.as_tensor(scores[layer]).double()
                        order = torch.argsort(torch.nan_to_num(wd, nan=-math.inf), descending=True, stable=True)
                        ranks[layer] = torch.empty_like(order)
                        ranks[layer][order] = torch.arange(1, wd.numel() + 1)
                    row["wd"] = float(torch.as_tensor(scores[layer])[neuron])
                    row["wd_rank"] = int(ranks[layer][neuron])
                rows.append(row)
    table = pd.DataFrame(rows, columns=["selection", "seed", "layer", "neuron"] + (["wd", "wd_rank"] if scores else []))
    table["seed"] = table["seed"].astype("Int64")
    return table



# ---------------------------------------------------------------- depth profile

def sign_ablation_depth(lm, calib, held_out, layers=None, fraction: float = 0.01, side: str = "negative",
                        pairs=None, progress: bool = True, scores: Mapping | None = None,
                        cumulative: bool = True, batch_size: int = 8, pair_batch_size: int = 32,
                        nll_fn=None) -> pd.DataFrame:
    """The Wasserstein ablation one layer at a time (``mode="layer"``) and over layers 0..l
    (``mode="cumulative"``), against the dense model (``mode="dense"``, first row).

    Columns: ``mode, block, layer, n_neurons, perplexity, ppl_low, ppl_high, delta_perplexity,
    delta_ppl_low, delta_ppl_high`` (the paired bootstrap interval over the same windows) and,
    with ``pairs``, ``accuracy, delta_accuracy, accuracy_<phenomenon>``, and ``seconds``. The last
    cumulative row is the whole :func:`sign_ablation_study` Wasserstein ablation. ``nll_fn`` as there.
    """

    held_out, pairs, scores = _prepare(lm, calib, held_out, layers, fraction, side, pairs, scores, batch_size,
                                       progress)
    wasserstein = select_wasserstein(scores, fraction)
    names = list(wasserstein)
    plan = [("dense", None, {})]
    plan += [("layer", name, {name: wasserstein[name]}) for name in names]
    if cumulative:
        plan += [("cumulative", name, {n: wasserstein[n] for n in names[:i + 1]}) for i, name in enumerate(names)]
    opts = dict(side=side, pairs=pairs, batch_size=batch_size, pair_batch_size=pair_batch_size,
                progress=progress, seed=0, nll_fn=nll_fn or ablated_nll)
    rows, nlls = [], []
    with tqdm(plan, desc="depth profile", disable=not progress, leave=False) as bar:
        for mode, name, chosen in bar:
            row = {"mode": mode, "block": block_of(lm, name) if name else None, "layer": name,
                   "n_neurons": count_per_layer(chosen)}
            measured, raw = _evaluate(lm, held_out, chosen, **opts)
            rows.append({**row, **measured})
            nlls.append(raw["nll"])
    table = pd.DataFrame(rows)
    dense = table.iloc[0]
    table.insert(7, "delta_perplexity", table["perplexity"] - dense["perplexity"])
    paired = [perplexity_difference(nlls[0], nll) for nll in nlls]  # over the same windows
    table.insert(8, "delta_ppl_low", [d.low for d in paired])
    table.insert(9, "delta_ppl_high", [d.high for d in paired])
    if pairs is not None:
        table.insert(table.columns.get_loc("accuracy") + 1, "delta_accuracy", table["accuracy"] - dense["accuracy"])
    table["block"] = table["block"].astype("Int64")
    return table
