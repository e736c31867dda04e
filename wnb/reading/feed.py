"""The contexts of one layer's neurons, fed by the one-pass reader (:mod:`wnb.scoring.reader`).

:class:`ContextFeed` keeps per neuron the ``k`` highest and lowest outputs with their flat token index
(:class:`wnb.reading.extremes.RunningExtremes`, ties to the lower index, so the result of a full sort whatever
the batches) and ``n_samples`` seeded examples per band of the standardized outputs
(:class:`wnb.reading.extremes.BandSamples`). It takes its moments from the layer's
:class:`wnb.scoring.sketch.NeuronSketch` and its candidates from the sketch's squared outputs, so a batch costs
one comparison and one ``nonzero`` beyond the sketch. Bands are assigned with the moments of the batches before
(the first batch: its own), so the examples depend a little on the batches. :meth:`finish` gives a
:class:`wnb.NeuronContexts` state. It is the one implementation behind ``wnb.read_model(contexts=k)``,
:func:`wnb.neuron_contexts` and :func:`wnb.contexts_from_outputs` (it replaced ``ContextAccumulator``, which
computed the same with moments of its own).
"""
from __future__ import annotations

import numpy as np
import torch

from wnb.core.checks import check_int
from wnb.core.tensors import to_numpy
from wnb.data.positions import check_skip
from wnb.reading.contexts import STATE_FORMAT
from wnb.reading.extremes import BANDS, RARE, BandSamples, RunningExtremes


