"""Streaming entanglement scores: WD, mean and variance accumulated batch by batch.

:class:`StreamingWD` never keeps the outputs. Per neuron it holds running sums for the mean and
variance (float64 across batches), the exact minimum and maximum, and a fixed grid of ``n_bins`` bins holding, per bin,
the count of samples and the first two moments of where in the bin they fell. Its memory is
``n_neurons × n_bins × 20`` bytes plus a few numbers per neuron, whatever the number of tokens.

The grid is set from the first batch: with that batch's per-neuron mean ``m0`` and std ``s0``, a sample
``y`` is mapped to ``t = (y − m0) / (knee·s0)`` and then to ``u = sign(t)·log(1 + |t|) / log(1 + span)``;
bins are uniform in ``u ∈ [−1, 1]``. They are narrowest around the first batch's mean, grow in
proportion to the distance from it (constant relative width in the tails), and reach ``span·knee``
first-batch standard deviations either side; samples beyond fall into the two outermost bins, which
are open on their outer side. So a first batch narrower or wider than the rest costs little accuracy.

Inside a bin, samples are modelled from their count, mean and variance (exact per bin): one sample is
a point, two are the two points ``mean ± std``, more are uniform with the same mean and variance (a
point when they are all equal, e.g. ties or bf16 outputs; the whole bin when spread evenly). So the
CDF ``F`` is exact at every bin edge, piecewise linear between, and has the right integral over every
bin. WD is ``∫ |F(z) − Φ(z)| dz`` with ``z = (y − mean) / std`` from the exact moments: per linear
piece the integral of ``F − Φ`` has a closed form (``∫Φ = zΦ(z) + φ(z)``), split where ``F − Φ`` changes
sign (crossing found by linear interpolation). With the defaults the result is within 1e-4 of
:func:`wnb.wasserstein_to_gaussian` on float32 outputs of real layers and within 4e-4 on bf16 ones
(tests/unit/scoring/test_streaming.py; benchmarks/README.md). On CUDA the float64 bin sums are added with atomics,
so repeated runs may differ in the last bits.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from wnb.core.stats import normal_cdf_integral, normal_pdf
from wnb.data.positions import check_skip
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import ffn_layers, layer_weight
from wnb.tracing.capture import capture


class StreamingWD:
    """Per-neuron WD to N(0, 1), mean and variance of a layer's outputs, fed one batch at a time.

    ``update(outputs)`` takes ``[tokens, n_neurons]`` on any device and dtype (the state stays on that
    device; sums are float32 within a batch, float64 across batches, so mean and variance are accurate to
    about 1e-6 relative); :meth:`wasserstein`, :attr:`mean` and :attr:`variance` give float64 CPU tensors.
    ``n_bins`` trades memory for accuracy; ``knee`` is where, in first-batch standard deviations, bins
    start to widen, and ``span · knee`` how far the grid reaches. ``chunk`` bounds the temporary
    elements one update allocates at once.
    """

    def __init__(self, n_bins: int = 512, knee: float = 0.25, span: float = 1e4, chunk: int = 1 << 24):
        if int(n_bins) < 16 or int(n_bins) % 2:
            raise WnbError(f"n_bins must be even and at least 16 (got {n_bins})")
        if not knee > 0 or not span > 1:
            raise WnbError(f"knee must be positive and span above 1 (got knee={knee}, span={span})")
        self.n_bins = int(n_bins)
        self.knee = float(knee)
        self.log_span = math.log1p(span)
        self.chunk = int(chunk)
        self.n_tokens = 0
        self.counts: torch.Tensor | None = None  # [m, n_bins] int32

    # ------------------------------------------------------------ accumulation

    def _start(self, y: torch.Tensor) -> None:
        m, dev = y.shape[1], y.device
        var, mean = torch.var_mean(y, dim=0, correction=0)
        scale = var.sqrt()
        good = (scale > 0) & torch.isfinite(scale)
        # A neuron constant in the first batch borrows the layer's typical scale for its grid.
        fallback = scale[good].median() if good.any() else torch.ones((), device=dev)
        self.center = mean
        self.scale = torch.where(good, scale, fallback)
        self.counts = torch.zeros(m, self.n_bins, dtype=torch.int32, device=dev)
        # Sum and sum of squares of each sample's position inside its bin (0 = left edge, 1 = right).
        self.within = torch.zeros(2, m, self.n_bins, dtype=torch.float64, device=dev)
        self.minimum = torch.full((m,), math.inf, device=dev)
        self.maximum = torch.full((m,), -math.inf, device=dev)
        # Sums of (y − center) and its square, float64: exact mean and variance at the end.
        self._s1 = torch.zeros(m, dtype=torch.float64, device=dev)
        self._s2 = torch.zeros(m, dtype=torch.float64, device=dev)
        self._center64 = mean.double()
        self._alpha = 1.0 / (self.scale * self.knee)
        self._offsets = (torch.arange(m, device=dev) * self.n_bins).float()  # row starts in the flat counts

    @torch.no_grad()
    def update(self, outputs: torch.Tensor) -> "StreamingWD":
        """Add a batch of samples ``[tokens, n_neurons]``; returns self."""
        if outputs.dim() != 2:
            raise WnbError(f"outputs must be [tokens, n_neurons] (got shape {tuple(outputs.shape)})")
        y = outputs.float()
        if y.shape[0] == 0:
            return self
        if self.counts is None:
            self._start(y)
        elif y.shape[1] != self.counts.shape[0]:
            raise WnbError(f"this accumulator holds {self.counts.shape[0]} neurons but the batch has {y.shape[1]}")
        d = y - self.center
        # Per batch in float32 (cascade summation), across batches in float64: about 1e-6 relative.
        s1, s2 = d.sum(0).double(), (d * d).sum(0).double()
        if not (torch.isfinite(s1).all() and torch.isfinite(s2).all()):
            raise WnbError("the outputs contain NaN or infinite values; check the model's dtype (float16 overflows?)")
        self._s1 += s1
        self._s2 += s2
        torch.minimum(self.minimum, y.amin(0), out=self.minimum)
        torch.maximum(self.maximum, y.amax(0), out=self.maximum)
        # Column blocks keep temporaries under `chunk` elements and flat indices exact in float32.
        step = max(1, min(self.chunk // y.shape[0], (1 << 24) // self.n_bins))
        for start in range(0, y.shape[1], step):
            self._histogram(d[:, start:start + step], start)
        self.n_tokens += y.shape[0]
        return self

    def _edge(self, u: torch.Tensor) -> torch.Tensor:
        """Grid coordinate ``u ∈ [−1, 1]`` → ``t`` (the inverse of the map in the module docstring)."""
        return torch.copysign(torch.expm1(u.abs() * self.log_span), u)

    def _histogram(self, d: torch.Tensor, start: int) -> None:
        """Add the samples ``d = y − center`` of columns ``start:start + d.shape[1]`` to the bins."""
        stop = start + d.shape[1]
        half = self.n_bins // 2
        step = self.log_span / half  # bin width in log(1 + |t|)
        t = d * self._alpha[start:stop]  # (y − center) / (scale·knee)
        q = t.abs().log1p_().mul_(1 / step)  # continuous bin number counted outwards from the centre
        k = q.floor().clamp_(max=half - 1)
        # Position in the bin, linear in y, from its inner edge: (e^{(q−k)·step} − 1) / (e^{step} − 1);
        # beyond the grid (outermost bins, open outwards) it exceeds 1.
        frac = q.sub_(k).mul_(step).exp_().sub_(1).mul_(1 / math.expm1(step)).view(-1)
        # Signed bin index: half + k above the centre, half − 1 − k below (its inner edge is its right one).
        flat = k.add_(0.5).mul_(t.sign_()).add_(self._offsets[: stop - start] + (half - 0.5)).view(-1).int()
        # One batch's sums are float32 (at most a batch of samples per bin), the totals float64.
        size = (stop - start) * self.n_bins
        self.counts[start:stop] += torch.bincount(flat, minlength=size).view(-1, self.n_bins).int()
        self.within[0, start:stop] += torch.bincount(flat, weights=frac, minlength=size).view(-1, self.n_bins)
        self.within[1, start:stop] += torch.bincount(flat, weights=frac.mul_(frac), minlength=size).view(-1, self.n_bins)

    # ------------------------------------------------------------ results

    def _check(self) -> None:
        if self.counts is None or self.n_tokens < 2:
            raise WnbError(f"at least 2 samples are needed to standardize (got {self.n_tokens}); feed batches with update()")

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        shift = self._s1 / self.n_tokens
        return self._center64 + shift, (self._s2 / self.n_tokens - shift * shift).clamp_min(0)

    @property
    def mean(self) -> torch.Tensor:
        """Per-neuron mean, float64 on the CPU (float32 sums within a batch: error about 1e-6 of the std)."""
        self._check()
        return self._moments()[0].cpu()

    @property
    def variance(self) -> torch.Tensor:
        """Per-neuron population variance, float64 on the CPU (relative error about 1e-6)."""
        self._check()
        return self._moments()[1].cpu()

    def nbytes(self) -> int:
        """Bytes of state held (independent of the number of tokens)."""
        if self.counts is None:
            return 0
        parts = [self.counts, self.within, self.minimum, self.maximum, self._s1, self._s2, self._center64, self.center,
                 self.scale, self._alpha, self._offsets]
        return sum(p.numel() * p.element_size() for p in parts)

    def _knots(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Knots of the piecewise linear CDF in output units and the CDF there, 6 per bin: the left edge,
        the samples' model (below), the right edge; clipped to the exact [min, max].

        A bin's samples are modelled from their count, mean and variance: one sample is a point, two
        are the two points ``mean ± std`` (both exact), more are uniform on ``[mean − h, mean + h]``
        with ``h = √3·std`` (the same mean and variance), kept inside the bin. Bins outside the range
        any of these neurons reached are left out: clipped, they would add only zero-width pieces."""
        used = torch.nonzero(self.counts[rows].any(0)).flatten()
        first, last = used.min().item(), used.max().item() + 1
        counts = self.counts[rows, first:last].double()
        m = counts.shape[0]
        safe = counts.clamp_min(1)
        mean = self.within[0, rows, first:last] / safe
        std = (self.within[1, rows, first:last] / safe - mean * mean).clamp_min(0).sqrt()
        # Positions were counted from each bin's inner edge: below the centre that is the right one.
        below = max(0, self.n_bins // 2 - first)
        mean[:, :below] = 1 - mean[:, :below]
        room = torch.minimum(mean, 1 - mean)
        if first == 0:  # the outermost bins are open outwards
            room[:, 0] = 1 - mean[:, 0]
        if last == self.n_bins:
            room[:, -1] = mean[:, -1]
        mean = torch.where(room < 0, mean.clamp(0, 1), mean)  # rounding in inner bins
        # The model must stay in the bin.
        half = torch.minimum(torch.where(counts == 2, std, math.sqrt(3) * std), room).clamp_min(0)
        u = torch.linspace(-1, 1, self.n_bins + 1, dtype=torch.float64, device=counts.device)[first:last + 1]
        unit = (self.scale.double() * self.knee)[rows, None]
        edges = self.center.double()[rows, None] + unit * self._edge(u)
        left, right = edges[:, :-1], edges[:, 1:]
        width = right - left
        start, stop = left + (mean - half) * width, left + (mean + half) * width
        middle = left + mean * width
        pair = counts == 2
        inner_lo, inner_hi = torch.where(pair, start, middle), torch.where(pair, stop, middle)
        left, right = left.clone(), right.clone()
        left[:, 0], right[:, -1] = -math.inf, math.inf  # clipped to min/max below
        knots = torch.stack([left, start, inner_lo, inner_hi, stop, right], dim=2).view(m, -1)
        knots = torch.clamp(knots, self.minimum.double()[rows, None], self.maximum.double()[rows, None])
        after = counts.cumsum(1) / self.n_tokens
        before = torch.cat([torch.zeros_like(after[:, :1]), after[:, :-1]], dim=1)
        mid = (before + after) / 2
        cdf = torch.stack([before, before, mid, mid, after, after], dim=2).view(m, -1)
        return knots, cdf

    @torch.no_grad()
    def wasserstein(self, chunk: int = 1024) -> torch.Tensor:
        """Per-neuron W1 of the standardized outputs to N(0, 1), float64 on the CPU (NaN: constant neuron)."""
        self._check()
        m = self.counts.shape[0]
        mean, var = self._moments()
        std = var.sqrt()
        result = torch.empty(m, dtype=torch.float64, device=self.counts.device)
        for start in range(0, m, chunk):
            rows = slice(start, start + chunk)
            knots, cdf = self._knots(rows)
            result[rows] = _piecewise_linear_w1((knots - mean[rows, None]) / std[rows, None], cdf)
        result[~(std > 0) | ~torch.isfinite(std)] = float("nan")
        return result.cpu()

    def table(self, weight: torch.Tensor | None = None) -> pd.DataFrame:
        """One row per neuron like :func:`wnb.neuron_table` (without MD): rank, neuron, wd, mean, variance
        (and weight_norm when ``weight [n_neurons, d_in]`` is given), most entangled first."""
        wd = self.wasserstein()
        table = pd.DataFrame({"neuron": np.arange(wd.numel()), "wd": wd.numpy(),
                              "mean": self.mean.numpy(), "variance": self.variance.numpy()})
        if weight is not None:
            table["weight_norm"] = torch.linalg.vector_norm(weight.detach().double().cpu(), dim=1).numpy()
        table = table.sort_values("wd", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
        table.insert(0, "rank", np.arange(1, len(table) + 1))
        return table


def _piecewise_linear_w1(z: torch.Tensor, cdf: torch.Tensor) -> torch.Tensor:
    """``∫ |F − Φ|`` over the real line for ``F`` linear between ``z[:, k]`` (values ``cdf[:, k]``), 0 before
    ``z[:, 0]`` and 1 after ``z[:, -1]``. ``z`` is ``[m, K]`` non-decreasing, ``cdf`` the same shape."""
    big_phi = torch.special.ndtr(z)
    g = z * big_phi + normal_pdf(z)                        # ∫_{-∞}^{z} Φ at every edge
    gap = cdf - big_phi
    width = z[:, 1:] - z[:, :-1]
    signed = (cdf[:, :-1] + cdf[:, 1:]) * 0.5 * width - (g[:, 1:] - g[:, :-1])  # ∫ (F − Φ) per piece
    result = signed.abs().sum(1)
    # Pieces where F − Φ changes sign: split at the crossing (few per neuron, handled sparsely).
    rows, cols = torch.nonzero((gap[:, :-1] * gap[:, 1:] < 0) & (width > 0), as_tuple=True)
    if rows.numel():
        a, w, fa, fb = z[rows, cols], width[rows, cols], cdf[rows, cols], cdf[rows, cols + 1]
        da, db = gap[rows, cols], gap[rows, cols + 1]
        run = w * da / (da - db)
        root = a + run
        first = fa * run + (fb - fa) / w * run * run / 2 - (normal_cdf_integral(root) - g[rows, cols])
        whole = signed[rows, cols]
        result.index_add_(0, rows, first.abs() + (whole - first).abs() - whole.abs())
    hi = z[:, -1]
    return result + g[:, 0] + normal_pdf(hi) - hi * torch.special.ndtr(-hi)  # tails: ∫Φ below, ∫(1 − Φ) above


def stream_scores(lm, windows, layers=None, max_tokens: int | None = None, batch_size: int = 8,
                  n_bins: int = 512, knee: float = 0.25, span: float = 1e4,
                  progress: bool = True, skip_first: int = 0) -> dict[str, StreamingWD]:
    """WD, mean and variance of every neuron of ``layers`` (default: all FFN layers) in one capture pass
    that keeps no outputs: memory is per neuron, not per token. Returns ``{layer: StreamingWD}``.
    ``skip_first`` leaves the first positions of every window out (0: all, as in the paper)."""

    windows = check_windows(windows, lm)
    seq_len, skip_first = check_skip(windows.shape[1], skip_first)
    layers = ffn_layers(lm) if layers is None else layers
    accumulators: dict[str, StreamingWD] = {}

    def feed(batch):
        for name, acts in batch.items():
            if name not in accumulators:
                accumulators[name] = StreamingWD(n_bins, knee, span)
            y = acts.outputs
            if skip_first:  # every batch starts at a window boundary
                y = y[torch.arange(y.shape[0], device=y.device) % seq_len >= skip_first]
            accumulators[name].update(y)

    capture(lm, layers, windows, max_tokens=max_tokens, batch_size=batch_size, inputs=False,
            progress=progress, on_batch=feed)
    return accumulators


def state_bytes(n_neurons: int, n_bins: int = 512) -> int:
    """Bytes of :class:`StreamingWD` state for a layer of ``n_neurons`` (independent of tokens)."""
    return n_neurons * (n_bins * (4 + 2 * 8) + 6 * 4 + 3 * 8)


def estimate_stream_bytes(lm, layers, n_bins: int = 512) -> int:
    """Bytes of accumulator state :func:`stream_scores` holds for ``layers`` (independent of tokens)."""

    return sum(state_bytes(layer_weight(lm, name).shape[0], n_bins) for name in layers)
