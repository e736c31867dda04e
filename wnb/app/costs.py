"""What a job of the app will take before it starts: a rough time and the memory it holds beside the model
(from :mod:`wnb.app.estimates`), whether it is cached already, and whether it is large enough to ask first."""
from __future__ import annotations

from wnb.app import estimates
from wnb.app.compression import APP_EXPERT_BYTES, expert_counts
from wnb.compression.quantize import key_parts
from wnb.compression.sparsity import sparsity_label
from wnb.core import cache
from wnb.experiments.tasks import AGREEMENT_TASK
from wnb.model.architectures import block_of, layer_weight
from wnb.scoring.controls import TWIN_CONTROLS
from wnb.scoring.selection import CRITERIA, DEFAULT_CONTROLS
from wnb.tracing.capture import estimate_bytes

# A layer whose capture holds more outputs than this (tokens × neurons) is analysed only after the user
# confirms (lm_head: 49,152 neurons); the rough time per output comes from the neuron table on 2 cores.
LARGE_LAYER_OUTPUTS = 40_000_000
SECONDS_PER_OUTPUT = 1.5e-6
# Whole-model runs (sweeps, ablation, expansion perplexity) estimated above either also wait for confirmation.
LARGE_JOB_SECONDS = 300
LARGE_JOB_BYTES = 4 << 30