def context_bytes(n_neurons: int, k: int = 20, n_samples: int = 8) -> int:
    """Bytes a :class:`ContextFeed` holds for ``n_neurons``, with room for the candidates it merges late."""
    return n_neurons * (2 * k * 12 * 2 + len(BANDS) * n_samples * 20 * 3 // 2)


class ContextFeed:
    """Extremes and band samples of one layer, fed per batch by the reader (see the module docstring)."""

    def __init__(self, n_neurons: int, seq_len: int, k: int = 20, n_samples: int = 8, skip_first: int = 0,
                 seed: int = 0):
        self.d = check_int(n_neurons, "n_neurons")
        self.seq_len, self.skip_first = check_skip(seq_len, skip_first)
        self.k = check_int(k, "k")
        self.n_samples = check_int(n_samples, "n_samples")
        self.seed = check_int(seed, "seed", minimum=0)
        self.extremes = RunningExtremes(self.d, self.k)
        self.bands = BandSamples(self.d, self.n_samples, self.seed)
        self.n_tokens = 0

    def update(self, y: torch.Tensor, start: int, t: torch.Tensor, t2: torch.Tensor, grid: tuple, moments: tuple,
               bounds: tuple | None = None) -> None:
        """Add the outputs ``y [rows, d]`` (float32, contiguous) of flat tokens ``start …`` (whole windows from
        position 0, the last maybe cut short). ``t [windows, kept positions, d]``: ``y·alpha + beta`` at the
        kept positions, ``t2`` its square, ``grid = (alpha, beta)`` (float32 ``[d]``); ``moments``: mean and
        std (float64 ``[d]``) of the batches before, or of this one if it is the first. ``bounds``: for the
        first batch, values of ``t`` beyond which at least ``k`` of its outputs lie on each side
        (:meth:`wnb.scoring.sketch.NeuronSketch.tail_bounds`): they bound the extremes' candidates."""
        length = min(self.seq_len, y.shape[0])
        keep = None
        if self.skip_first:
            keep = torch.arange(y.shape[0], device=y.device) % self.seq_len >= self.skip_first
        mean, std = (np.asarray(to_numpy(m), dtype=np.float64) for m in moments)
        rare, candidates = self._beyond(y, t, t2, start, grid, (mean, std), length, bounds)
        self.extremes.update(y, start, keep, candidates)
        self.bands.update(y, start, keep, mean, std, rare)
        self.n_tokens += int(t2.shape[0] * t2.shape[1])

    def _beyond(self, y, t, t2, start, grid, moments, length, bounds):
        """A superset of the kept elements beyond ±3 std (for the bands) and, once ``k`` are held and this batch
        comes after them, beyond the held k-th values (for the extremes), from one comparison of ``t2``; both
        are then picked exactly on the CPU. Returns ``(rare, candidates or None)``: what :meth:`BandSamples.update`
        and :meth:`RunningExtremes.update` take."""
        ext = self.extremes
        thr_hi, thr_lo = ext.thresholds("high"), ext.thresholds("low")
        use = thr_hi is not None and start > ext.max_index
        first = not use and bounds is not None and ext.n_seen == 0
        mean, std = moments
        alpha, beta = (to_numpy(g).astype(np.float64) for g in grid)
        centre = -beta / alpha
        bound = RARE * std - np.abs(mean - centre)  # |y − mean| > 3 std implies |y − centre| > bound
        scale = np.abs(centre) + np.abs(mean) + RARE * std
        if use:
            bound = np.minimum(bound, np.minimum(thr_hi - centre, centre - thr_lo))
            scale = scale + np.abs(thr_hi) + np.abs(thr_lo)
        bound = (bound - 1e-6 * scale) * alpha  # margin for float32 rounding of t and t², in grid units
        limit = np.where(bound > 0, bound * bound * (1 - 1e-6), -1.0)  # none: every element is a candidate
        mask = t2 > torch.from_numpy(limit).to(t2.device, torch.float32)
        if first:
            mask |= (t >= bounds[0]) | (t <= bounds[1])
        lin = mask.view(-1).nonzero().squeeze(1)
        kept = t2.shape[1]
        rows, cols = lin // self.d, lin % self.d
        rows = rows // kept * length + self.skip_first + rows % kept  # kept position → row of y
        values = to_numpy(y.view(-1).take(rows * self.d + cols))
        rows, cols = to_numpy(rows), to_numpy(cols)
        rare = {"rows": rows, "cols": cols, "values": values}
        if use:
            picks = (("high", values > thr_hi[cols]), ("low", values < thr_lo[cols]))
        elif first:  # every element at or beyond the first batch's k-th value is among these (t follows y)
            t_sel, hi, lo = (to_numpy(v) for v in (t.view(-1).take(lin), bounds[0], bounds[1]))
            picks = (("high", t_sel >= hi[cols]), ("low", t_sel <= lo[cols]))
        else:
            return rare, None
        return rare, {side: (rows[pick], cols[pick], values[pick]) for side, pick in picks}

    def finish(self, windows: torch.Tensor, layer: str, stats: dict[str, torch.Tensor]) -> dict:
        """The :class:`wnb.NeuronContexts` state, given ``windows`` (the token ids read) and the layer's sketch
        results ``stats`` (moments and position bins)."""
        ext = self.extremes.flush()
        sample_values, sample_index = self.bands.flush().state()
        return {"format": STATE_FORMAT, "layer": layer, "k": self.k, "n_samples": self.n_samples,
                "seq_len": self.seq_len, "skip_first": self.skip_first, "seed": self.seed,
                "n_tokens": int(self.n_tokens), "windows": torch.as_tensor(windows).to(torch.int32).cpu(),
                "mean": stats["mean"], "std": stats["variance"].sqrt(),
                "high_values": torch.from_numpy(ext.values["high"].copy()),
                "high_index": torch.from_numpy(ext.index["high"].copy()),
                "low_values": torch.from_numpy(ext.values["low"].copy()),
                "low_index": torch.from_numpy(ext.index["low"].copy()),
                "sample_values": sample_values, "sample_index": sample_index,
                "bin_edges": stats["bin_edges"].long(), "bin_count": stats["bin_count"].long(),
                "bin_mean": stats["bin_mean"], "bin_std": stats["bin_std"]}
