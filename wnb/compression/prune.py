"""Pruning one weight, off the model: magnitude, Wanda or SparseGPT at a sparsity or N:M, optionally on
a subset of rows and with the kept weights quantized.

    w = wnb.prune_weight(weight, inputs, method="sparsegpt", sparsity=0.5)"""
from __future__ import annotations

import torch

from wnb.compression.masks import magnitude_mask, wanda_mask
from wnb.compression.quantize import check_quant, fit_grid, quantize
from wnb.compression.sparsegpt import SparseGPT
from wnb.compression.sparsity import (
    as_inputs,
    check_method,
    check_nm,
    check_rows,
    check_weight,
    parse_sparsity,
)
from wnb.core.checks import check_float, check_int
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, layer_weight
from wnb.model.lm import require_local
from wnb.scoring.selection import select_neurons


def prune_weight(weight: torch.Tensor, inputs=None, method: str = "sparsegpt", sparsity=0.5, neurons=None,
                 blocksize: int = 128, percdamp: float = 0.01, bits: int | None = None,
                 group_size: int | None = None) -> torch.Tensor:
    """Return a pruned copy ``[out, in]`` (float32, on the weight's device) of an ``[out, in]`` weight.

    ``inputs [tokens, in]`` are the layer's calibration inputs (needed by Wanda and SparseGPT).
    ``neurons`` (indices or a boolean mask) restricts pruning to those rows; every other row is
    returned unchanged, bit for bit. ``blocksize`` and ``percdamp`` are SparseGPT's.

    ``bits`` (2 to 8) quantizes the pruned rows too, on a min-max grid per row (``group_size``: per
    group of that many columns; see :mod:`wnb.compression.quantize`): SparseGPT inside its sweep, propagating the
    quantization error (:meth:`SparseGPT.prune`); Wanda and magnitude by rounding the masked weights to
    the nearest point of the grid fitted on the dense rows (zeros stay zeros).

    A complex weight, or one holding NaN or infinite values, is refused (WnbError), as by every pruning
    method (:class:`SparseGPT`, :func:`prune_layer`, :func:`pruned`, the experts of Sparse Expansion).
    """

    check_method(method)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise WnbError("weight must be a 2-D [out, in] tensor (use wnb.layer_weight(lm, name))")
    check_weight(weight)
    percdamp = check_float(percdamp, "percdamp", 0)
    blocksize = check_int(blocksize, "blocksize")
    _, n, m = parse_sparsity(sparsity)
    check_nm(m, weight.shape[1], "the weight")
    bits, group_size = check_quant(bits, group_size, weight.shape[1])
    rows = check_rows(neurons, weight.shape[0])
    if method != "magnitude":
        inputs = as_inputs(inputs, weight.shape[1])
    if method == "sparsegpt":
        sgpt = SparseGPT(weight)
        sgpt.add_batch(inputs)
        return sgpt.prune(sparsity, blocksize=blocksize, percdamp=percdamp, rows=rows, bits=bits,
                          group_size=group_size)
    return masked(weight, rows, lambda part: magnitude_mask(part, sparsity) if method == "magnitude"
                   else wanda_mask(part, inputs, sparsity), bits=bits, group_size=group_size)


def masked(weight: torch.Tensor, rows, mask_of, bits: int | None = None, group_size: int | None = None) -> torch.Tensor:
    """A float32 copy of ``weight`` with ``mask_of(rows of it)`` zeroed in those rows (all if None); with
    ``bits``, those rows then rounded to the nearest point of the grid fitted on their dense values."""
    out = weight.detach().to(torch.float32).clone()
    part = out if rows is None else out[rows]
    if part.numel() == 0:
        return out
    if bits is None:
        part = part.masked_fill(mask_of(part), 0)
    else:
        mask = mask_of(part)
        part = quantize(part.masked_fill(mask, 0), bits, group_size,
                        grid=fit_grid(part, bits, group_size)).masked_fill_(mask, 0)
    if rows is None:
        return part
    out[rows] = part
    return out


def prune_layer(lm, layer: str, acts, method: str = "sparsegpt", sparsity=0.5, neurons=None,
                fraction: float = 0.03, seed: int = 0, bits: int | None = None, group_size: int | None = None,
                **kw) -> torch.Tensor:
    """Pruned ``[out, in]`` weight of one layer from captured activations (``wnb.tracing.capture``); the model is
    not changed. ``neurons`` may be indices, a boolean mask or a selection criterion (see
    :func:`select_neurons`, which then uses the captured outputs). ``bits`` and ``group_size``
    quantize as well (:func:`prune_weight`)."""

    require_local(lm, "pruning")
    check_method(method)
    (layer,) = check_layers(lm, [layer])
    if layer not in acts:
        raise WnbError(f"layer {layer!r} was not captured; captured: {', '.join(acts) or 'none'}")
    act = acts[layer]
    weight = check_weight(layer_weight(lm, layer).detach(), f"the weight of {layer}")
    check_quant(bits, group_size, weight.shape[1], layer)
    if isinstance(neurons, str):
        if act.outputs is None and neurons in ("wd", "mean", "variance"):
            raise WnbError(f"selecting neurons by {neurons!r} needs the layer's outputs; capture with outputs=True")
        neurons = select_neurons(neurons, outputs=act.outputs, weight=weight, fraction=fraction, seed=seed)
    return prune_weight(weight, act.inputs, method, sparsity, neurons=neurons, bits=bits, group_size=group_size, **kw)
