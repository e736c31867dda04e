"""What the sign study asks of a reading beyond one number per neuron (:func:`wnb.scoring.layers.score_layers`'
:data:`SAMPLE_FIELDS`): WD on each half of the windows (the Wasserstein set's stability) and where each
neuron's tails sit (the twins of :mod:`wnb.scoring.controls`).

:class:`LayerSamples` rides along one layer's reader (:mod:`wnb.scoring.reader`): with exact WD it computes
both from the outputs the reader keeps; streaming, it keeps a :class:`~wnb.scoring.sketch.NeuronSketch` per
half and the tails as running extremes (exact: a running top-k is the top-k).
"""
from __future__ import annotations

import math

import torch

from wnb.data.positions import kept_rows
from wnb.errors import WnbError
from wnb.scoring.sketch import NeuronSketch, sketch_bytes
from wnb.scoring.wasserstein import wasserstein_to_gaussian

SAMPLE_FIELDS = ("wd_halves", "low_tail", "high_tail")
"""``wd_halves``: ``[2, n]``, WD over the first and over the second half of the windows (disjoint tokens);
``low_tail`` / ``high_tail``: ``[k, n]`` long, where each neuron's :func:`tail_count` lowest / highest outputs
sit, as flat indices into ``windows.flatten()`` (so ``% seq_len`` is the position and the ids there the
tokens)."""
TAIL_SHARE, TAIL_MIN, TAIL_MAX = 0.01, 8, 256  # a tail: 1% of the tokens, at least 8 and at most 256 of them


def tail_count(n_tokens: int) -> int:
    """How many outputs make a neuron's tail over ``n_tokens`` tokens: 1% of them, at least 8 (all when
    fewer), at most 256."""
    return min(int(n_tokens), max(TAIL_MIN, min(TAIL_MAX, round(TAIL_SHARE * n_tokens))))


def half_split(n_tokens: int, seq_len: int) -> int:
    """The first token of the second half of the windows read (a window boundary)."""
    covered = -(-n_tokens // seq_len)
    if covered < 2:
        raise WnbError(f"WD on two halves of the windows needs at least 2 windows (got {covered})")
    return (covered // 2) * seq_len


def samples_bytes(fields, d: int, n_tokens: int, seq_len: int, skip_first: int, n_bins: int, spread: bool,
                  exact: bool) -> int:
    """Bytes :class:`LayerSamples` keeps for a layer of ``d`` neurons (nothing beyond the kept outputs when exact)."""
    if exact:
        return 0
    n_windows = -(-n_tokens // seq_len)
    halves = 2 * sketch_bytes(d, seq_len, n_bins, spread, skip_first, n_windows) if "wd_halves" in fields else 0
    k = tail_count(kept_rows(n_tokens, seq_len, skip_first).numel())
    tails = sum(f in fields for f in ("low_tail", "high_tail")) * 2 * k * d * 12  # kept and a batch's candidates
    return halves + tails


class _Extremes:
    """The ``k`` lowest (or highest) outputs per neuron seen so far and their rows, fed batch by batch."""

    def __init__(self, k: int, largest: bool):
        self.k, self.largest = k, largest
        self.values = self.rows = None

    def update(self, y: torch.Tensor, rows: torch.Tensor) -> None:
        rows = rows.to(y.device)[:, None].expand(-1, y.shape[1])
        if self.values is not None:
            y, rows = torch.cat([self.values, y]), torch.cat([self.rows, rows])
        top = torch.topk(y, min(self.k, y.shape[0]), dim=0, largest=self.largest)
        self.values, self.rows = top.values, rows.gather(0, top.indices)


class LayerSamples:
    """One layer's :data:`SAMPLE_FIELDS` over a reading of ``n_tokens`` tokens of windows of ``seq_len``."""

    def __init__(self, fields, d: int, n_tokens: int, seq_len: int, skip_first: int, n_bins: int, spread: bool,
                 exact: bool):
        unknown = [f for f in fields if f not in SAMPLE_FIELDS]
        if unknown:
            raise WnbError(f"samples are some of {', '.join(SAMPLE_FIELDS)} (got {unknown})")
        self.fields, self.seq_len, self.skip_first, self.exact = tuple(fields), seq_len, skip_first, exact
        self.rows = kept_rows(n_tokens, seq_len, skip_first)
        self.k = tail_count(self.rows.numel())
        self.split = half_split(n_tokens, seq_len) if "wd_halves" in fields else None
        self.halves = self.tails = None
        if exact:
            return
        if self.split is not None:
            first = self.split // seq_len
            self.halves = (NeuronSketch(d, seq_len, n_bins, spread, skip_first, first),
                           NeuronSketch(d, seq_len, n_bins, spread, skip_first, math.ceil(n_tokens / seq_len) - first))
        self.tails = {f: _Extremes(self.k, f == "high_tail") for f in ("low_tail", "high_tail") if f in fields}

    def update(self, y3: torch.Tensor, start: int, scratch) -> None:
        """Add outputs ``[windows, positions, d]`` whose first token is flat token ``start`` (whole windows, or
        the last window cut short)."""
        if self.exact:
            return
        if self.halves is not None:
            cut = max(0, min(y3.shape[0], (self.split - start) // self.seq_len))
            if cut:
                self.halves[0].update(y3[:cut], scratch)
            if cut < y3.shape[0]:
                self.halves[1].update(y3[cut:], scratch)
        if self.tails:
            rows = start + torch.arange(y3.shape[0] * y3.shape[1])
            keep = rows % self.seq_len >= self.skip_first
            y = y3.reshape(-1, y3.shape[-1])[keep.to(y3.device)]
            for extremes in self.tails.values():
                extremes.update(y, rows[keep])

    def finish(self, kept: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The fields; ``kept``: the layer's kept outputs (row ``i`` is flat token ``rows[i]``) when exact."""
        out = {}
        if "wd_halves" in self.fields:
            if kept is not None:
                first = self.rows[:kept.shape[0]] < self.split
                out["wd_halves"] = torch.stack([wasserstein_to_gaussian(kept[first]),
                                                wasserstein_to_gaussian(kept[~first])])
            else:
                out["wd_halves"] = torch.stack([h.results()["wd"] for h in self.halves])
        for field in ("low_tail", "high_tail"):
            if field not in self.fields:
                continue
            if kept is not None:
                top = torch.topk(kept, self.k, dim=0, largest=field == "high_tail").indices
                out[field] = self.rows[top]
            else:
                out[field] = self.tails[field].rows.cpu()
        return out
