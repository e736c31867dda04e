"""Weight quantization for joint sparsity + quantization: an asymmetric min-max grid per output channel
(one row of an ``[out, in]`` weight) or per group of ``group_size`` consecutive input columns of a row.

The grid is the one of the reference SparseGPT code's ``--wbits`` (GPTQ's ``Quantizer`` with
``perchannel=True, sym=False, mse=False``): for the values ``w`` of a row (group), with ``b`` bits,

    lo = min(0, min w),  hi = max(0, max w)       (both 0: lo = -1, hi = 1)
    scale = (hi - lo) / (2^b - 1),  zero = round(-lo / scale)
    q(w) = scale · (clamp(round(w / scale) + zero, 0, 2^b - 1) - zero)

so every quantized row (group) takes at most ``2^b`` distinct values, and 0 is always on the grid:
``q(0) = 0`` exactly, so pruned weights stay zeros. :func:`wnb.prune_weight` and friends take
``bits=`` and ``group_size=``: SparseGPT quantizes each kept weight inside its column sweep and pushes
the quantization error through the inverse Hessian like the pruning error; Wanda and magnitude round the
masked weights to the nearest grid point (grid fitted on the dense weights).

    w = wnb.prune_weight(weight, inputs, "sparsegpt", "2:4", bits=4)
    wnb.effective_bits(4, "2:4", columns=weight.shape[1])     # 2.785 bits per weight for 576 columns
"""
from __future__ import annotations

import math

import torch

from wnb.compression.sparsity import parse_sparsity
from wnb.core.checks import check_int
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, ffn_layers, layer_weight

MIN_BITS, MAX_BITS = 2, 8
SCALE_BITS = 16  # a scale is stored as a 16-bit float; its zero point takes ``bits`` bits
DENSE_BITS = 16  # an unquantized weight (float16 / bfloat16)


# ---------------------------------------------------------------- arguments

def check_bits(bits) -> int | None:
    """``None`` (no quantization) or ``bits`` as an ``int`` from 2 to 8 (numpy integers accepted)."""

    if bits is None:
        return None
    return check_int(bits, "bits", MIN_BITS, MAX_BITS)


def check_quant(bits, group_size=None, columns: int | None = None, what: str = "the weight") -> tuple:
    """Validate ``bits`` and ``group_size`` (``None``: one grid per output channel) before any work;
    return them as ``(int | None, int | None)``. ``columns`` (the input width) must be a multiple of
    ``group_size`` when both are given."""

    bits = check_bits(bits)
    if group_size is None:
        return bits, None
    if bits is None:
        raise WnbError(f"group_size={group_size!r} needs bits= (quantization); without bits nothing is quantized")
    group_size = check_int(group_size, "group_size", 1)
    if columns is not None and columns % group_size:
        raise WnbError(f"group_size={group_size} must divide the input width, but {what} has {columns} inputs "
                       f"(use a divisor of {columns}, or None for one grid per output channel)")
    return bits, group_size


def key_parts(bits=None, group_size=None) -> dict:
    """What quantization adds to a cache key: ``{}`` without ``bits`` (so keys of unquantized results stay
    as they were), else ``{"bits": b}`` and, with groups, ``"group_size"``."""
    bits, group_size = check_quant(bits, group_size)
    if bits is None:
        return {}
    return {"bits": bits} if group_size is None else {"bits": bits, "group_size": group_size}


def quant_label(bits=None, group_size=None) -> str:
    """A short label: ``""``, ``"4-bit"`` or ``"4-bit g128"``."""
    if bits is None:
        return ""
    return f"{bits}-bit" + (f" g{group_size}" if group_size else "")


# ---------------------------------------------------------------- the grid

