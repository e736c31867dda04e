"""Pruning the model in place for a ``with`` block, block by block (each calibrated on the blocks before
it as already pruned), with the dense weights restored bit for bit on exit.

    with wnb.pruned(lm, method="wanda", sparsity="2:4", calib=calib):
        ppl = wnb.perplexity(lm, held_out)"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from wnb.compression.masks import (
    ColumnSquares,
    mask_by_scores,
    wanda_scores_from_squares,
)
from wnb.compression.prune import masked, prune_weight
from wnb.compression.quantize import check_quant, quant_label
from wnb.compression.sparsegpt import SparseGPT
from wnb.compression.sparsity import (
    check_method,
    check_nm,
    check_rows,
    check_weight,
    parse_sparsity,
    sparsity_label,
)
from wnb.core.checks import check_float, check_int
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import (
    check_layers,
    check_untied,
    ffn_layers,
    forward_order,
    layer_bias,
    layer_outputs,
    layer_weight,
    module,
    set_layer_weight,
)
from wnb.model.lm import require_local
from wnb.model.state import changed
from wnb.scoring.selection import CRITERIA, select_neurons
from wnb.tracing.sequential import walk

# ---------------------------------------------------------------- arguments


# ---------------------------------------------------------------- masks


# ---------------------------------------------------------------- SparseGPT


# ---------------------------------------------------------------- one layer


# ---------------------------------------------------------------- neuron subsets (paper Fig. 3)


# ---------------------------------------------------------------- whole model

@dataclass
class LayerReport:
    """What pruning did to one layer."""

    layer: str
    method: str
    sparsity: str
    zeros: float          # fraction of the layer's weights that are zero after pruning
    neurons: int          # rows pruned
    damping: float | None  # SparseGPT: fraction of mean(diag H) added (raised from percdamp if needed)
    seconds: float
    bits: int | None = None        # quantization of the pruned rows (None: not quantized)
    group_size: int | None = None  # columns per quantization grid (None: one grid per row)


class PruneReport(dict):
    """``{layer: LayerReport}`` in pruning order; ``table()`` gives a DataFrame."""

    def table(self):
        """One row per layer; the ``bits`` and ``group_size`` columns only when some layer was quantized."""

        frame = pd.DataFrame([vars(r) for r in self.values()])
        for col in ("bits", "group_size"):
            if col in frame and frame[col].isna().all():
                frame = frame.drop(columns=col)
        return frame


def _plan_neurons(lm, layers, neurons):
    """Validate ``neurons`` for :func:`pruned`: None, a criterion name, or ``{layer: indices}``."""

    if neurons is None or isinstance(neurons, str):
        if isinstance(neurons, str) and neurons not in CRITERIA:
            raise WnbError(f"unknown neuron selection {neurons!r}; choose one of {', '.join(CRITERIA)} "
                           "or pass {layer: indices}")
        return neurons
    if not isinstance(neurons, dict):
        raise WnbError("neurons must be None (all rows), a selection criterion "
                       f"({', '.join(CRITERIA)}) or a dict {{layer: indices}}")
    missing = [name for name in layers if name not in neurons]
    if missing:
        raise WnbError(f"neurons has no entry for layer(s) {', '.join(missing[:3])}; give one per pruned layer "
                       "or pass layers= to prune only the layers in the dict")
    return {name: check_rows(neurons[name], layer_weight(lm, name).shape[0]) for name in layers}


def streams_inputs(method: str, neurons=None) -> bool:
    """Whether whole-model pruning accumulates what the method needs of the inputs batch by batch
    (SparseGPT's Hessians, Wanda's column norms) instead of keeping each block's calibration inputs:
    it does, unless neurons are chosen by a criterion on the layer's outputs."""
    return method in ("sparsegpt", "wanda") and not isinstance(neurons, str)


