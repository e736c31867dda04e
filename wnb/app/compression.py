"""Compression for the app: one layer pruned, perplexity sweeps and the Fig. 3 ablation, the layer study of
Sparse Expansion and its tables, the expansion's perplexity and downstream tasks; the cache keys the
command shares."""
from __future__ import annotations

import pandas as pd

from wnb.app.views import PruneView
from wnb.compression.expansion import RoutedLayer
from wnb.compression.prune import prune_layer
from wnb.compression.quantize import key_parts, quant_label
from wnb.compression.router import Router
from wnb.compression.sparsity import check_method, sparsity_label
from wnb.core import cache
from wnb.errors import WnbError
from wnb.experiments import layer_study as analysis
from wnb.experiments import sweeps
from wnb.experiments.layer_study import LayerStudy, expert_outputs, study_layer
from wnb.experiments.sweeps import expansion_sweep
from wnb.experiments.tasks import compare_tasks
from wnb.model.architectures import layer_bias, layer_outputs, layer_weight
from wnb.reading.per_expert import expert_contexts, expert_summary, tail_routing
from wnb.scoring.comparison import neuron_errors
from wnb.tracing.capture import Activations

# Experts of a whole-model expansion held at once in the app: stays inside Binder's 2 GB with the model.
APP_EXPERT_BYTES = 640 << 20