class Costs:
    """Estimates of every job, said before it starts."""

    def layer_cost(self, name: str) -> dict:
        """What analysing ``name`` will take: ``outputs`` (tokens × neurons), ``bytes`` of the capture,
        a rough ``seconds`` (ranking every neuron dominates), whether it is ``cached`` already, and
        ``large`` when its outputs pass ``LARGE_LAYER_OUTPUTS`` (the app then asks before it starts)."""

        name = self.check_layer(name)
        if self.use_cache and cache.entry_path("capture", self.key(layer=name)).exists():
            return {"cached": True, "large": False}  # known without loading the model
        tokens = self.calib.numel()
        d_out = layer_weight(self.lm, name).shape[0]
        return {"outputs": tokens * d_out, "bytes": estimate_bytes(self.lm, [name], tokens),
                "seconds": tokens * d_out * SECONDS_PER_OUTPUT, "neurons": d_out, "cached": False,
                "large": tokens * d_out > LARGE_LAYER_OUTPUTS}

    def sweep_cost(self, methods, sparsities, layers, true_sequential: bool = True, bits=None) -> dict:
        """What :meth:`sweep` will take (see :meth:`job_cost`)."""
        runs = [(method, 1) for method in methods for _ in sparsities]
        key = self.sweep_key(methods, sparsities, layers, true_sequential, bits)
        return self.job_cost("sweep", key, layers, runs)

    def ablation_cost(self, layers, fraction: float = 0.03, sparsity=0.9, method: str = "sparsegpt",
                      true_sequential: bool = True) -> dict:
        """What :meth:`ablation` will take (see :meth:`job_cost`): one run per selection criterion."""

        key = self.ablation_key(layers, fraction, sparsity, method, true_sequential)
        return self.job_cost("ablation", key, layers, [(method, 1)] * len(CRITERIA))

    def expansion_cost(self, layers, n_experts: int = 16, sparsity=0.5, true_sequential: bool = True,
                       bits=None) -> dict:
        """What :meth:`expansion_perplexity` will take (see :meth:`job_cost`)."""
        key = self.expansion_key(layers, n_experts, sparsity, true_sequential, bits)
        runs = [("sparsegpt", k) for k in expert_counts(n_experts)]
        return self.job_cost("expansion_perplexity", key, layers, runs)

    def task_cost(self, tasks, layers, n_experts: int = 16, sparsity=0.5, bits: int | None = None,
                  limit: int | None = 100) -> dict:
        """What :meth:`task_scores` will take: a SparseGPT run and an expansion (as :meth:`job_cost`) and
        the tasks' items scored on three models (rough: an agreement pair is 2 choices of ~16 tokens, an
        item of another task 4 choices of ~128 tokens; ``limit=None`` counts 1,000 items)."""

        tasks = list(tasks)
        key = self.key(tasks=tasks, layers=list(layers), n_experts=int(n_experts), sparsity=sparsity_label(sparsity),
                       limit=limit, **key_parts(bits))
        cost = self.job_cost("task_scores", key, layers, [("sparsegpt", 1), ("sparsegpt", int(n_experts))])
        if not cost["cached"]:
            items = 1000 if limit is None else int(limit)
            tokens = sum(items * (2 * 16 if t == AGREEMENT_TASK else 4 * 128) for t in tasks)
            cost["seconds"] += 3 * estimates.seconds(self.lm, estimates.forward_flops(self.lm, tokens))
            cost["runs"] = 3
            cost["large"] = self._large(cost)
        return cost

    def negative_cost(self, layers, n_seeds: int = 3, pairs: int | None = 0, controls=DEFAULT_CONTROLS,
                      depth: bool = False) -> dict:
        """What the sign-ablation study (or, with ``depth``, its depth profile) will take on the study's windows:
        the statistics' capture over the calibration tokens, then held-out passes (dense, Wasserstein, one per
        random seed, about 8 for the matched control's bisection, one for the mirror and per twin control; the depth
        profile two per layer and one) and the minimal pairs (2 sentences of ~12 tokens each per pair, scored once
        per row: dense, Wasserstein, each random seed, the matched control's final set, the mirror, each twin; the depth
        profile once per row too)."""

        layers = [self.check_layer(n) for n in layers]
        calib, held_out = self.sign_windows()
        depth_of = max(block_of(self.lm, n) for n in layers) + 1
        seeded = int(n_seeds) if "random" in controls else 0
        single = sum(c in controls for c in (*TWIN_CONTROLS, "mirror"))  # one row, one pass each
        passes = 2 * len(layers) + 1 if depth else 2 + seeded + (8 if "matched" in controls else 0) + single
        rows = 2 * len(layers) + 1 if depth else 2 + seeded + (1 if "matched" in controls else 0) + single
        pair_tokens = int(pairs or 0) * 2 * 12 * rows
        flops = (estimates.forward_flops(self.lm, calib.numel(), depth_of)
                 + passes * estimates.forward_flops(self.lm, held_out.numel())
                 + estimates.forward_flops(self.lm, pair_tokens))
        cost = {"cached": False, "seconds": estimates.seconds(self.lm, flops), "runs": passes,
                "layers": len(layers), "bytes": 0}
        cost["large"] = self._large(cost)
        return cost

    @staticmethod
    def _large(cost: dict) -> bool:
        return cost["seconds"] > LARGE_JOB_SECONDS or cost.get("bytes", 0) > LARGE_JOB_BYTES

    def job_cost(self, kind: str, key: str, layers, runs) -> dict:
        """A whole-model job's rough cost before it starts: ``cached`` (the result is on disk already),
        ``seconds`` (a dense pass plus every ``(method, n_experts)`` run, see :mod:`wnb.app.estimates`),
        ``bytes`` held beside the model by its largest run, and ``large`` when either passes
        ``LARGE_JOB_SECONDS`` / ``LARGE_JOB_BYTES`` (the app then asks before it starts)."""

        if self.use_cache and cache.entry_path(kind, key).exists():
            return {"cached": True, "large": False}
        layers = list(layers)
        calib, held = self.calib.numel(), self.held_out.numel()
        seconds = estimates.seconds(self.lm, estimates.forward_flops(self.lm, held))
        seconds += sum(estimates.run_seconds(self.lm, layers, calib, held, method, k) for method, k in runs)
        held_bytes = max(estimates.held_bytes(self.lm, layers, k, APP_EXPERT_BYTES) for _, k in runs)
        return {"cached": False, "seconds": seconds, "bytes": held_bytes, "runs": len(runs) + 1,
                "layers": len(layers), "large": seconds > LARGE_JOB_SECONDS or held_bytes > LARGE_JOB_BYTES}