class _Accumulators:
    """Per-layer statistics of the inputs fed batch by batch during a walk (``walk(on_inputs=...)``):
    SparseGPT Hessians or Wanda column sums of squares, so no block's calibration inputs are ever
    kept whole. Layers fed the very same tensor (Llama's gate and up projections) share one."""

    def __init__(self, lm, method: str):
        self.lm = lm
        self.method = method
        self.clear()

    def clear(self) -> None:
        self.acc: dict[str, SparseGPT | ColumnSquares] = {}
        self.alias: dict[str, str] = {}
        self._last: tuple[torch.Tensor, str] | None = None

    def __call__(self, name: str, x: torch.Tensor) -> None:

        if name not in self.acc and name not in self.alias:
            last = self._last
            if (last is not None and last[0].data_ptr() == x.data_ptr() and last[0].shape == x.shape
                    and torch.equal(last[0], x)):
                self.alias[name] = last[1]
            else:
                weight = layer_weight(self.lm, name).detach()
                self.acc[name] = (SparseGPT(weight) if self.method == "sparsegpt"
                                  else ColumnSquares(weight.shape[1], weight.device))
        if name in self.acc:
            self.acc[name].add_batch(x)
        self._last = (x, self.alias.get(name, name))

    def __getitem__(self, name: str) -> SparseGPT | ColumnSquares:
        return self.acc[self.alias.get(name, name)]



@contextmanager
def pruned(lm, method: str = "sparsegpt", sparsity=0.5, calib=None, layers=None, neurons=None,
           fraction: float = 0.03, seed: int = 0, blocksize: int = 128, percdamp: float = 0.01,
           batch_size: int = 8, progress: bool = True, keep_inputs: bool = False, true_sequential: bool = True,
           bits: int | None = None, group_size: int | None = None):
    """Prune layers of ``lm`` (default: every FFN layer) for the duration of a ``with`` block.

    ``bits`` (2 to 8) also quantizes the pruned weights, per output channel or per ``group_size``
    columns (:func:`prune_weight`; SparseGPT propagates the quantization error inside its sweep, Wanda
    and magnitude round to nearest); ``None`` (default) leaves them in full precision.

    Pruning is sequential: the calibration inputs of block ``l`` are computed through the blocks
    ``< l`` as already pruned (``wnb.walk``), and within a block (``true_sequential=True``) through
    its layers already pruned: down_proj is calibrated on the pruned gate and up projections' outputs.
    ``true_sequential=False`` calibrates all of a block's layers on the block as it entered (the
    reference SparseGPT and Wanda code; llm-compressor). ``neurons`` restricts pruning to rows: ``{layer: indices}``,
    or a criterion of :func:`select_neurons` applied per layer to its calibration outputs with
    ``fraction`` and ``seed`` (random draws differ per layer). On exit, also after an exception or a
    KeyboardInterrupt, every dense weight is restored bit for bit. Yields a :class:`PruneReport`.

    SparseGPT and Wanda accumulate what they need of each layer's inputs (Hessian, column norms) batch
    by batch while its block runs, so memory does not grow with the number of calibration tokens;
    neuron criteria and ``keep_inputs=True`` keep a block's calibration inputs in CPU memory instead
    (same result up to summation order).
    """

    run = _checked_run(lm, method, sparsity, calib, layers, neurons, fraction, blocksize, percdamp, batch_size,
                       bits, group_size)
    layers = run["layers"]
    with changed(lm, f"pruned ({run['desc']})"):  # holds the model; is_dense(lm) is False until restored
        dense = {name: module(lm, name).weight.detach().to("cpu", copy=True) for name in layers}
        report = PruneReport()
        bar = tqdm(total=len(layers), desc=run["desc"], disable=not progress, leave=False)
        try:
            opts = dict(method=method, sparsity=sparsity, label=run["label"], plan=run["plan"], fraction=fraction,
                        seed=seed, blocksize=run["blocksize"], percdamp=run["percdamp"], report=report, bar=bar,
                        **run["quant"])
            if run["needs_walk"]:
                stats = _Accumulators(lm, method) if streams_inputs(method, run["plan"]) and not keep_inputs else None
                for _, inputs in walk(lm, run["calib"], layers, batch_size=run["batch_size"], progress=False,
                                      on_inputs=stats, true_sequential=true_sequential):
                    _prune_block(lm, inputs, stats=stats, **opts)
                    if stats is not None:
                        stats.clear()
            else:
                for name in layers:
                    _prune_block(lm, {name: None}, **opts)
            bar.close()
            yield report
        finally:
            bar.close()
            with torch.no_grad():
                for name, weight in dense.items():
                    module(lm, name).weight.copy_(weight)


