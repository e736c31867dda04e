"""What the sign study ranks and compares on, before any ablation: the statistics of every layer's neurons
over the calibration tokens (WD, and what the stability of the set and the twin controls need), the
perplexity-matched control's search, and each row's WD ranks and the set's stability as columns."""
from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np
import torch

from wnb.core.memory import available_memory
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.scoring.controls import TWIN_CONTROLS, twin_fields
from wnb.scoring.layers import score_layers
from wnb.scoring.selection import (
    count_per_layer,
    matched_candidates,
    select_matched,
    wd_ranks,
)
from wnb.scoring.stability import set_stability, stability_summary

MATCHED_TOLERANCE = 0.02  # the matched control's perplexity must be within 2% of the Wasserstein ablation's


def study_fields(controls=(), side: str = "negative", halves: bool = True) -> tuple[str, ...]:
    """The :func:`wnb.scoring.layers.score_layers` fields the study needs: WD, its halves (the set's
    stability) and what the twin ``controls`` match on."""
    return ("wd",) + (("wd_halves",) if halves else ()) + twin_fields(controls, side)


def study_statistics(lm, calib, layers, fields=("wd",), skip_first: int = 0, max_tokens: int | None = None,
                     batch_size: int = 8, max_bytes: int | None = None, wd: str = "auto",
                     progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """``{layer: {field: tensor}}`` over the calibration tokens (all of them unless ``max_tokens``), the
    first ``skip_first`` positions of every window left out: exact in as few passes as ``max_bytes``
    allows (default: the smaller of 1 GiB and 60% of free memory), streaming where one layer does not fit
    (``wd="auto"``). ``wd_halves`` is left out when the windows are fewer than two."""
    limit = min(1 << 30, int(0.6 * available_memory())) if max_bytes is None else int(max_bytes)
    windows = check_windows(calib, lm)
    n_tokens = windows.numel() if max_tokens is None else min(int(max_tokens), windows.numel())
    if -(-n_tokens // windows.shape[1]) < 2:  # one window: no halves to compare
        fields = tuple(f for f in fields if f != "wd_halves")
    return score_layers(lm, windows, layers, fields, wd=wd, max_tokens=max_tokens, max_bytes=limit,
                        skip_first=skip_first, batch_size=batch_size, progress=progress)


def stability_columns(statistics: Mapping | None, fraction: float) -> dict:
    """The Wasserstein row's stability columns (:func:`wnb.scoring.stability.stability_summary`) from the
    statistics' ``wd_halves``; NaN where they were not measured."""
    halves = {name: s["wd_halves"] for name, s in (statistics or {}).items() if "wd_halves" in s}
    return stability_summary(set_stability(halves, fraction))


def rank_columns(scores: Mapping, chosen: Mapping) -> dict:
    """``wd_rank_min, wd_rank_median, wd_rank_max``: where a row's neurons rank by WD in their layers (1 =
    highest)."""
    ranks = wd_ranks(scores, chosen).numpy()
    if not ranks.size:
        return {"wd_rank_min": np.nan, "wd_rank_median": np.nan, "wd_rank_max": np.nan}
    return {"wd_rank_min": int(ranks.min()), "wd_rank_median": float(np.median(ranks)), "wd_rank_max": int(ranks.max())}


def check_controls(controls, statistics: Mapping, side: str, calib) -> None:
    """Refuse twin controls whose statistics are missing, before any work."""
    for control in (c for c in controls if c in TWIN_CONTROLS):
        for name, stats in statistics.items():
            missing = [f for f in twin_fields([control], side) if f not in stats]
            if missing:
                raise WnbError(f"the {control} control needs {missing} of {name}: pass calib= (or statistics= with "
                               "those fields, wnb.scoring.layers.score_layers)")
        if control != "variance" and calib is None:
            raise WnbError(f"the {control} control needs the calibration windows its tails were found on: pass calib=")


def bisect_count(ppl, widest: int, target: float, tolerance: float) -> tuple[int, bool]:
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


def match_perplexity(lm, held_out, scores, target, seed, exclude, tolerance, opts, pool: str = "outside"):
    """Bisection over the per-layer count of the matched control drawn from ``pool``
    (:func:`wnb.scoring.selection.matched_candidates`); returns (selection, report)."""
    start = time.perf_counter()
    candidates = matched_candidates(scores, exclude, seed, pool)
    widest = max(c.numel() for c in candidates.values())
    cache: dict[int, float] = {}
    nlls: dict[int, torch.Tensor] = {}

    def ppl(count: int) -> float:
        if count not in cache:
            nlls[count] = opts["nll_fn"](lm, held_out, select_matched(candidates, count), opts["side"],
                                         batch_size=opts["batch_size"], progress=opts["progress"])
            cache[count] = math.exp(nlls[count].double().mean().item())
        return cache[count]

    best, reached = bisect_count(ppl, widest, target, tolerance)
    within = abs(cache[best] / target - 1) <= tolerance
    total = count_per_layer(candidates)
    where = f"outside the top {exclude:.0%} by WD" if pool == "outside" else "the bottom of the WD ranking"
    if not reached:
        note = f"all {total} candidates ({where}) reach perplexity only {cache[widest]:.4g} < target {target:.4g}"
    elif within:
        note = f"within {tolerance * 100:g}% of the Wasserstein ablation's perplexity ({where})"
    else:
        note = (f"closest count found: perplexity {cache[best]:.4g} vs target {target:.4g} "
                f"(perplexity does not rise smoothly enough with the count to get within {tolerance * 100:g}%)")
    return select_matched(candidates, best), {
        "target_perplexity": target, "within_tolerance": within, "evaluations": len(cache), "pool": pool,
        "candidates": total, "note": note, "search_seconds": time.perf_counter() - start, "nll": nlls[best]}
