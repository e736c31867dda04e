"""From a :class:`wnb.scoring.sketch.NeuronSketch`'s state to per-neuron results: WD and its splits, moments, shares.

The CDF of a neuron's standardized outputs is piecewise linear through 2 knots per bin (the start and the
end of the samples' model inside it; between bins the CDF is flat); ``∫|F − Φ|`` over each piece
has a closed form (``∫Φ = zΦ(z) + φ(z)``), split where ``F − Φ`` changes sign (the crossing found by linear
interpolation). Cumulative sums of the pieces give the integral below any knot;
a split (at the mean, or at raw zero, which is a bin edge) cuts the one piece that holds it.
"""
from __future__ import annotations

import math

import torch
from torch.special import ndtr

from wnb.core.stats import normal_cdf_integral, normal_pdf, normal_sf_integral
from wnb.data.positions import TAIL_SIGMA

_CLAMP_Q = 1 - 1e-12   # the outermost bins are open: their outer edges map to ±1e12 scale units


def to_grid(sk, t: torch.Tensor) -> torch.Tensor:
    """Grid positions ``F = half + scale·t/(1 + |t|)`` of values ``t`` of the sketch ``sk``'s grid."""
    return sk.half + sk.scale * t / (1 + t.abs())


def from_grid(sk, f: torch.Tensor) -> torch.Tensor:
    """Values ``t`` at grid positions ``f`` (the inverse of :func:`to_grid`; open outer edges: ±1e12)."""
    bound = sk.scale * _CLAMP_Q
    u = (f - sk.half).clamp_(-bound, bound)
    return u.div_(sk.scale - u.abs())


def _piece(a, b, fa, fb, ga=None, gb=None):
    """``∫_a^b |F − Φ|`` for ``F`` linear from ``fa`` to ``fb`` (elementwise, ``a <= b``), split at the crossing
    of ``F − Φ`` (linear interpolation) where it changes sign. ``ga``, ``gb``: ``∫Φ`` up to ``a``, ``b``."""
    ga = normal_cdf_integral(a) if ga is None else ga
    gb = normal_cdf_integral(b) if gb is None else gb
    w = b - a
    signed = (fa + fb) * 0.5 * w - (gb - ga)
    da, db = fa - ndtr(a), fb - ndtr(b)
    cross = (da * db < 0) & (w > 0)
    run = torch.where(cross, w * da / torch.where(cross, da - db, torch.ones_like(da)), torch.zeros_like(w))
    slope = torch.where(w > 0, (fb - fa) / torch.where(w > 0, w, torch.ones_like(w)), torch.zeros_like(w))
    first = fa * run + slope * run * run * 0.5 - (normal_cdf_integral(a + run) - ga)
    return torch.where(cross, first.abs() + (signed - first).abs(), signed.abs())


def _pieces(z: torch.Tensor, cdf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per piece ``∫|F − Φ|`` (``[m, K − 1]``) and ``∫Φ`` up to every knot (``[m, K]``) for knots ``z [m, K]``
    (non-decreasing per row) with CDF values ``cdf``. Crossing pieces (few) are redone with :func:`_piece`."""
    big = ndtr(z)
    g = z * big + normal_pdf(z)
    gap = cdf - big
    w = z[:, 1:] - z[:, :-1]
    pieces = ((cdf[:, :-1] + cdf[:, 1:]) * 0.5 * w - (g[:, 1:] - g[:, :-1])).abs_()
    rows, cols = torch.nonzero((gap[:, :-1] * gap[:, 1:] < 0) & (w > 0), as_tuple=True)
    if rows.numel():
        pieces[rows, cols] = _piece(z[rows, cols], z[rows, cols + 1], cdf[rows, cols], cdf[rows, cols + 1],
                                    g[rows, cols], g[rows, cols + 1])
    return pieces, g


def _knots(sk, rows: slice, mean_t: torch.Tensor, std_t: torch.Tensor):
    """Knots and CDF values of neurons ``rows`` over the bins their samples reached: 2 per bin, the start and
    end of the samples' model (the CDF is flat between one bin's end and the next one's start, so the bin
    edges need no knots). Returns ``z [m, 2B]``, ``cdf``, the first bin, the end bin and ``standardize``
    (grid position → standardized output)."""
    counts = sk.counts[rows]
    used = torch.nonzero(counts.any(0)).flatten()
    first, last = int(used.min()), int(used.max()) + 1
    c = counts[:, first:last].double()
    m = sk.fsum[rows, first:last].double() / c.clamp_min(1)
    room = torch.minimum(m, 1 - m).clamp_min_(0)
    if sk.spread:
        sd = (sk.fsq[rows, first:last].double() / c.clamp_min(1) - m * m).clamp_min_(0).sqrt_()
        room = torch.minimum(sd.mul_(math.sqrt(3)), room)
    half = room.masked_fill_(c <= 1, 0)
    m += torch.arange(first, last, dtype=torch.float64, device=c.device)
    pos = torch.stack([m - half, m + half], dim=2).flatten(1)
    total = c.sum(1, keepdim=True)
    after = c.cumsum(1).div_(total)
    cdf = torch.stack([after - c / total, after], dim=2).flatten(1)
    inv = 1 / std_t[:, None]
    shift = -mean_t[:, None] * inv

    def standardize(f: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(shift, from_grid(sk, f), inv)

    return standardize(pos), cdf, first, last, standardize


def _wasserstein(sk, rows: slice, mean_t, std_t) -> dict[str, torch.Tensor]:
    """WD and its splits at the mean (``z = 0``) and at raw zero (the edge ``zero_bin``) for ``rows``."""
    z, cdf, first, last, standardize = _knots(sk, rows, mean_t[rows], std_t[rows])
    pieces, g = _pieces(z, cdf)
    below = torch.cat([g[:, :1], g[:, :1] + pieces.cumsum(1)], dim=1)  # ∫|F − Φ| up to each knot
    total = below[:, -1] + normal_sf_integral(z[:, -1])
    return {"wd": total, **_split(z, cdf, below, total, torch.zeros_like(total), None, "wd_lower", "wd_upper"),
            **_split(z, cdf, below, total, standardize(sk.zero_bin[rows, None].double())[:, 0],
                     2 * (sk.zero_bin[rows] - first) - 1, "wd_below_zero", "wd_above_zero")}


def _split(z, cdf, below, total, at, piece, lower: str, upper: str) -> dict[str, torch.Tensor]:
    """``∫|F − Φ|`` below and above ``at [m]``, cutting the piece that holds it (found by search unless the
    ``piece`` index is known); ``at`` outside the knots: the closed-form tail."""
    if piece is None:
        piece = torch.searchsorted(z, at[:, None])[:, 0] - 1
    inside = (piece >= 0) & (piece < z.shape[1] - 1)
    k = piece.clamp(0, z.shape[1] - 2)[:, None]
    a, b = z.gather(1, k)[:, 0], z.gather(1, k + 1)[:, 0]
    fa, fb = cdf.gather(1, k)[:, 0], cdf.gather(1, k + 1)[:, 0]
    stop = torch.minimum(torch.maximum(at, a), b)
    f_stop = fa + (fb - fa) * ((stop - a) / (b - a).clamp_min(1e-300))
    cut = below.gather(1, k)[:, 0] + _piece(a, stop, fa, f_stop)
    value = torch.where(inside, cut, torch.where(piece < 0, normal_cdf_integral(at), total - normal_sf_integral(at)))
    return {lower: value, upper: total - value}


def _below(counts: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Samples below grid position ``f [d]`` (bins ``counts [d, B]``), linear within the bin holding it."""
    prefix = torch.cat([torch.zeros_like(counts[:, :1]), counts.cumsum(1)], dim=1)
    j = f.floor().clamp(0, counts.shape[1] - 1).long()
    frac = (f - j).clamp(0, 1)
    return prefix.gather(1, j[:, None])[:, 0] + frac * counts.gather(1, j[:, None])[:, 0]