def _checked_run(lm, method, sparsity, calib, layers, neurons, fraction, blocksize, percdamp, batch_size, bits,
                 group_size) -> dict:
    """Everything :func:`pruned` is asked, checked before any work: the layers in forward order, the neuron
    plan, the windows (when the method needs a calibration walk), the numbers, the quantization."""
    require_local(lm, "pruning")
    check_method(method)
    _, _, m = parse_sparsity(sparsity)
    layers = check_layers(lm, list(neurons) if isinstance(neurons, dict) and layers is None
                          else ffn_layers(lm) if layers is None else layers)
    for name in layers:
        check_nm(m, layer_weight(lm, name).shape[1], name)
        bits, group_size = check_quant(bits, group_size, layer_weight(lm, name).shape[1], name)
        check_weight(layer_weight(lm, name), f"the weight of {name}")
    bits, group_size = check_quant(bits, group_size)
    check_untied(lm, layers)
    plan = _plan_neurons(lm, layers, neurons)
    needs_walk = method != "magnitude" or isinstance(plan, str)
    if needs_walk:
        if calib is None:
            raise WnbError(f"{method} pruning{' with neuron selection' if isinstance(plan, str) else ''} needs "
                           "calibration windows: pass calib= (from wnb.token_windows)")
        calib = check_windows(calib, lm)
    if isinstance(plan, str) and not 0 < fraction <= 1:
        raise WnbError(f"fraction must be in (0, 1] (got {fraction})")
    blocksize = check_int(blocksize, "blocksize")
    if m and blocksize % m:
        raise WnbError(f"blocksize must be a positive multiple of M (got {blocksize})")
    label = sparsity_label(sparsity)
    quant = {"bits": bits, "group_size": group_size} if bits is not None else {}
    return {"layers": layers, "plan": plan, "needs_walk": needs_walk, "calib": calib, "blocksize": blocksize,
            "percdamp": check_float(percdamp, "percdamp", 0), "batch_size": check_int(batch_size, "batch_size"),
            "label": label, "quant": quant,
            "desc": f"prune {method} {label}" + (f" {quant_label(bits, group_size)}" if bits is not None else "")}


def _prune_block(lm, inputs: dict, method, sparsity, label, plan, fraction, seed, blocksize, percdamp,
                 report, bar, stats: _Accumulators | None = None, bits: int | None = None,
                 group_size: int | None = None) -> None:
    """Prune the layers of one block given their calibration inputs (or the statistics of them
    accumulated during the walk, ``stats``); write the weights into the model."""

    shared: list[tuple[torch.Tensor, SparseGPT]] = []
    for name, x in inputs.items():
        start = time.perf_counter()
        weight = layer_weight(lm, name).detach()
        rows = _rows_for(lm, name, x, weight, plan, fraction, seed)
        damping = None
        if method == "sparsegpt":
            sgpt = SparseGPT(weight)
            same = (stats[name] if stats is not None else
                    next((s for xs, s in shared if xs.shape == x.shape and torch.equal(xs, x)), None))
            if same is None:  # gate_proj and up_proj see the same inputs: one Hessian for both
                sgpt.add_batch(x)
                shared.append((x, sgpt))
            else:
                sgpt.H, sgpt.nsamples = same.H, same.nsamples
            new = sgpt.prune(sparsity, blocksize=blocksize, percdamp=percdamp, rows=rows, bits=bits,
                             group_size=group_size)
            damping = sgpt.damping
        elif method == "wanda" and stats is not None:
            new = masked(weight, rows, lambda part: mask_by_scores(part, wanda_scores_from_squares(part, stats[name].sums),
                                                                 sparsity), bits=bits, group_size=group_size)
        else:
            new = prune_weight(weight, x, method, sparsity, neurons=rows, bits=bits, group_size=group_size)
        set_layer_weight(lm, name, new)
        report[name] = LayerReport(layer=name, method=method, sparsity=label,
                                   zeros=(new == 0).double().mean().item(),
                                   neurons=weight.shape[0] if rows is None else rows.numel(),
                                   damping=damping, seconds=time.perf_counter() - start, bits=bits,
                                   group_size=group_size)
        bar.set_postfix_str(name, refresh=False)
        bar.update(1)


def _rows_for(lm, name, x, weight, plan, fraction, seed):
    if plan is None:
        return None
    if isinstance(plan, dict):
        return plan[name]

    outputs = None
    if plan in ("wd", "mean", "variance"):
        outputs = layer_outputs(x.to("cpu"), weight, layer_bias(lm, name))
    layer_seed = int(seed) * 1_000_003 + forward_order(lm).index(name)
    return select_neurons(plan, outputs=outputs, weight=weight, fraction=fraction, seed=layer_seed)
