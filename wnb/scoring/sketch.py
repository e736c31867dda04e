"""A per-neuron sketch of a layer's outputs, fed one batch at a time, with memory per neuron, not per token.

:class:`NeuronSketch` is what the one-pass reader (:mod:`wnb.scoring.reader`) keeps per layer. It gives WD to N(0, 1)
(within 1e-3 of :func:`wnb.wasserstein_to_gaussian`), the WD split at the mean and at raw zero, the share
of outputs below zero, mean, variance, skewness, kurtosis, the outputs by position bin of the window and
the share of each neuron's tails at the first position kept.

Grid. From the first batch, per neuron: a centre ``c`` (its mean) and a scale ``κ`` (its std). An output
``y`` maps to ``t = (y − c)/κ`` and ``q = t/(1 + |t|) ∈ (−1, 1)``; the ``n_bins`` bins are uniform in
``q``: ``2κ/n_bins`` wide at the centre, wider as ``(1 + |t|)²`` away from it, the two outermost open.
``κ`` is moved so that ``y = 0`` lies on a bin edge (by at most a factor 1.5, or up to 8 when zero is beyond
the grid's inner bins): the count below zero and the WD split at raw zero need no pass of their own. A neuron
whose std, a later batch included, reaches 4 grid scales (its first windows far narrower than the rest: quiet,
nearly constant, or without the rare spikes that come later) gets a grid redrawn from its std so far, and what its
bins hold moves there (:mod:`wnb.scoring.sketch_regrid`); without that, its outputs would pile into a few coarse
outer bins (WD off by 0.06 for rare late spikes, and unbounded for a 1,000-fold drift). The count
is exact but for negative outputs within about 1e-6 of the neuron's std from zero (they count as zero), which
matters only for a density spiking at zero (``y = g³``, g Gaussian: 0.4% of the outputs), and for outputs
thousands of std from a mean that far from zero.

Per bin: the count and the sum of each sample's position in the bin (0…1, in ``q``) and, with ``spread``
(the default), the sum of its square. The samples of a bin are modelled as one point (one sample) or
uniform with their mean and variance, kept inside the bin; tied outputs (bf16, or the same first token of
every window) are then a point. Without ``spread`` (a third less memory) they are uniform about their mean
as wide as the bin allows: fine for continuous outputs, off by up to ~1e-2 for a mass of ties in a wide bin.
The CDF is exact at every bin edge and piecewise linear between knots; WD is ``∫|F − Φ|`` over it in closed
form, split at any knot.

Moments: float32 sums within a batch of ``t``, ``t²`` per position of the window (kept by position bin,
:func:`wnb.data.positions.position_bins`) and of ``t³``, ``t⁴``; float64 across batches.
The first position kept of every window is also counted into bins of its own (2 bytes each below 32,768
windows), for the share of each neuron's tails there. Memory per neuron: ``n_bins × 14`` bytes (10 without
``spread``) and 16 per position bin, whatever the number of tokens.
"""
from __future__ import annotations

import math

import torch

from wnb.core.checks import check_int
from wnb.data.positions import check_skip, position_bins
from wnb.errors import WnbError
from wnb.scoring.sketch_math import finish
from wnb.scoring.sketch_regrid import rebin

_ZERO_OFFSET = 2.0 ** -15   # raw zero sits this far (in bins) above its bin edge: float32 rounding cannot cross it
_FAR = 8.0                  # the scale may grow this much (from the std) to put raw zero on the grid's last edge
_CHUNK = {"cpu": 1 << 18, "cuda": 1 << 24}   # elements of the histogram's temporaries at once
_REGRID = 4.0               # a neuron's grid is redrawn once its std reaches this many grid scales
# What a sketch computes, in the cache keys of results read through one: bumped when that changes, so that
# results cached before are computed again (2: grids redrawn for a first batch far narrower than the rest).
SKETCH_VERSION = 2


