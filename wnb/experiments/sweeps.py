"""Whole-model runs compared by held-out perplexity: every pruning method at every sparsity (paper
Fig. 9), and the paper's Fig. 3 ablation (a few neurons of every layer sparsified, chosen by WD, at
random, by mean, variance or weight norm)."""
from __future__ import annotations

import math
import time

import pandas as pd
import torch
from tqdm.auto import tqdm

from wnb.compression.expansion import check_expansion, expanded
from wnb.compression.pruned import pruned
from wnb.compression.quantize import check_quant, key_parts
from wnb.compression.sparsity import check_method, sparsity_label
from wnb.core.inference import perplexity_of
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import (
    check_layers,
    ffn_layers,
    layer_bias,
    layer_outputs,
    layer_weight,
)
from wnb.scoring.selection import CRITERIA
from wnb.tracing.nll import perplexity_interval, window_nll


def sweep(lm, calib, held_out, methods=("magnitude", "wanda", "sparsegpt"), sparsities=(0.5, 0.7, "2:4"),
          layers=None, dense: bool = True, batch_size: int = 8, progress: bool = True, on_run=None, **prune_kw):
    """Perplexity on ``held_out`` after whole-model pruning with every method at every sparsity.

    Returns a tidy DataFrame: ``method, sparsity, perplexity, ppl_low, ppl_high, prune_seconds,
    eval_seconds`` (plus a ``dense`` row first unless ``dense=False``). The model is dense again
    afterwards. ``on_run(index, total, label)`` is called before each run (e.g. :meth:`wnb.core.jobs.Job.begin`).
    Other keywords go to :func:`wnb.pruned`; with ``bits=`` (joint quantization) the pruned rows get a
    ``bits`` column (and ``group_size`` with groups).
    """


    for method in methods:
        check_method(method)
    quant = key_parts(*check_quant(prune_kw.get("bits"), prune_kw.get("group_size")))
    labels = [sparsity_label(s) for s in sparsities]
    held_out = check_windows(held_out, lm, min_len=2)
    rows = []
    report = run_counter(on_run, int(dense) + len(methods) * len(labels))
    if dense:
        report("dense")
        start = time.perf_counter()
        ppl = perplexity_interval(lm, held_out, batch_size=batch_size, progress=progress)
        rows.append({"method": "dense", "sparsity": "0%", **ppl, "prune_seconds": 0.0,
                     "eval_seconds": time.perf_counter() - start})
    for method in methods:
        for sparsity, label in zip(sparsities, labels):
            report(f"{method} {label}")
            rows.append(_pruned_perplexity(lm, calib, held_out, batch_size, progress,
                                           {"method": method, "sparsity": label, **quant},
                                           method=method, sparsity=sparsity, layers=layers, **prune_kw))
    return pd.DataFrame(rows)


def ablation(lm, calib, held_out, criteria=("wd", "random", "mean", "variance", "weight_norm"),
             fraction: float = 0.03, sparsity=0.9, method: str = "sparsegpt", layers=None, seed: int = 0,
             dense: bool = True, batch_size: int = 8, progress: bool = True, on_run=None, on_nll=None,
             **prune_kw):
    """The paper's Fig. 3: prune ``fraction`` of the neurons of every FFN layer (or ``layers``) at
    ``sparsity``, choosing them by each criterion, and measure perplexity on ``held_out``.

    Returns a DataFrame ``criterion, fraction, sparsity, perplexity, prune_seconds, eval_seconds``.
    ``on_nll(criterion, nll)`` receives each run's mean NLL per held-out window (``[n_windows]``; ``"dense"``
    first), for paired comparisons over the same windows (:func:`wnb.core.inference.nll_difference`).
    """


    for criterion in criteria:
        if criterion not in CRITERIA:
            raise WnbError(f"unknown neuron selection {criterion!r}; choose from {', '.join(CRITERIA)}")
    label = sparsity_label(sparsity)
    held_out = check_windows(held_out, lm, min_len=2)
    rows = []
    report = run_counter(on_run, int(dense) + len(criteria))
    if dense:
        report("dense")
        start = time.perf_counter()
        ppl = _measured(lm, held_out, batch_size, progress, None if on_nll is None else
                        (lambda nll: on_nll("dense", nll)))
        rows.append({"criterion": "dense", "fraction": 0.0, "sparsity": "0%", **ppl,
                     "prune_seconds": 0.0, "eval_seconds": time.perf_counter() - start})
    for criterion in criteria:
        report(f"{fraction:.0%} of the neurons by {criterion}, {label}")
        rows.append(_pruned_perplexity(lm, calib, held_out, batch_size, progress,
                                       {"criterion": criterion, "fraction": fraction, "sparsity": label},
                                       on_nll=None if on_nll is None else (lambda nll, c=criterion: on_nll(c, nll)),
                                       method=method, sparsity=sparsity, layers=layers, neurons=criterion,
                                       fraction=fraction, seed=seed, **prune_kw))
    return pd.DataFrame(rows)


