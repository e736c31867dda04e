"""The vocabulary of pruning: the methods, what a sparsity may be (a fraction in [0, 1) or ``"N:M"``) and
its label, and the checks of a weight, its rows and its calibration inputs before any pruning work.

The number of zeros is exact: ``round(fraction · count)`` of each SparseGPT column block (over the rows
being pruned), of each row for Wanda, of the whole (selected) matrix for magnitude."""
from __future__ import annotations

import re

import torch

from wnb.errors import WnbError

METHODS = ("magnitude", "wanda", "sparsegpt")


def parse_sparsity(sparsity) -> tuple[float, int, int]:
    """``(fraction, n, m)``: ``n = m = 0`` for unstructured sparsity, else n zeros in every m columns.

    Accepts a number in ``[0, 1)``, a string such as ``"0.5"`` or ``"50%"``, or ``"N:M"`` with
    ``1 <= N < M``.
    """
    if isinstance(sparsity, bool):
        raise WnbError(f"sparsity must be a fraction in [0, 1) or 'N:M' such as '2:4' (got {sparsity!r})")
    if isinstance(sparsity, str):
        text = sparsity.strip()
        nm = re.fullmatch(r"(\d+)\s*:\s*(\d+)", text)
        if nm:
            n, m = int(nm.group(1)), int(nm.group(2))
            if not 1 <= n < m:
                raise WnbError(f"N:M sparsity needs 1 <= N < M (n zeros in every m weights); got {sparsity!r}")
            return n / m, n, m
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise WnbError(f"sparsity {sparsity!r} is neither a fraction in [0, 1) nor 'N:M' such as '2:4'") from None
        sparsity = value
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise WnbError(f"sparsity must be a fraction in [0, 1) or 'N:M' such as '2:4' (got {sparsity!r})") from None
    if not 0 <= value < 1:  # also refuses NaN
        raise WnbError(f"sparsity must be in [0, 1) (the fraction of weights set to zero); got {sparsity!r}")
    return value, 0, 0


def sparsity_label(sparsity) -> str:
    """A short label: ``"50%"`` or ``"2:4"``."""
    fraction, n, m = parse_sparsity(sparsity)
    return f"{n}:{m}" if m else f"{100 * fraction:g}%"


def check_method(method: str) -> str:
    if method not in METHODS:
        raise WnbError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def check_nm(m: int, columns: int, what: str = "the layer") -> None:
    if m and columns % m:
        raise WnbError(f"N:M sparsity with M = {m} needs the input width to be a multiple of {m}, "
                       f"but {what} has {columns} inputs")


def check_rows(neurons, n_rows: int) -> torch.Tensor | None:
    """Validate a neuron subset (indices or a boolean mask); return sorted unique indices, or None for all."""
    if neurons is None:
        return None
    idx = torch.as_tensor(neurons)
    if idx.numel() == 0 and idx.dim() <= 1:
        return torch.empty(0, dtype=torch.long)
    if idx.dtype == torch.bool:
        if idx.shape != (n_rows,):
            raise WnbError(f"a boolean neuron mask must have one entry per neuron ({n_rows}); got shape "
                           f"{tuple(idx.shape)}")
        return torch.nonzero(idx).flatten()
    if idx.dtype.is_floating_point or idx.dim() > 1:
        raise WnbError("neurons must be a 1-D list of integer neuron indices or a boolean mask")
    idx = idx.flatten().long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= n_rows):
        raise WnbError(f"neuron indices must be in [0, {n_rows}); got {idx.min().item()}..{idx.max().item()}")
    return torch.unique(idx)


def check_weight(weight: torch.Tensor, what: str = "the weight") -> torch.Tensor:
    """Refuse a weight pruning cannot use: complex (it would be pruned as its real part) or holding NaN or
    infinite values (SparseGPT spreads one over its row; magnitude keeps it)."""
    if weight.is_complex():
        raise WnbError(f"{what} is complex ({str(weight.dtype).removeprefix('torch.')}); pruning works on real "
                       "weights only (float32, float16, bfloat16)")
    finite = torch.isfinite(weight.detach())
    if not finite.all():
        bad = (~finite).nonzero()
        raise WnbError(f"{what} holds {bad.shape[0]:,} NaN or infinite value(s) (the first at [row, column] "
                       f"{bad[0].tolist()}); pruning needs finite weights: check how the model was loaded or changed")
    return weight


def count_of(fraction: float, total: int) -> int:
    return min(total, int(round(fraction * total)))


def as_inputs(inputs, columns: int) -> torch.Tensor:
    if inputs is None:
        raise WnbError("this pruning method needs calibration inputs of the layer ([tokens, d_in]); "
                       "capture them with wnb.capture(lm, [layer], calib)")
    inputs = getattr(inputs, "inputs", inputs)  # an Activations object works too
    if inputs is None:
        raise WnbError("the activations hold no inputs; capture with inputs=True")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.shape[-1] != columns:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise WnbError(f"inputs must be [tokens, {columns}] to match the weight's input width; got {shape}")
    inputs = inputs.reshape(-1, columns)
    if inputs.shape[0] == 0:
        raise WnbError("no calibration tokens were given")
    return inputs


def sparsity_value(label: str) -> float:
    """The fraction of zeros of a sparsity label (``"50%"`` → 0.5, ``"2:4"`` → 0.5)."""

    return parse_sparsity(label)[0]