def _first_tail_share(sk, mean_t, std_t) -> torch.Tensor:
    """Share of each neuron's outputs beyond ±2.5σ that come from the first position kept."""
    lo, hi = to_grid(sk, mean_t - TAIL_SIGMA * std_t), to_grid(sk, mean_t + TAIL_SIGMA * std_t)
    main, first = sk.counts.double(), sk.first.double()
    tails = _below(main, lo) + main.sum(1) - _below(main, hi)
    at_first = _below(first, lo) + first.sum(1) - _below(first, hi)
    share = (at_first / tails).clamp(0, 1)
    return torch.where(tails > 0, share, torch.full_like(share, float("nan")))


def _moments(sk):
    """Centred moments of ``t`` (grid units) over all tokens: mean, m2, m3, m4."""
    n = sk.pos_count.sum()
    s1, s2 = sk.pos_sums[0].sum(0) / n, sk.pos_sums[1].sum(0) / n
    s3, s4 = sk.high_sums[0] / n, sk.high_sums[1] / n
    m2 = (s2 - s1 * s1).clamp_min(0)
    m3 = s3 - 3 * s1 * s2 + 2 * s1 ** 3
    m4 = s4 - 4 * s1 * s3 + 6 * s1 * s1 * s2 - 3 * s1 ** 4
    return s1, m2, m3, m4


def finish(sk, chunk: int = 512) -> dict[str, torch.Tensor]:
    """Every result of :meth:`wnb.scoring.sketch.NeuronSketch.results` (see there)."""
    mean_t, m2, m3, m4 = _moments(sk)
    alpha, beta = sk.alpha.double(), sk.beta.double()
    # float32 sums leave ~1e-7 relative noise: below that a neuron counts as constant
    constant = m2 <= 1e-12 * (1 + beta * beta + mean_t * mean_t)
    std_t = torch.where(constant, torch.ones_like(m2), m2.sqrt())
    nan = torch.full_like(m2, float("nan"))
    out = {"mean": (mean_t - beta) / alpha, "variance": m2 / (alpha * alpha),
           "skewness": torch.where(constant, nan, m3 / std_t ** 3),
           "kurtosis": torch.where(constant, nan, m4 / std_t ** 4 - 3)}
    prefix = torch.cat([torch.zeros_like(sk.counts[:, :1]), sk.counts.cumsum(1, dtype=torch.int32)], dim=1)
    out["frac_negative"] = prefix.gather(1, sk.zero_bin[:, None])[:, 0].double() / sk.counts.sum(1).double()
    parts = [_wasserstein(sk, slice(s, s + chunk), mean_t, std_t) for s in range(0, sk.d, chunk)]
    for name in parts[0]:
        out[name] = torch.where(constant, nan, torch.cat([p[name] for p in parts]))
    out["pos0_tail_share"] = torch.where(constant, nan, _first_tail_share(sk, mean_t, std_t))
    count = sk.pos_count.clamp_min(1)[:, None]
    shift = sk.pos_sums[0] / count
    out["bin_edges"] = torch.tensor(sk.edges, dtype=torch.float64)
    out["bin_count"] = sk.pos_count
    out["bin_mean"] = (shift - beta) / alpha
    out["bin_std"] = (sk.pos_sums[1] / count - shift * shift).clamp_min(0).sqrt() / alpha
    return {k: v.detach().to("cpu", torch.float64) for k, v in out.items()}