class Scratch:
    """Temporary buffers shared by every sketch of a pass (one layer is updated at a time)."""

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
        numel = math.prod(shape)
        key = (name, dtype, str(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel].view(shape)

    def ones(self, shape, dtype, device) -> torch.Tensor:
        numel = math.prod(shape)
        key = ("ones", dtype, str(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.ones(numel, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel].view(shape)


def sketch_bytes(n_neurons: int, seq_len: int, n_bins: int = 256, spread: bool = True, skip_first: int = 0,
                 max_windows: int | None = None, device="cpu") -> int:
    """Bytes one :class:`NeuronSketch` holds for ``n_neurons`` on ``device`` (independent of the tokens)."""
    n_pos = len(position_bins(seq_len, skip_first)) - 1
    first = 2 if _first_dtype(max_windows, torch.device(device)) == torch.int16 else 4
    per_neuron = n_bins * (12 if spread else 8) + n_bins * first + 16 * n_pos + 16 + 16  # + moments, grid
    return n_neurons * per_neuron + 8 * n_pos


def _first_dtype(max_windows: int | None, device: torch.device) -> torch.dtype:
    """int16 counts of the first position where they cannot overflow (on the CPU: CUDA adds int32 natively)."""
    small = max_windows is not None and max_windows < 1 << 15
    return torch.int16 if small and device.type == "cpu" else torch.int32


def _grid(mean: torch.Tensor, std: torch.Tensor, half: int, scale: float):
    """``(alpha, beta, zero_bin)``: ``t = y·alpha + beta`` (float32) puts raw zero just above the edge
    ``zero_bin`` of the grid ``F = half + scale·t/(1 + |t|)`` (``mean``, ``std``: float64, per neuron). Zero
    within half a bin of the mean: the grid is centred on zero. Zero more than ~8 times the grid's reach away
    (thousands of std): the grid stays, and every bin counts as on the mean's side of zero."""
    t0 = -mean / std
    edge = torch.round(half + scale * t0 / (1 + t0.abs())).clamp(1, 2 * half - 1)
    centred = edge == half
    q = (edge + _ZERO_OFFSET - half) / scale
    t_star = torch.where(centred, torch.ones_like(q), q / (1 - q.abs()))
    kappa = torch.where(centred, std, -mean / t_star)
    far = kappa > _FAR * std
    kappa = torch.where(far, std, kappa)
    beta = torch.where(centred, torch.zeros_like(mean), -mean / kappa)
    edge = torch.where(far, torch.where(t0 > 0, 2 * half, 0), edge)
    return (1 / kappa).float(), beta.float(), edge.long()


class NeuronSketch:
    """WD, its sign splits, moments and position statistics of one layer's neurons, batch by batch.

    ``update(outputs)`` takes ``[windows, positions, n_neurons]`` outputs of whole windows (positions 0,
    1, …; the last window of a pass may be cut short) on any device and dtype; the state stays on that
    device. :meth:`results` gives float64 CPU tensors. See the module docstring for the method.
    """

    def __init__(self, n_neurons: int, seq_len: int, n_bins: int = 256, spread: bool = True, skip_first: int = 0,
                 max_windows: int | None = None):
        self.d = check_int(n_neurons, "n_neurons")
        self.seq_len, self.skip_first = check_skip(seq_len, skip_first)
        self.n_bins = check_int(n_bins, "n_bins", minimum=16)
        if self.n_bins % 2:
            raise WnbError(f"n_bins must be even (got {n_bins})")
        self.max_windows = max_windows
        self.spread = bool(spread)
        self.edges = position_bins(self.seq_len, self.skip_first)
        self.half = self.n_bins // 2
        self.scale = self.half * (1 - 2.0 ** -20)  # |q| < 1 keeps F inside (0, n_bins)
        self.n_tokens = 0
        self.counts: torch.Tensor | None = None

    # ------------------------------------------------------------ accumulation

    def _start(self, t: torch.Tensor) -> None:
        """Grid and state from the first batch's kept outputs ``t [n, d]``."""
        dev, d = t.device, self.d
        sample = t[::max(1, t.shape[0] // 512)]  # the grid needs the scale roughly: up to ~1,000 tokens
        var, mean = (v.double() for v in torch.var_mean(sample, dim=0, correction=0))  # NaN: refused by _map
        std = var.sqrt()
        good = std > 0
        fallback = std[good].median() if good.any() else torch.ones((), dtype=torch.float64, device=dev)
        self.alpha, self.beta, self.zero_bin = _grid(mean, torch.where(good, std, fallback), self.half, self.scale)
        n_pos = len(self.edges) - 1
        self.counts = torch.zeros(d, self.n_bins, dtype=torch.int32, device=dev)
        self.fsum = torch.zeros(d, self.n_bins, dtype=torch.float32, device=dev)
        self.fsq = torch.zeros(d, self.n_bins, dtype=torch.float32, device=dev) if self.spread else None
        self.first = torch.zeros(d, self.n_bins, dtype=_first_dtype(self.max_windows, dev), device=dev)
        self.pos_count = torch.zeros(n_pos, dtype=torch.float64, device=dev)
        self.pos_sums = torch.zeros(2, n_pos, d, dtype=torch.float64, device=dev)  # Σt, Σt² per position bin
        self.high_sums = torch.zeros(2, d, dtype=torch.float64, device=dev)        # Σt³, Σt⁴
        pos = torch.arange(self.seq_len)
        self._bin_of = (torch.searchsorted(torch.tensor(self.edges), pos, right=True) - 1).clamp_min(0).to(dev)
        self._half_t = torch.tensor(float(self.half), device=dev)

    @torch.no_grad()
    def update(self, outputs: torch.Tensor, scratch: Scratch | None = None, visit=None) -> "NeuronSketch":
        """Add ``outputs [windows, positions, d]`` (whole windows from position 0; ``[positions, d]``: one).

        ``visit(t, t2)``, if given, is called with the kept outputs mapped to ``t [windows, kept, d]`` and
        their squares (float32, on the outputs' device), once they are counted and before they are
        overwritten (the reader's contexts pick their candidates from them)."""
        y = outputs[None] if outputs.dim() == 2 else outputs
        if y.dim() != 3 or y.shape[2] != self.d or y.shape[1] > self.seq_len:
            raise WnbError(f"outputs must be [windows, positions <= {self.seq_len}, {self.d}] "
                           f"(got shape {tuple(outputs.shape)})")
        kept = y[:, self.skip_first:]
        w, length = kept.shape[0], kept.shape[1]
        if w * length == 0:
            return self
        scratch = scratch or Scratch()
        if self.counts is None:
            self._start(kept.reshape(-1, self.d).float())  # a view unless positions are skipped
        t, t2, sums = self._map(kept, scratch)
        if self._regrid(sums, w * length):  # this batch is far wider than the grid: redrawn, then mapped again
            t, t2, sums = self._map(kept, scratch)
        self._add(sums, w, length)
        tt = scratch.get("tt", (self.d, w * length), device=kept.device)
        tt.copy_(t.view(-1, self.d).t())  # neuron-major: each neuron's bins stay in cache while it is counted
        self._histogram(tt, scratch)
        self._first(tt.view(self.d, w, length)[:, :, 0])
        self.n_tokens += w * length
        if visit is not None:
            visit(t, t2)
        self._highs(t, t2)
        return self

    def _map(self, kept: torch.Tensor, scratch: Scratch):
        """``t = y·alpha + beta`` of the kept outputs (float32 whatever their dtype), ``t²``, and their sums per
        position bin ``[2, P, d]`` (float32 within the batch, float64 after)."""
        w, length = kept.shape[0], kept.shape[1]
        t = scratch.get("t", (w, length, self.d), device=kept.device)
        torch.addcmul(self.beta, kept, self.alpha, out=t)
        t2 = torch.mul(t, t, out=scratch.get("t2", t.shape, device=kept.device))
        bins = self._bin_of[self.skip_first:self.skip_first + length]
        sums = torch.zeros_like(self.pos_sums)
        for k, v in enumerate((t, t2)):
            per_pos = v.view(w, -1).sum(0).view(length, self.d)  # sums of few long rows: one streaming pass
            sums[k] = torch.zeros(sums.shape[1], self.d, device=v.device).index_add_(0, bins, per_pos).double()
        if not torch.isfinite(sums[1]).all():
            raise WnbError("the outputs contain NaN or infinite values; check the model's dtype (float16 overflows?)")
        return t, t2, sums

    def _add(self, sums: torch.Tensor, w: int, length: int) -> None:
        """Add a batch's sums and its counts per position bin."""
        self.pos_sums += sums
        bins = self._bin_of[self.skip_first:self.skip_first + length]
        self.pos_count += w * torch.bincount(bins, minlength=self.pos_count.numel()).double()

    def _regrid(self, sums: torch.Tensor, n: int) -> bool:
        """Redraw the grid of the neurons whose std, this batch included, reached :data:`_REGRID` grid scales
        (the first batch was far narrower than the outputs): their bins and sums move to a grid set from the
        std so far (:func:`wnb.scoring.sketch_regrid.rebin`). Returns whether any grid moved."""
        count = self.pos_count.sum() + n
        s1, s2 = (self.pos_sums[k].sum(0) + sums[k].sum(0) for k in (0, 1))
        mean_t = s1 / count
        std_t = (s2 / count - mean_t * mean_t).clamp_min(0).sqrt()
        rows = torch.nonzero(std_t > _REGRID).flatten()
        if not rows.numel():
            return False
        alpha, beta = self.alpha.double()[rows], self.beta.double()[rows]
        new = _grid((mean_t[rows] - beta) / alpha, std_t[rows] / alpha, self.half, self.scale)
        rebin(self, rows, *new)
        return True

    def _highs(self, t: torch.Tensor, t2: torch.Tensor) -> None:
        """Σt³ and Σt⁴ (overwrites ``t`` and ``t2``)."""
        w = t.shape[0]
        t.mul_(t2)
        t2.mul_(t2)
        for k, v in enumerate((t, t2)):
            self.high_sums[k] += v.view(w, -1).sum(0).view(-1, self.d).sum(0).double()

    def _histogram(self, tt: torch.Tensor, scratch: Scratch) -> None:
        """Count ``tt [d, n]`` (neuron-major ``t``) into the bins, with the positions within them."""
        n = tt.shape[1]
        rows = max(1, _CHUNK.get(tt.device.type, _CHUNK["cpu"]) // n)
        dev = tt.device
        for r0 in range(0, self.d, rows):
            part = tt[r0:r0 + rows]
            m = part.shape[0]
            f = torch.abs(part, out=scratch.get("f", (m, n), device=dev)).add_(1.0)
            torch.addcdiv(self._half_t, part, f, value=self.scale, out=f)  # F = half + scale·q ∈ (0, n_bins)
            index = scratch.get("index", (m, n), torch.int64, dev)
            index.copy_(f)
            torch.frac(f, out=f)
            self.counts[r0:r0 + m].scatter_add_(1, index, scratch.ones((m, n), torch.int32, dev))
            self.fsum[r0:r0 + m].scatter_add_(1, index, f)
            if self.spread:
                self.fsq[r0:r0 + m].scatter_add_(1, index, f.mul_(f))

    def _first(self, t: torch.Tensor) -> None:
        """Count the first kept position of every window, ``t [d, windows]``, into bins of its own."""
        f = torch.addcdiv(self._half_t, t, t.abs() + 1, value=self.scale)
        self.first.scatter_add_(1, f.long(), torch.ones_like(t, dtype=self.first.dtype))

    def tail_bounds(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per neuron, grid values ``t`` (float32) at or above which, and at or below which, at least ``k`` of the
        samples counted so far lie (one bin lower and higher than their bins' edges: safe from rounding)."""
        suffix = self.counts.flip(1).cumsum(1).flip(1)   # samples in bin j and above
        prefix = self.counts.cumsum(1)                   # samples in bin j and below
        high = ((suffix >= k).sum(1) - 2).clamp_min(0)   # edge one bin below the highest bin with k above it
        low = (self.n_bins + 2 - (prefix >= k).sum(1)).clamp_max(self.n_bins)  # one bin above the lowest
        u = (torch.stack([high, low]).double() - self.half).clamp(-self.scale * 0.999999, self.scale * 0.999999)
        t = (u / (self.scale - u.abs())).float()
        return t[0], t[1]

    def nbytes(self) -> int:
        """Bytes of state held (independent of the number of tokens)."""
        if self.counts is None:
            return 0
        parts = [self.counts, self.fsum, self.first, self.pos_count, self.pos_sums, self.high_sums, self.alpha,
                 self.beta, self.zero_bin] + ([self.fsq] if self.spread else [])
        return sum(p.numel() * p.element_size() for p in parts)

    # ------------------------------------------------------------ results

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and population std of the outputs fed so far, float64 on the state's device."""
        n = self.pos_count.sum()
        mean_t = self.pos_sums[0].sum(0) / n
        var_t = (self.pos_sums[1].sum(0) / n - mean_t * mean_t).clamp_min(0)
        alpha, beta = self.alpha.double(), self.beta.double()
        return (mean_t - beta) / alpha, var_t.sqrt() / alpha

    def results(self, chunk: int = 512) -> dict[str, torch.Tensor]:
        """Per neuron, float64 CPU ``[d]``: ``wd, mean, variance, skewness, kurtosis, frac_negative, wd_lower,
        wd_upper`` (the WD integral over standardized ``z < 0`` and ``z > 0``), ``wd_below_zero,
        wd_above_zero`` (over raw outputs below and above zero: ``z`` below and above ``−mean/std``),
        ``pos0_tail_share``; per position bin ``bin_edges [P + 1]``, ``bin_count [P]``, ``bin_mean [P, d]``,
        ``bin_std [P, d]``. NaN for constant neurons (and for ``pos0_tail_share`` without tail outputs)."""
        if self.counts is None or self.n_tokens < 2:
            raise WnbError(f"at least 2 samples are needed to standardize (got {self.n_tokens}); feed batches "
                           "with update()")
        return finish(self, chunk)
