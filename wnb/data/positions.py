"""Positions in the window: dropping the first positions, and the first-token ("sink") flag.

Captures are flattened window-major: row ``t`` of ``[N, d]`` is position ``t % seq_len`` of window
``t // seq_len`` (the last window may be cut short by ``max_tokens``). In many models the first token of
every window becomes an attention sink with massive activations (Sun et al. 2024, PAPER.md §7), and a
neuron whose tails are only those tokens looks "entangled" for that reason alone. ``skip_first`` drops
the first positions of every window from a statistic; :func:`position_tail_share` measures how much of
each neuron's tails sits at one position, and :data:`SINK_SHARE` is the share above which wnb flags it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from wnb.core.checks import check_float, check_int
from wnb.core.stats import standardize
from wnb.errors import WnbError

SINK_SHARE = 0.5
"""A neuron is flagged ``sink`` when at least this share of its tail outputs (beyond ±``TAIL_SIGMA``
standard deviations) comes from the first position kept, which holds only 1/seq_len of the samples."""

TAIL_SIGMA = 2.5
"""Where a tail starts, in standard deviations from the neuron's mean (both sides)."""


def check_skip(seq_len, skip_first) -> tuple[int, int]:
    """``(seq_len, skip_first)`` as ints, refusing a ``skip_first`` that would drop every position."""
    seq_len = check_int(seq_len, "seq_len")
    skip_first = check_int(skip_first, "skip_first", minimum=0, maximum=seq_len - 1)
    return seq_len, skip_first


def position_bins(seq_len: int, skip_first: int = 0) -> list[int]:
    """Edges of the position bins over the kept positions: ``skip_first + (0, 1, 2, 3, 4, 8, 16, …)`` up to
    ``seq_len`` (last edge exclusive)."""
    edges, step = [0, 1, 2, 3, 4], 8
    while step < seq_len - skip_first:
        edges.append(step)
        step *= 2
    edges = [e for e in edges if e < seq_len - skip_first] + [seq_len - skip_first]
    return [skip_first + e for e in edges]


def kept_rows(n_tokens: int, seq_len: int, skip_first: int = 0) -> torch.Tensor:
    """Flat indices (window-major, ``[n_kept]`` long) of the rows left once the first ``skip_first``
    positions of every window are dropped, in their original order."""
    seq_len, skip_first = check_skip(seq_len, skip_first)
    rows = torch.arange(int(n_tokens))
    return rows if skip_first == 0 else rows[rows % seq_len >= skip_first]


def drop_positions(tensor: torch.Tensor, seq_len: int, skip_first: int = 0) -> torch.Tensor:
    """The rows of a flattened capture ``[N, ...]`` whose position in the window is ``>= skip_first``.

    ``skip_first=0`` returns ``tensor`` itself; otherwise a copy (e.g. ``skip_first=1`` drops the first
    token of every window). ``N`` need not be a multiple of ``seq_len`` (a last window cut short)."""
    if tensor is None:
        return None
    seq_len, skip_first = check_skip(seq_len, skip_first)
    if skip_first == 0:
        return tensor
    return tensor[kept_rows(tensor.shape[0], seq_len, skip_first).to(tensor.device)]


def _moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    std, mean = torch.std_mean(y.double(), dim=0, correction=0)
    return mean, std


def position_tail_share(outputs: torch.Tensor, seq_len: int, skip_first: int = 0, position: int | None = None,
                        threshold: float = TAIL_SIGMA, chunk: int = 256) -> torch.Tensor:
    """Per neuron, the share of its tail outputs (``|z| > threshold``, both sides) found at ``position``.

    ``outputs [N, d]`` is a flattened capture of windows of ``seq_len`` tokens. The statistics use the
    positions ``>= skip_first`` (as everything else with that ``skip_first``); ``position`` defaults to
    the first one kept (``skip_first``: 0, the first token of every window, by default). Returns
    ``[d]`` float64; NaN for a neuron with no tail output (e.g. a constant one).
    """
    seq_len, skip_first = check_skip(seq_len, skip_first)
    position = skip_first if position is None else check_int(position, "position", skip_first, seq_len - 1)
    threshold = check_float(threshold, "threshold", 0, None, low_open=True)
    if outputs.dim() != 2:
        raise WnbError(f"outputs must be [n_tokens, n_neurons] (got shape {tuple(outputs.shape)})")
    pos = torch.arange(outputs.shape[0]) % seq_len
    keep, here = pos >= skip_first, pos == position
    share = torch.empty(outputs.shape[1], dtype=torch.float64)
    for s in range(0, outputs.shape[1], chunk):
        y = outputs[:, s:s + chunk].detach().cpu().double()
        mean, std = _moments(y[keep])
        tail = ((y - mean).abs() > threshold * std) & keep[:, None] & (std > 0)
        total = tail.sum(0)
        share[s:s + chunk] = torch.where(total > 0, tail[here].sum(0) / total.clamp_min(1),
                                         torch.full_like(total, float("nan"), dtype=torch.float64))
    return share


def sink_flags(share: torch.Tensor, threshold: float = SINK_SHARE) -> torch.Tensor:
    """``share >= threshold`` as a bool tensor (NaN shares are not flagged)."""
    threshold = check_float(threshold, "sink threshold", 0, 1)
    share = torch.as_tensor(share, dtype=torch.float64)
    return share >= threshold


def position_profile(outputs: torch.Tensor, seq_len: int, neuron: int, skip_first: int = 0,
                     threshold: float = TAIL_SIGMA) -> pd.DataFrame:
    """One neuron's outputs by position in the window: one row per position kept with ``position, count,
    mean, std, mean_z, mean_abs_z, tails`` (outputs beyond ±threshold σ there) and ``tail_share``
    (that position's share of all of them). ``z`` uses the neuron's mean and std over the kept positions."""
    seq_len, skip_first = check_skip(seq_len, skip_first)
    if outputs.dim() != 2 or not 0 <= int(neuron) < outputs.shape[1]:
        raise WnbError(f"neuron must be in [0, {outputs.shape[1] if outputs.dim() == 2 else 0}) of outputs "
                       f"[n_tokens, n_neurons] (got {neuron} and shape {tuple(outputs.shape)})")
    y = outputs[:, int(neuron)].detach().cpu().double()
    pos = torch.arange(y.numel()) % seq_len
    keep = pos >= skip_first
    mean = y[keep].mean()
    z = standardize(y, y[keep])  # NaN for a constant neuron: no tails
    y, z, pos = y[keep], z[keep], pos[keep] - skip_first
    n = seq_len - skip_first
    count = torch.bincount(pos, minlength=n).double()
    shift = torch.bincount(pos, y - mean, minlength=n) / count  # centred first: no cancellation
    mean_y = mean + shift
    var_y = torch.bincount(pos, (y - mean) ** 2, minlength=n) / count - shift ** 2
    tails = torch.bincount(pos, (z.abs() > threshold).double(), minlength=n)
    table = pd.DataFrame({"position": np.arange(skip_first, seq_len), "count": count.long().numpy(),
                          "mean": mean_y.numpy(), "std": var_y.clamp_min(0).sqrt().numpy(),
                          "mean_z": (torch.bincount(pos, z, minlength=n) / count).numpy(),
                          "mean_abs_z": (torch.bincount(pos, z.abs(), minlength=n) / count).numpy(),
                          "tails": tails.long().numpy(),
                          "tail_share": (tails / tails.sum()).numpy() if tails.sum() > 0 else np.nan})
    return table[table["count"] > 0].reset_index(drop=True)