class Compression:
    """Pruning and Sparse Expansion, cached."""

    def prune_view(self, name: str, method: str = "sparsegpt", sparsity=0.5, progress: bool = True,
                   bits: int | None = None) -> PruneView:
        """Prune one layer with ``method`` at ``sparsity`` (wnb.prune_layer on its calibration capture; with
        ``bits``, the kept weights quantized too) and compare its held-out outputs with the dense ones
        (wnb.neuron_errors). Cached."""

        check_method(method)
        label = sparsity_label(sparsity)
        view = self.layer(name, progress)
        acts = {view.name: Activations(view.inputs, view.outputs)}
        key = self.key(layer=view.name, method=method, sparsity=label, **key_parts(bits))
        weight = self._cached("pruned_weight", key,
                              lambda: prune_layer(self.lm, view.name, acts, method=method, sparsity=sparsity,
                                                  bits=bits),
                              enabled=self.use_cache)
        x = self.held_inputs(view.name, progress)
        bias = layer_bias(self.lm, view.name)
        dense = layer_outputs(x, layer_weight(self.lm, view.name).detach(), bias)
        pruned = layer_outputs(x, weight, bias)
        errors = neuron_errors(dense, pruned).merge(view.table[["neuron", "rank", "wd", "mean", "variance"]],
                                                    on="neuron").sort_values("rank").reset_index(drop=True)
        if bits is not None:
            label = f"{label} + {quant_label(bits)}"
        return PruneView(view.name, method, label, dense, pruned, errors)

    def sweep(self, methods, sparsities, layers, progress: bool = True, true_sequential: bool = True,
              on_run=None, bits: int | None = None) -> pd.DataFrame:
        """Perplexity vs sparsity of every method (wnb.sweep on ``layers``; ``bits`` quantizes too), cached."""

        labels = [sparsity_label(s) for s in sparsities]
        return self._cached("sweep", self.sweep_key(methods, sparsities, layers, true_sequential, bits),
                            lambda: sweeps.sweep(self.lm, self.calib, self.held_out, methods=tuple(methods),
                                                   sparsities=tuple(labels), layers=list(layers), progress=progress,
                                                   true_sequential=true_sequential, on_run=on_run, bits=bits),
                            enabled=self.use_cache)

    def sweep_key(self, methods, sparsities, layers, true_sequential: bool = True, bits=None) -> str:

        return self.key(methods=list(methods), sparsities=[sparsity_label(s) for s in sparsities],
                        layers=list(layers), held_out=self.held_out, true_sequential=true_sequential,
                        **key_parts(bits))

    def ablation(self, layers, fraction: float = 0.03, sparsity=0.9, method: str = "sparsegpt",
                 progress: bool = True, true_sequential: bool = True, on_run=None) -> pd.DataFrame:
        """The paper's Fig. 3 (wnb.ablation on ``layers``), cached."""

        return self._cached("ablation", self.ablation_key(layers, fraction, sparsity, method, true_sequential),
                            lambda: sweeps.ablation(self.lm, self.calib, self.held_out, fraction=fraction,
                                                      sparsity=sparsity, method=method, layers=list(layers),
                                                      seed=self.seed, progress=progress,
                                                      true_sequential=true_sequential, on_run=on_run),
                            enabled=self.use_cache)

    def ablation_key(self, layers, fraction, sparsity, method, true_sequential: bool = True) -> str:

        return self.key(layers=list(layers), fraction=fraction, sparsity=sparsity_label(sparsity), method=method,
                        held_out=self.held_out, true_sequential=true_sequential)

    def study(self, name: str, n_experts: int = 16, sparsity=0.5, progress: bool = True, bits: int | None = None):
        """Dense vs SparseGPT vs Sparse Expansion of one layer (wnb.study_layer; ``bits`` quantizes both), cached."""

        name = self.check_layer(name)
        key = self.key(layer=name, n_experts=int(n_experts), sparsity=sparsity_label(sparsity), held_out=self.held_out,
                       **key_parts(bits))
        if self._study is not None and self._study[0] == key:
            return self._study[1]
        self._study = None
        stored = self._cached("layer_study", key,
                              lambda: _study_tensors(study_layer(self.lm, name, self.calib, self.held_out,
                                                                 n_experts=int(n_experts), sparsity=sparsity,
                                                                 seed=self.seed, progress=progress, bits=bits)),
                              enabled=self.use_cache)
        study = _study_from_tensors(stored)
        if self._dense_now():
            self._study = (key, study)
        return study

    def expansion_analysis(self, name: str, n_experts: int = 16, sparsity=0.5, progress: bool = True,
                           bits: int | None = None) -> dict:
        """The layer study's tables, cached: ``ri`` (wnb.relative_improvement), ``regression``
        (wnb.ri_regression), ``shares`` (wnb.token_shares) and ``change`` (wnb.entanglement_change of
        the layer's Wasserstein neurons, WD and MD before vs after)."""

        view = self.layer(name, progress)
        study = self.study(view.name, n_experts, sparsity, progress, bits)

        def compute():
            ri = analysis.relative_improvement(study)
            return {"ri": ri, "regression": analysis.ri_regression(ri), "shares": analysis.token_shares(study),
                    "change": analysis.entanglement_change(study, neurons=view.wasserstein_neurons(),
                                                           n_pairs=self.n_pairs, seed=self.seed)}

        key = self.key(layer=view.name, n_experts=int(n_experts), sparsity=sparsity_label(sparsity),
                       held_out=self.held_out, n_pairs=self.n_pairs, **key_parts(bits))
        return cache.cached("expansion_analysis", key, compute, enabled=self.use_cache)

    def expert_view(self, name: str, neuron: int, n_experts: int = 16, sparsity=0.5, progress: bool = True,
                    bits: int | None = None) -> dict:
        """One neuron of the layer study, expert by expert, cached: ``outputs`` (dense, SparseGPT and expansion
        outputs on every held-out token with its expert, :func:`wnb.expert_outputs`), ``tail_routing``
        (whether the router separates its tails, against random groups of the same sizes),
        ``expert_summary`` and ``expert_contexts`` (each expert's highest and lowest held-out contexts)."""
        study = self.study(name, n_experts, sparsity, progress, bits)
        if not 0 <= int(neuron) < study.weight.shape[0]:
            raise WnbError(f"neuron must be between 0 and {study.weight.shape[0] - 1} (got {neuron})")

        def compute():
            return {"outputs": expert_outputs(study, int(neuron)),
                    "tail_routing": tail_routing(study, int(neuron), seed=self.seed),
                    "expert_summary": expert_summary(study, int(neuron)),
                    "expert_contexts": expert_contexts(study, int(neuron), self.held_out, self.lm.tokenizer, k=3)}

        key = self.key(layer=study.layer, neuron=int(neuron), n_experts=int(n_experts),
                       sparsity=sparsity_label(sparsity), held_out=self.held_out, **key_parts(bits))
        return self._cached("expert_view", key, compute)

    def expansion_perplexity(self, layers, n_experts: int = 16, sparsity=0.5, progress: bool = True,
                             true_sequential: bool = True, on_run=None, bits: int | None = None) -> pd.DataFrame:
        """Perplexity of dense, SparseGPT (k = 1) and Sparse Expansion with ``n_experts`` on ``layers``
        (wnb.expansion_sweep), cached. The experts held at once are capped at ``APP_EXPERT_BYTES``."""

        key = self.expansion_key(layers, n_experts, sparsity, true_sequential, bits)
        return self._cached("expansion_perplexity", key,
                            lambda: expansion_sweep(self.lm, self.calib, self.held_out, n_experts=expert_counts(n_experts),
                                                    sparsities=(sparsity,), layers=list(layers), seed=self.seed,
                                                    max_bytes=APP_EXPERT_BYTES, progress=progress,
                                                    true_sequential=true_sequential, on_run=on_run, bits=bits),
                            enabled=self.use_cache)

    def expansion_key(self, layers, n_experts, sparsity, true_sequential: bool = True, bits=None,
                       group_size=None, **extra) -> str:
        """The key of :meth:`expansion_perplexity` (``wnb expand`` stores its table under it too, with
        ``extra`` parts such as a ``pca_factor`` other than the app's)."""

        return self.key(layers=list(layers), n_experts=list(expert_counts(n_experts)),
                        sparsity=sparsity_label(sparsity), held_out=self.held_out, true_sequential=true_sequential,
                        **extra, **key_parts(bits, group_size))

    def task_scores(self, tasks, layers, n_experts: int = 16, sparsity=0.5, bits: int | None = None,
                    limit: int | None = 100, progress: bool = True, on_run=None) -> pd.DataFrame:
        """Downstream task scores of the dense, SparseGPT and Sparse Expansion models on ``layers``
        (:func:`wnb.experiments.tasks.compare_tasks`; the experts held at once capped at ``APP_EXPERT_BYTES``), cached.
        ``wnb_agreement`` (wnb's minimal pairs) needs no network; lm-eval's standard tasks do."""

        tasks = list(tasks)
        key = self.key(tasks=tasks, layers=list(layers), n_experts=int(n_experts), sparsity=sparsity_label(sparsity),
                       limit=limit, **key_parts(bits))
        return (self._cached(
            "task_scores", key,
            lambda: (compare_tasks(self.lm, self.calib, tasks, list(layers), n_experts, sparsity, bits,
                                              limit=limit, seed=self.seed, progress=progress,
                                              on_run=on_run, max_bytes=APP_EXPERT_BYTES)),
            enabled=self.use_cache))


def expert_counts(n_experts) -> tuple[int, ...]:
    """The expert counts an expansion perplexity compares: SparseGPT alone (k = 1) and ``n_experts``."""
    return (1,) if int(n_experts) == 1 else (1, int(n_experts))


def _study_tensors(study) -> dict:
    """A LayerStudy as plain tensors and numbers (its router holds a weak reference torch.save refuses)."""
    routed, router = study.expansion, study.expansion.router
    return {"layer": study.layer, "weight": study.weight, "bias": study.bias, "calib_inputs": study.calib_inputs,
            "held_inputs": study.held_inputs, "sparsegpt": study.sparsegpt, "sparsity": study.sparsity,
            "mean": router.mean, "components": router.components, "centroids": router.centroids,
            "experts": routed.experts, "expert_bias": routed.bias, "tokens": routed.tokens, "damping": routed.damping}


def _study_from_tensors(d: dict):

    router = Router(d["mean"], d["components"], d["centroids"])
    routed = RoutedLayer(router, d["experts"], d["expert_bias"], d["tokens"], d["damping"])
    return LayerStudy(d["layer"], d["weight"], d["bias"], d["calib_inputs"], d["held_inputs"], d["sparsegpt"],
                      routed, d["sparsity"])
