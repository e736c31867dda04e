"""Twin controls of the sign study, the ones the follow-up's reviewers asked for: for every Wasserstein
neuron, the neuron from outside the top 10% of its layer by WD that is most like it in one respect other
than WD, so that an effect of ablating the Wasserstein set that the twins do not share is not that
respect's.

- ``variance``: the closest output variance (on a log scale: variances span orders of magnitude);
- ``tokens``: the tail on the same tokens — the cosine similarity of the two neurons' counts of token ids
  over their tails (:data:`wnb.scoring.samples.SAMPLE_FIELDS`: ``low_tail`` for the negative side,
  ``high_tail`` for the positive, both for both), so frequent and rare tokens are matched as such;
- ``positions``: the tail at the same positions in the window — the same cosine over position bins
  (0, 1, 2, 3, then 4–7, 8–15, … : the first positions, where attention sinks sit, one by one).

Twins are chosen greedily, the highest-WD Wasserstein neuron first, each taking the most similar twin not
taken yet (ties: the lowest index), so the set has the Wasserstein set's count per layer and no seed.
"""
from __future__ import annotations

from typing import Mapping

import torch

from wnb.errors import WnbError
from wnb.scoring.selection import (
    MATCHED_EXCLUDE,
    matched_candidates,
    select_wasserstein,
)

TWIN_CONTROLS = ("variance", "tokens", "positions")
TAIL_OF_SIDE = {"negative": ("low_tail",), "positive": ("high_tail",), "both": ("low_tail", "high_tail")}


def twin_fields(controls, side: str = "negative") -> tuple[str, ...]:
    """The fields of :func:`wnb.scoring.layers.score_layers` the twin ``controls`` need for ``side``."""
    fields = []
    for control in controls:
        if control == "variance":
            fields.append("variance")
        elif control in TWIN_CONTROLS:
            fields += TAIL_OF_SIDE[side]
    return tuple(dict.fromkeys(fields))


def position_bins(positions: torch.Tensor) -> torch.Tensor:
    """Bin of every position: 0, 1, 2, 3 alone, then one bin per power of two (4–7, 8–15, …)."""
    positions = torch.as_tensor(positions).long()
    octave = torch.floor(torch.log2(positions.clamp_min(1).double())).long()
    return torch.where(positions < 4, positions, octave + 2)


def tail_keys(rows: torch.Tensor, windows: torch.Tensor, by: str) -> torch.Tensor:
    """What each tail sample of ``rows`` (``[k, n]`` flat indices into ``windows.flatten()``) is keyed by:
    its token id (``by="tokens"``) or its position bin (``"positions"``)."""
    windows = torch.as_tensor(windows)
    rows = torch.as_tensor(rows).long()
    if by == "tokens":
        return windows.flatten()[rows]
    if by == "positions":
        return position_bins(rows % windows.shape[1])
    raise WnbError(f"tails are keyed by 'tokens' or 'positions' (got {by!r})")


def variance_similarity(variance: torch.Tensor, chosen: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """``[len(chosen), len(pool)]``: minus the distance of log variances (higher is closer)."""
    log = torch.as_tensor(variance).double().clamp_min(1e-300).log()
    return -(log[chosen][:, None] - log[pool][None, :]).abs()


def key_similarity(keys: torch.Tensor, chosen: torch.Tensor, pool: torch.Tensor, chunk: int = 1 << 24) -> torch.Tensor:
    """``[len(chosen), len(pool)]``: the cosine similarity of the neurons' counts of keys (``keys [k, n]``:
    the key of each of a neuron's ``k`` tail samples)."""
    keys = torch.as_tensor(keys)
    k, n = keys.shape
    unique, inverse = torch.unique(keys, return_inverse=True)
    counts = torch.zeros(len(chosen), unique.numel(), dtype=torch.float64)
    counts.scatter_add_(1, inverse[:, chosen].T, torch.ones(len(chosen), k, dtype=torch.float64))
    code = torch.arange(n)[None, :] * unique.numel() + inverse  # (neuron, key) pairs
    pairs, multiplicity = torch.unique(code.flatten(), return_counts=True)
    norms = torch.zeros(n, dtype=torch.float64).index_add_(0, pairs // unique.numel(),
                                                            multiplicity.double() ** 2).sqrt()
    step = max(1, chunk // max(1, len(chosen) * k))
    dots = torch.cat([counts[:, inverse[:, pool[s:s + step]]].sum(1) for s in range(0, len(pool), step)], dim=1)
    return dots / (norms[chosen][:, None] * norms[pool][None, :]).clamp_min(1e-300)


def greedy_twins(similarity: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """For each row of ``similarity`` in turn, the column of ``pool`` most similar to it and not taken yet
    (ties: the first column); returns ``pool``'s entries."""
    if similarity.shape[0] > len(pool):
        raise WnbError(f"{similarity.shape[0]} neurons to match but only {len(pool)} candidates")
    free = torch.ones(len(pool), dtype=torch.bool)
    taken = []
    for row in similarity:
        j = int(torch.where(free, row, torch.tensor(-torch.inf, dtype=row.dtype)).argmax())
        free[j] = False
        taken.append(j)
    return pool[torch.tensor(taken, dtype=torch.long)]


def select_twins(control: str, scores: Mapping, statistics: Mapping, fraction: float = 0.01,
                 windows: torch.Tensor | None = None, side: str = "negative",
                 exclude: float = MATCHED_EXCLUDE) -> dict[str, torch.Tensor]:
    """The ``control`` twin of every Wasserstein neuron (top ``fraction`` by ``scores``) of each layer, from
    outside the top ``exclude``: ``{layer: indices}`` in the Wasserstein set's order. ``statistics[layer]``
    holds what the control needs (:func:`twin_fields`: ``variance``, or the side's tails); ``windows``
    (the calibration windows the tails were taken on) for ``tokens`` and ``positions``."""
    if control not in TWIN_CONTROLS:
        raise WnbError(f"unknown twin control {control!r}; choose from {', '.join(TWIN_CONTROLS)}")
    if control != "variance" and windows is None:
        raise WnbError(f"the {control} control needs the calibration windows its tails were taken on")
    wasserstein = select_wasserstein(scores, fraction)
    pools = matched_candidates(scores, exclude)
    out = {}
    for name, chosen in wasserstein.items():
        stats = statistics.get(name, {})
        missing = [f for f in twin_fields([control], side) if f not in stats]
        if missing:
            raise WnbError(f"the {control} control needs {missing} of {name}: score_layers(..., fields={missing})")
        pool = pools[name].sort().values
        if control == "variance":
            similarity = variance_similarity(stats["variance"], chosen, pool)
        else:
            keys = torch.cat([tail_keys(stats[f], windows, control) for f in TAIL_OF_SIDE[side]])
            similarity = key_similarity(keys, chosen, pool)
        out[name] = greedy_twins(similarity, pool)
    return out