def run_counter(on_run, total: int):
    """A function ``report(label)`` that calls ``on_run(index, total, label)`` with the next index."""
    count = iter(range(total))
    return (lambda label: on_run(next(count), total, label)) if on_run is not None else (lambda label: None)


def _pruned_perplexity(lm, calib, held_out, batch_size, progress, row: dict, on_nll=None, **prune_kw) -> dict:

    start = time.perf_counter()
    with pruned(lm, calib=calib, batch_size=batch_size, progress=progress, **prune_kw):
        middle = time.perf_counter()
        ppl = _measured(lm, held_out, batch_size, progress, on_nll)
    return {**row, **ppl, "prune_seconds": middle - start, "eval_seconds": time.perf_counter() - middle}


def _measured(lm, held_out, batch_size, progress, on_nll=None) -> dict:
    """The perplexity with its interval; with ``on_nll``, from the NLL per window it is handed too."""
    if on_nll is None:
        return perplexity_interval(lm, held_out, batch_size=batch_size, progress=progress)
    nll = window_nll(lm, held_out, batch_size, progress)
    on_nll(nll)
    return perplexity_of(nll)


class _ErrorMeter:
    """Forward hook on a routed layer: accumulates ‖y − y_dense‖² and ‖y_dense‖² over the tokens it sees."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight.detach().float(), None if bias is None else bias.detach().float()
        self.err = self.ref = 0.0

    def __call__(self, module, args, output):
        x = args[0].reshape(-1, args[0].shape[-1]).float()
        dense = layer_outputs(x, self.weight, self.bias)
        self.err += float((output.reshape(dense.shape).float() - dense).square().sum())
        self.ref += float(dense.square().sum())

    @property
    def relative(self) -> float:
        return math.sqrt(self.err / self.ref) if self.ref > 0 else float("nan")


def expansion_sweep(lm, calib, held_out, n_experts=(1, 2, 4, 8, 16), sparsities=(0.5,), layers=None,
                    error_layer: str | None = None, dense: bool = True, batch_size: int = 8,
                    progress: bool = True, on_run=None, **expand_kw) -> pd.DataFrame:
    """Whole-model Sparse Expansion for every ``k`` in ``n_experts`` at every sparsity: held-out perplexity
    and the held-out relative output error ``‖y − y_dense‖ / ‖y_dense‖`` of ``error_layer`` (default: the
    first expanded layer) on the inputs it receives in the expanded model. ``k = 1`` is plain SparseGPT.

    Returns ``method, n_experts, sparsity, perplexity, layer_error, build_seconds, eval_seconds`` (plus a
    dense row first unless ``dense=False``). Other keywords go to :func:`wnb.expanded`; with ``bits=``
    (joint quantization) the expanded rows get a ``bits`` column (and ``group_size`` with groups).
    """

    held_out = check_windows(held_out, lm, min_len=2)
    layers = check_layers(lm, ffn_layers(lm) if layers is None else layers)
    error_layer = layers[0] if error_layer is None else error_layer
    if error_layer not in layers:
        raise WnbError(f"error_layer {error_layer!r} is not among the expanded layers")
    for k in n_experts:
        for s in sparsities:
            check_expansion(lm, k, s, calib, layers, expand_kw.get("pca_factor", 32), expand_kw.get("max_bytes"),
                            expand_kw.get("bits"), expand_kw.get("group_size"))
    quant = key_parts(*check_quant(expand_kw.get("bits"), expand_kw.get("group_size")))

    rows = []
    report = run_counter(on_run, int(dense) + len(sparsities) * len(n_experts))
    if dense:
        report("dense")
        start = time.perf_counter()
        ppl = perplexity_interval(lm, held_out, batch_size=batch_size, progress=progress)
        rows.append({"method": "dense", "n_experts": 0, "sparsity": "0%", **ppl, "layer_error": 0.0,
                     "build_seconds": 0.0, "eval_seconds": time.perf_counter() - start})
    weight, bias = layer_weight(lm, error_layer).detach().clone(), layer_bias(lm, error_layer)
    bias = None if bias is None else bias.detach().clone()
    runs = [(s, k) for s in sparsities for k in n_experts]
    for s, k in tqdm(runs, desc="expansion sweep", disable=not progress, leave=False):
        report(f"SparseGPT {sparsity_label(s)}" if k == 1 else f"{k} experts at {sparsity_label(s)}")
        start = time.perf_counter()
        with expanded(lm, k, s, calib, layers=layers, batch_size=batch_size, progress=progress, **expand_kw) as exp:
            built = time.perf_counter()
            meter = _ErrorMeter(weight, bias)
            hook = exp.layers[error_layer].register_forward_hook(meter)
            try:
                ppl = perplexity_interval(lm, held_out, batch_size=batch_size, progress=progress)
            finally:
                hook.remove()
        rows.append({"method": "sparsegpt" if k == 1 else "expansion", "n_experts": k,
                     "sparsity": sparsity_label(s), **quant, **ppl, "layer_error": meter.relative,
                     "build_seconds": built - start, "eval_seconds": time.perf_counter() - built})
    return pd.DataFrame(rows)
