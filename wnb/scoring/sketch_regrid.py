"""Moving some neurons of a :class:`wnb.scoring.sketch.NeuronSketch` to a new grid mid-pass.

A sketch sets each neuron's grid from the first batch. When a later batch makes a neuron's std many grid
scales wide (a first batch far narrower than the rest: a neuron quiet in the first windows, or nearly
constant there), its outputs pile into a few coarse outer bins and WD loses its accuracy. :func:`rebin`
redraws those neurons' grids and moves what they hold:

- each old bin's samples become two points, at the mean of their positions in the bin ± their spread (one
  point for one sample), which keeps the count, and the mean and variance of the positions, of every old
  bin; they are counted into the new grid with their new positions. Raw zero lies on an edge of both grids
  and no old bin holds samples of both signs, so the count below zero stays exact;
- the first position's counts move with their bin's mean;
- the power sums of ``t`` move exactly: ``t' = a·t + b`` is affine in ``t``, so ``Σt'^k`` follows from
  ``Σt^j`` for ``j <= k`` (binomial expansion).

Only the samples of one old bin are merged, so what is lost is their placement inside the new, wider bin;
bins the samples reach later are counted on the new grid directly.
"""
from __future__ import annotations

import math

import torch

from wnb.scoring.sketch_math import from_grid, to_grid


def _positions(sk, rows: torch.Tensor):
    """Per old bin of ``rows``: the two points' grid positions ``F`` and their counts (float64)."""
    counts = sk.counts[rows].double()
    safe = counts.clamp_min(1)
    mean = sk.fsum[rows].double() / safe
    if sk.spread:
        spread = (sk.fsq[rows].double() / safe - mean * mean).clamp_min(0).sqrt()
    else:  # uniform about the mean as wide as the bin allows
        spread = torch.minimum(mean, 1 - mean).clamp_min(0) / math.sqrt(3)
    spread = torch.minimum(spread, torch.minimum(mean, 1 - mean).clamp_min(0))  # both points in the bin
    base = torch.arange(counts.shape[1], dtype=torch.float64, device=counts.device)
    low_count = torch.floor(counts / 2)
    return (base + mean - spread, base + mean + spread), (low_count, counts - low_count), base + mean


def _to_new(sk, f: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Old grid positions ``f [r, B]`` → new grid positions (``t' = a·t + b`` per row)."""
    return to_grid(sk, a[:, None] * from_grid(sk, f) + b[:, None])


def _count_into(target: list, f: torch.Tensor, weight: torch.Tensor, spread: bool) -> None:
    """Add points at new positions ``f`` with counts ``weight`` to ``target = [counts, fsum, fsq or None]``."""
    index = f.floor().long().clamp_(max=target[0].shape[1] - 1)
    frac = f - index
    target[0].scatter_add_(1, index, weight.round().to(target[0].dtype))
    target[1].scatter_add_(1, index, (weight * frac).to(target[1].dtype))
    if spread:
        target[2].scatter_add_(1, index, (weight * frac * frac).to(target[2].dtype))


def _move_sums(sk, rows: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``Σt, Σt²`` per position bin and ``Σt³, Σt⁴`` of ``rows`` under ``t' = a·t + b`` (binomial expansion)."""
    n_pos = sk.pos_count[:, None]
    s1, s2 = sk.pos_sums[0][:, rows], sk.pos_sums[1][:, rows]
    t1, t2 = s1.sum(0), s2.sum(0)
    t3, t4 = sk.high_sums[0][rows], sk.high_sums[1][rows]
    n = sk.pos_count.sum()
    sk.pos_sums[0][:, rows] = a * s1 + b * n_pos
    sk.pos_sums[1][:, rows] = a * a * s2 + 2 * a * b * s1 + b * b * n_pos
    sk.high_sums[0][rows] = a ** 3 * t3 + 3 * a * a * b * t2 + 3 * a * b * b * t1 + b ** 3 * n
    sk.high_sums[1][rows] = (a ** 4 * t4 + 4 * a ** 3 * b * t3 + 6 * a * a * b * b * t2 + 4 * a * b ** 3 * t1
                             + b ** 4 * n)


@torch.no_grad()
def rebin(sk, rows: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, zero_bin: torch.Tensor) -> None:
    """Move neurons ``rows`` of the sketch ``sk`` to the grid ``t = y·alpha + beta`` (raw zero at edge
    ``zero_bin``; from :func:`wnb.scoring.sketch._grid`), with what they hold (see the module docstring)."""
    old_alpha, old_beta = sk.alpha.double()[rows], sk.beta.double()[rows]
    a = alpha.double() / old_alpha
    b = beta.double() - a * old_beta
    points, weights, centres = _positions(sk, rows)
    shape = (rows.numel(), sk.n_bins)
    target = [torch.zeros(shape, dtype=sk.counts.dtype, device=sk.counts.device),
              torch.zeros(shape, dtype=sk.fsum.dtype, device=sk.fsum.device),
              torch.zeros(shape, dtype=sk.fsum.dtype, device=sk.fsum.device) if sk.spread else None]
    for f, weight in zip(points, weights):
        _count_into(target, _to_new(sk, f, a, b), weight, sk.spread)
    first = torch.zeros(shape, dtype=sk.first.dtype, device=sk.first.device)
    index = _to_new(sk, centres, a, b).floor().long().clamp_(max=sk.n_bins - 1)
    first.scatter_add_(1, index, sk.first[rows])
    sk.counts[rows], sk.fsum[rows], sk.first[rows] = target[0], target[1], first
    if sk.spread:
        sk.fsq[rows] = target[2]
    _move_sums(sk, rows, a, b)
    sk.alpha[rows], sk.beta[rows], sk.zero_bin[rows] = alpha, beta, zero_bin