def fit_grid(weight: torch.Tensor, bits: int, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)``, each ``[rows, groups]`` in the weight's (floating) dtype, of the min-max grid of
    every row of ``weight [rows, cols]`` (``groups = 1``) or of every group of ``group_size`` columns."""
    bits, group_size = check_quant(bits, group_size, weight.shape[-1])
    if bits is None:
        raise WnbError("fit_grid needs bits (2 to 8)")
    w = weight.detach()
    if not w.dtype.is_floating_point:
        w = w.float()
    rows, cols = w.shape
    size = cols if group_size is None else group_size
    x = w.reshape(rows, cols // size, size)
    lo = x.amin(-1).clamp(max=0)
    hi = x.amax(-1).clamp(min=0)
    flat = (lo == 0) & (hi == 0)
    lo = torch.where(flat, -torch.ones_like(lo), lo)
    hi = torch.where(flat, torch.ones_like(hi), hi)
    maxq = 2 ** bits - 1
    scale = (hi - lo) / maxq
    zero = torch.round(-lo / scale)
    return scale, zero


def round_to_grid(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """``q(x)`` on the grid ``(scale, zero)`` (broadcast against ``x``): the nearest of its ``2^bits`` points."""
    maxq = 2 ** bits - 1
    return scale * (torch.clamp(torch.round(x / scale) + zero, 0, maxq) - zero)


def quantize(weight: torch.Tensor, bits: int, group_size: int | None = None,
             grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Round-to-nearest copy of ``weight [rows, cols]`` (same dtype) on its min-max grid per row (per group).

    ``grid`` = ``fit_grid(...)`` of another tensor (e.g. the dense weight, when ``weight`` is the pruned
    one); by default it is fitted on ``weight`` itself. Zeros stay zeros.
    """
    bits, group_size = check_quant(bits, group_size, weight.shape[-1])
    if bits is None:
        raise WnbError("quantize needs bits (2 to 8)")
    scale, zero = fit_grid(weight, bits, group_size) if grid is None else grid
    w = weight.detach()
    rows, cols = w.shape
    size = cols if group_size is None else group_size
    if scale.shape != (rows, cols // size):
        raise WnbError(f"the grid is {tuple(scale.shape)} but a [{rows}, {cols}] weight with "
                       f"{'one grid per row' if group_size is None else f'groups of {group_size}'} needs "
                       f"[{rows}, {cols // size}]")
    x = w.reshape(rows, cols // size, size)
    q = round_to_grid(x, scale[..., None].to(x.dtype), zero[..., None].to(x.dtype), bits)
    return q.reshape(rows, cols).masked_fill_(w == 0, 0)


# ---------------------------------------------------------------- storage

def mask_bits(sparsity) -> float:
    """Bits per weight that say which weights are kept: 0 when dense; 1 for unstructured sparsity (a
    bitmask); for N:M, the index of each group's pattern among the ``C(m, n)`` possible ones,
    ``ceil(log2 C(m, n)) / m`` (2:4: 3 bits per 4 weights = 0.75; cuSPARSELt's 2-bit position per kept
    value would be 1)."""

    fraction, n, m = parse_sparsity(sparsity)
    if m:
        return math.ceil(math.log2(math.comb(m, n))) / m
    return 0.0 if fraction == 0 else 1.0


def effective_bits(bits=None, sparsity=0.0, group_size=None, columns: int | None = None) -> float:
    """Storage per weight of a pruned (and quantized) ``[rows, columns]`` weight, in bits:

    * values: ``bits`` (16 without quantization) for each kept weight, i.e. ``bits × density`` per
      weight, density ``1 - fraction`` (N:M: ``1 - n/m``);
    * mask: :func:`mask_bits` (1 bit per weight for unstructured sparsity; ``ceil(log2 C(m, n)) / m``
      for N:M; none when dense);
    * grid: a 16-bit scale and a ``bits``-bit zero point per output channel, ``(16 + bits) / columns``
      per weight (``columns`` is then needed), or per group, ``(16 + bits) / group_size``.

    E.g. 2:4 + 4-bit per channel on 576 columns: ``4 · 0.5 + 3/4 + 20/576 = 2.785``.
    """

    bits, group_size = check_quant(bits, group_size, columns)
    fraction, n, m = parse_sparsity(sparsity)
    density = 1 - n / m if m else 1 - fraction
    total = (DENSE_BITS if bits is None else bits) * density + mask_bits(sparsity)
    if bits is not None:
        if group_size is None:
            if columns is None:
                raise WnbError("per-channel quantization stores one scale and zero point per row: give columns= "
                               "(the input width) to count them, or a group_size")
            columns = check_int(columns, "columns", 1)
        total += (SCALE_BITS + bits) / (group_size or columns)
    return total


def model_effective_bits(lm, bits=None, sparsity=0.0, group_size=None, layers=None) -> float:
    """:func:`effective_bits` averaged over ``layers`` (default: the FFN layers), weighted by their sizes."""

    layers = check_layers(lm, ffn_layers(lm) if layers is None else layers)
    total = count = 0.0
    for name in layers:
        rows, cols = layer_weight(lm, name).shape
        total += rows * cols * effective_bits(bits, sparsity, group_size, columns=cols)
        count += rows * cols
    return total / count
