"""What the notebooks and the app work on: one model, one corpus, one token budget, one seed.

A :class:`Session` loads the model and cuts the token windows lazily, and returns each analysis
through the on-disk cache (:func:`wnb.cache.cached`) keyed by everything that changes it (model,
calibration windows — so corpus, budget and seed —, layer, analysis parameters). It holds no
algorithm: every number comes from a wnb function. The widgets in :mod:`wnb.widgets` only draw
what a session returns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd
import torch

from . import cache
from .capture import capture, split_by_memory
from .data import load_corpus, token_windows
from .entanglement import layer_statistics, neuron_table, overview_table, pair_distances, top_neurons
from .errors import WnbError
from .models import (BUNDLED, LM, block_of, check_layers, ffn_layers, first_ffn_layers, layer_bias,
                     layer_weight, linear_layers, load_model, model_label)
from .quantize import key_parts
from .state import dense_only, is_dense


@dataclass(frozen=True)
class Budget:
    """Token budget: calibration and held-out windows, and the tokens per layer of the model overview."""

    seq_len: int
    n_calib: int
    n_eval: int
    overview_tokens: int
    scope: str = "layer"  # default layers of whole-model runs (see SCOPES): the cheap one
    sweep: str = "0.3, 0.5, 0.7, 2:4"  # default sparsities of the perplexity sweep

    @property
    def calib_tokens(self) -> int:
        return self.seq_len * self.n_calib


BUDGETS = {
    "small": Budget(seq_len=128, n_calib=8, n_eval=4, overview_tokens=512, sweep="0.5, 2:4"),
    "medium": Budget(seq_len=256, n_calib=32, n_eval=16, overview_tokens=1024),
    "large": Budget(seq_len=512, n_calib=64, n_eval=32, overview_tokens=4096),
}
# Which layers the whole-model runs (sweeps, ablation, expansion perplexity) change.
SCOPES = {"all": "every FFN layer", "block": "the FFN layers of the selected layer's block",
          "layer": "the selected layer only"}
# Experts of a whole-model expansion held at once in the app: stays inside Binder's 2 GB with the model.
APP_EXPERT_BYTES = 640 << 20
BUDGET_ENV = "WNB_BUDGET"
DEFAULT_BUDGET = "medium"
# The overview captures every FFN layer's outputs; more than this many bytes at once is split into
# several capture passes (each stops after its deepest layer) so the app stays within Binder's 2 GB.
# Batches of at most 256 tokens keep nnsight's per-batch copies of the saved outputs small beside that store.
OVERVIEW_MAX_BYTES = 192 << 20
# A layer whose capture holds more outputs than this (tokens × neurons) is analysed only after the user
# confirms (lm_head: 49,152 neurons); the rough time per output comes from the neuron table on 2 cores.
LARGE_LAYER_OUTPUTS = 40_000_000
SECONDS_PER_OUTPUT = 1.5e-6
# Whole-model runs (sweeps, ablation, expansion perplexity) estimated above either also wait for confirmation.
LARGE_JOB_SECONDS = 300
LARGE_JOB_BYTES = 4 << 30
OVERVIEW_BATCH_TOKENS = 256
CONTEXT_K = 20      # highest and lowest outputs kept per neuron for "What it reads"
CONTEXT_WIDTH = 8   # tokens of context shown on each side


def budget_from_env(default: str = DEFAULT_BUDGET) -> str:
    """The budget named by ``$WNB_BUDGET`` (tests set ``small``), else ``default``."""
    name = os.environ.get(BUDGET_ENV, "").strip() or default
    check_budget(name)
    return name


def check_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise WnbError(f"unknown token budget {name!r}; choose one of {', '.join(BUDGETS)}")
    return BUDGETS[name]


@dataclass
class LayerView:
    """One layer's captured samples and its neuron table (ranked by WD, rank 1 = most entangled)."""

    name: str
    inputs: torch.Tensor
    outputs: torch.Tensor
    table: pd.DataFrame
    n_pairs: int
    seed: int
    fraction: float = 0.03
    seq_len: int | None = None
    skip_first: int = 0  # positions of every window left out of the statistics (the attention sink)

    @property
    def n_neurons(self) -> int:
        return self.outputs.shape[1]

    def kept(self, t: torch.Tensor) -> torch.Tensor:
        """Rows of a capture of this layer without the first ``skip_first`` positions of every window."""
        if not self.skip_first:
            return t
        from .positions import drop_positions
        return drop_positions(t, self.seq_len, self.skip_first)

    @property
    def kept_outputs(self) -> torch.Tensor:
        """The outputs the statistics are computed on (all unless ``skip_first``)."""
        return self.kept(self.outputs)

    @property
    def ranked(self) -> int:
        """Neurons with a rank that means something (constant neurons have NaN WD and come last)."""
        return int(self.table["wd"].notna().sum())

    def neuron_at(self, rank: int) -> int:
        if not 1 <= rank <= len(self.table):
            raise WnbError(f"rank must be between 1 and {len(self.table)} (got {rank})")
        return int(self.table["neuron"].iloc[rank - 1])

    def rank_of(self, neuron: int) -> int:
        if not 0 <= neuron < self.n_neurons:
            raise WnbError(f"neuron must be between 0 and {self.n_neurons - 1} (got {neuron})")
        return int(self.table.index[self.table["neuron"] == neuron][0]) + 1

    def row(self, neuron: int) -> pd.Series:
        return self.table.iloc[self.rank_of(neuron) - 1]

    def wasserstein_neurons(self) -> list[int]:
        """The top ``fraction`` of the layer by WD (paper: 3%), most entangled first."""
        wd = torch.as_tensor(self.table.sort_values("neuron")["wd"].to_numpy(copy=True))
        return top_neurons(wd, self.fraction).tolist()

    def ordinary_neuron(self) -> int:
        """The neuron of median WD rank: the paper's "ordinary" neuron to compare against."""
        return self.neuron_at(max(1, (self.ranked + 1) // 2))

    def pairs(self, neurons: list[int]):
        """``(dx [P], dy [P, len(neurons)])`` of :func:`wnb.pair_distances` for these neurons."""
        return pair_distances(self.kept(self.inputs), self.kept(self.outputs)[:, neurons], n_pairs=self.n_pairs,
                              seed=self.seed)


@dataclass
class PruneView:
    """One layer pruned alone (from its dense calibration inputs): per-neuron errors on held-out tokens."""

    layer: str
    method: str
    sparsity: str
    dense: torch.Tensor    # [held-out tokens, d_out] dense outputs
    pruned: torch.Tensor   # [held-out tokens, d_out] outputs with the pruned weight
    errors: pd.DataFrame   # neuron, rmse, rel_rmse, shift (wnb.neuron_errors) with wd, mean, variance, rank



class Session:
    """Model + corpus + budget + seed, with cached analyses.

    ``model=None`` is the bundled SmolLM2; any other string is a Hugging Face id or folder. Tests and
    power users may pass an already loaded ``lm`` and ready ``calib`` / ``held_out`` windows instead.
    """

    def __init__(self, model: str | None = None, corpus: str = "bundled", budget: str | None = None,
                 seed: int = 0, device: str = "auto", lm: LM | None = None, calib: torch.Tensor | None = None,
                 held_out: torch.Tensor | None = None, use_cache: bool = True, n_pairs: int = 50_000,
                 restricted: bool = False, upload: bytes | None = None, skip_first: int = 0):
        self.model = (model or "").strip() or None
        self.corpus = (corpus or "bundled").strip()
        # restricted (the app): no typed path is opened; see wnb.sources
        self.restricted = restricted
        self.upload = upload
        self.skip_first = int(skip_first)  # positions of every window left out of WD, MD and the tables
        self._contexts = None  # (key, NeuronContexts) of the last layer read
        self._folder = None
        if restricted:
            from .data import CORPORA
            from .sources import UPLOAD, app_model

            self.model, self._folder = app_model(self.model)
            if self.corpus not in (*CORPORA, UPLOAD):
                from .sources import app_corpus
                app_corpus(self.corpus)  # raises: says what is allowed
        self.budget_name = budget or budget_from_env()
        self.budget = check_budget(self.budget_name)
        if int(seed) < 0:
            raise WnbError(f"seed must be a non-negative integer (got {seed})")
        self.seed = int(seed)
        self.device = device
        self.use_cache = use_cache
        self.n_pairs = n_pairs
        self._lm = lm
        self._calib = calib
        self._held_out = held_out
        self._layer: LayerView | None = None
        self._study = None  # (key, LayerStudy) of the last layer study
        self._names: dict[str, list[str]] | None = None
        return_freed_memory()

    # ------------------------------------------------------------- inputs

    @property
    def lm(self) -> LM:
        if self._lm is None:
            self._lm = self._load()
        return self._lm

    def prepare(self, on_file=None) -> None:
        """Load the model and cut the windows now; a hub model (the app) is fetched within the server's
        limits, with ``on_file(index, total, filename)`` before each file (a job's ``begin``: Cancel)."""
        if self._lm is None:
            self._lm = self._load(on_file)
        self._windows()

    def _load(self, on_file=None) -> LM:
        if not self.restricted or self.model is None:
            return load_model(self.model, device=self.device)
        commit = None
        if self._folder is not None:  # a folder offered by the server
            folder = self._folder
        else:
            from .sources import fetch_hub_model

            folder, commit = fetch_hub_model(self.model, on_file=on_file)
        try:
            lm = load_model(str(folder), device=self.device)
        except WnbError:  # the visitor's words: no server path, no advice to run the model's own code
            raise WnbError(f"could not load {self.model!r} with transformers: this server loads models that "
                           "transformers knows without code of their own") from None
        # the id or offered name, not the folder it was read from; a hub model with its commit, so that cache
        # keys tell revisions apart
        lm.name = model_label(self.model, commit[:12] if commit else None)
        return lm

    @property
    def model_name(self) -> str:
        return self._lm.name if self._lm is not None else (self.model or "bundled SmolLM2-135M-Instruct")

    @property
    def model_key(self) -> str:
        """The model's name in cache keys: known without loading it for the bundled model and named ones,
        ``LM.name`` (with the resolved commit) for a hub model of the app."""
        if self._lm is None and self.restricted and self.model is not None and self._folder is None:
            return self.lm.name
        return self._lm.name if self._lm is not None else (self.model or BUNDLED)

    def _windows(self):
        if self._calib is None:
            b = self.budget
            if self.restricted:
                from .sources import app_corpus
                text = app_corpus(self.corpus, self.upload)
            else:
                text = load_corpus(self.corpus)
            key = cache.key(model=self.model_key, text=cache.text_digest(text), seq_len=b.seq_len, n_calib=b.n_calib, n_eval=b.n_eval,
                            seed=self.seed)
            self._calib, self._held_out = cache.cached(
                "windows", key, lambda: token_windows(self.lm, text, b.seq_len, b.n_calib, b.n_eval, self.seed),
                enabled=self.use_cache)
        return self._calib, self._held_out

    @property
    def calib(self) -> torch.Tensor:
        return self._windows()[0]

    @property
    def held_out(self) -> torch.Tensor:
        return self._windows()[1]

    def _cached(self, kind: str, key: str, compute, enabled: bool | None = None):
        """:func:`wnb.cache.cached` of a result that assumes the dense model: computed while holding the
        model and stored only if nothing was applied to it meanwhile (:func:`wnb.state.dense_only`)."""
        return cache.cached(kind, key, dense_only(lambda: self.lm, compute),
                            enabled=self.use_cache if enabled is None else enabled)

    def _dense_now(self) -> bool:
        """Whether nothing is applied to the model now (True before it is loaded)."""
        return self._lm is None or is_dense(self._lm)

    def key(self, **parts) -> str:
        """Cache key of a result of this session: model, calibration windows, seed and ``parts``."""
        return cache.key(model=self.model_key, calib=self.calib, seed=self.seed, **parts)

    # ------------------------------------------------------------- layers

    def _layer_names(self) -> dict[str, list[str]]:
        """FFN, first-FFN and all linear layer names, cached by model so a warm visit never loads it."""
        if self._names is None:
            self._names = self._cached(
                "layer_names", cache.key(model=self.model_key),
                lambda: {"ffn": ffn_layers(self.lm), "first_ffn": first_ffn_layers(self.lm),
                         "linear": linear_layers(self.lm)}, enabled=self.use_cache)
        return self._names

    def ffn_layers(self) -> list[str]:
        return list(self._layer_names()["ffn"])

    def linear_layers(self) -> list[str]:
        return list(self._layer_names()["linear"])

    def check_layer(self, name: str) -> str:
        """``name`` if it is a linear layer of the model; otherwise wnb's error listing the closest names."""
        if name in self._layer_names()["linear"]:
            return name
        (name,) = check_layers(self.lm, [name])  # raises WnbError with suggestions
        return name

    def default_layer(self) -> str:
        """The first FFN projection of block 1 (block 0 if the model has one block)."""
        names = self._layer_names()
        first = names["first_ffn"] or names["ffn"] or names["linear"]
        return first[1] if len(first) > 1 else first[0]

    def layer(self, name: str, progress: bool = True) -> LayerView:
        """Capture ``name`` on the calibration windows and rank its neurons (both cached on disk)."""
        name = self.check_layer(name)
        if self._layer is not None and self._layer.name == name and self._layer.skip_first == self.skip_first:
            return self._layer
        self._layer = None  # free the previous layer before capturing the next
        acts = self._cached("capture", self.key(layer=name),
                            lambda: _capture_one(self.lm, name, self.calib, progress), enabled=self.use_cache)
        seq_len = self.calib.shape[1]
        if not 0 <= self.skip_first < seq_len:
            raise WnbError(f"skip_first must be between 0 and {seq_len - 1}, the window length minus one "
                           f"(got {self.skip_first})")
        table = self._cached("neuron_table", self.key(layer=name, n_pairs=self.n_pairs, sign="zero+mean split",
                                                      skip_first=self.skip_first),
                             lambda: neuron_table(acts["outputs"], acts["inputs"], layer_weight(self.lm, name),
                                                  n_pairs=self.n_pairs, seed=self.seed, sign=True, seq_len=seq_len,
                                                  skip_first=self.skip_first), enabled=self.use_cache)
        view = LayerView(name, acts["inputs"], acts["outputs"], table, self.n_pairs, self.seed,
                         seq_len=seq_len, skip_first=self.skip_first)
        if self._dense_now():  # kept for re-selection only when it is the dense model's
            self._layer = view
        return view

    def sign_quadrants(self, name: str, progress: bool = True) -> pd.DataFrame | None:
        """For a gated MLP's gate_proj: every neuron's share of calibration tokens in each sign quadrant of
        (gate, up) (:func:`wnb.sign_quadrants`; the up_proj capture is cached like any layer's); None for
        other layers."""
        from .sign_view import sign_quadrants, up_projection_of

        view = self.layer(name, progress)
        try:
            up = up_projection_of(self.lm, view.name)
        except WnbError:
            return None

        def compute():
            ups = self._cached("capture", self.key(layer=up),
                               lambda: _capture_one(self.lm, up, self.calib, progress), enabled=self.use_cache)
            return sign_quadrants(view.kept_outputs, view.kept(ups["outputs"]))

        return self._cached("sign_quadrants", self.key(layer=view.name, skip_first=self.skip_first), compute,
                            enabled=self.use_cache)

    def contexts(self, name: str, progress: bool = True, k: int = CONTEXT_K):
        """:class:`wnb.NeuronContexts` of every neuron of ``name`` (from its calibration capture, no second
        pass; cached on disk and kept for the last layer, so re-selecting a neuron is instant)."""
        from .contexts import NeuronContexts, contexts_from_outputs

        view = self.layer(name, progress)
        key = contexts_key(self, view.name, k)
        if self._contexts is not None and self._contexts[0] == key:
            return self._contexts[1]
        state = cache.cached("contexts", key,
                             lambda: contexts_from_outputs(view.outputs, self.calib, None, view.name, k=k,
                                                           width=CONTEXT_WIDTH, skip_first=self.skip_first,
                                                           seed=self.seed).to_state(),
                             enabled=self.use_cache)
        ctx = NeuronContexts.from_state(state, self.lm.tokenizer, width=CONTEXT_WIDTH)
        self._contexts = (key, ctx)
        return ctx

    def layer_cost(self, name: str) -> dict:
        """What analysing ``name`` will take: ``outputs`` (tokens × neurons), ``bytes`` of the capture,
        a rough ``seconds`` (ranking every neuron dominates), whether it is ``cached`` already, and
        ``large`` when its outputs pass ``LARGE_LAYER_OUTPUTS`` (the app then asks before it starts)."""
        from .capture import estimate_bytes

        name = self.check_layer(name)
        if self.use_cache and cache.entry_path("capture", self.key(layer=name)).exists():
            return {"cached": True, "large": False}  # known without loading the model
        tokens = self.calib.numel()
        d_out = layer_weight(self.lm, name).shape[0]
        return {"outputs": tokens * d_out, "bytes": estimate_bytes(self.lm, [name], tokens),
                "seconds": tokens * d_out * SECONDS_PER_OUTPUT, "neurons": d_out, "cached": False,
                "large": tokens * d_out > LARGE_LAYER_OUTPUTS}

    # ------------------------------------------------------------- model overview

    def overview(self, progress: bool = True) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
        """WD of every neuron of every FFN layer (``budget.overview_tokens`` tokens) and its per-layer table,
        whose ``sinks`` column counts the neurons with first-token (attention sink) tails."""
        tokens = min(self.budget.overview_tokens, self.calib.numel())

        def compute():
            stats = self._layer_statistics(tokens, progress)
            return _overview_of(self.lm, stats)

        return self._cached("overview", self._overview_key(tokens), compute, enabled=self.use_cache)

    def _overview_key(self, tokens: int) -> str:
        extra = {"skip_first": self.skip_first} if self.skip_first else {}
        return self.key(tokens=tokens, positions=True, **extra)

    def store_overview(self, stats: dict[str, dict[str, torch.Tensor]], tokens: int) -> None:
        """Keep whole-model statistics computed elsewhere (``wnb score``: ``{layer: {"wd", "pos0_tail_share"}}``)
        where :meth:`overview` finds them."""
        if list(stats) != self.ffn_layers():
            raise ValueError("the model overview holds scores of every FFN layer, in forward order")
        self._cached("overview", self._overview_key(tokens), lambda: _overview_of(self.lm, stats),
                     enabled=self.use_cache)

    def _layer_statistics(self, tokens: int, progress: bool) -> dict[str, dict[str, torch.Tensor]]:
        stats: dict[str, dict[str, torch.Tensor]] = {}
        for group in split_by_memory(self.lm, self.ffn_layers(), tokens, OVERVIEW_MAX_BYTES):
            batch = max(1, OVERVIEW_BATCH_TOKENS // self.calib.shape[1])
            stats.update(layer_statistics(self.lm, self.calib, group, max_tokens=tokens, batch_size=batch,
                                          progress=progress, skip_first=self.skip_first))
        return stats

    # ------------------------------------------------------------- sparsity and Sparse Expansion

    def held_inputs(self, name: str, progress: bool = True) -> torch.Tensor:
        """The layer's inputs on the held-out windows, from the dense model (cached)."""
        name = self.check_layer(name)
        key = cache.key(model=self.model_key, held_out=self.held_out, layer=name)
        def compute():
            return capture(self.lm, [name], self.held_out, outputs=False, progress=progress)[name].inputs

        return self._cached("held_capture", key, compute, enabled=self.use_cache)

    def scope_layers(self, scope: str, layer: str) -> list[str]:
        """The layers a whole-model run changes: ``"all"`` FFN layers, the ``"block"`` of ``layer``, or ``"layer"``."""
        if scope not in SCOPES:
            raise WnbError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
        layer = self.check_layer(layer)
        if scope == "layer":
            return [layer]
        ffn = self.ffn_layers()
        if scope == "all":
            return ffn
        block = block_of(self.lm, layer)
        same = [n for n in ffn if block_of(self.lm, n) == block]
        return same or [layer]

    def prune_view(self, name: str, method: str = "sparsegpt", sparsity=0.5, progress: bool = True,
                   bits: int | None = None) -> PruneView:
        """Prune one layer with ``method`` at ``sparsity`` (wnb.prune_layer on its calibration capture; with
        ``bits``, the kept weights quantized too) and compare its held-out outputs with the dense ones
        (wnb.neuron_errors). Cached."""
        from .capture import Activations
        from .evaluate import layer_outputs, neuron_errors
        from .prune import check_method, prune_layer, sparsity_label

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
            from .quantize import quant_label
            label = f"{label} + {quant_label(bits)}"
        return PruneView(view.name, method, label, dense, pruned, errors)

    def sweep(self, methods, sparsities, layers, progress: bool = True, true_sequential: bool = True,
              on_run=None, bits: int | None = None) -> pd.DataFrame:
        """Perplexity vs sparsity of every method (wnb.sweep on ``layers``; ``bits`` quantizes too), cached."""
        from . import evaluate
        from .prune import sparsity_label

        labels = [sparsity_label(s) for s in sparsities]
        return self._cached("sweep", self._sweep_key(methods, sparsities, layers, true_sequential, bits),
                            lambda: evaluate.sweep(self.lm, self.calib, self.held_out, methods=tuple(methods),
                                                   sparsities=tuple(labels), layers=list(layers), progress=progress,
                                                   true_sequential=true_sequential, on_run=on_run, bits=bits),
                            enabled=self.use_cache)

    def _sweep_key(self, methods, sparsities, layers, true_sequential: bool = True, bits=None) -> str:
        from .prune import sparsity_label

        return self.key(methods=list(methods), sparsities=[sparsity_label(s) for s in sparsities],
                        layers=list(layers), held_out=self.held_out, true_sequential=true_sequential,
                        **key_parts(bits))

    def sweep_cost(self, methods, sparsities, layers, true_sequential: bool = True, bits=None) -> dict:
        """What :meth:`sweep` will take (see :meth:`job_cost`)."""
        runs = [(method, 1) for method in methods for _ in sparsities]
        key = self._sweep_key(methods, sparsities, layers, true_sequential, bits)
        return self.job_cost("sweep", key, layers, runs)

    def ablation(self, layers, fraction: float = 0.03, sparsity=0.9, method: str = "sparsegpt",
                 progress: bool = True, true_sequential: bool = True, on_run=None) -> pd.DataFrame:
        """The paper's Fig. 3 (wnb.ablation on ``layers``), cached."""
        from . import evaluate

        return self._cached("ablation", self._ablation_key(layers, fraction, sparsity, method, true_sequential),
                            lambda: evaluate.ablation(self.lm, self.calib, self.held_out, fraction=fraction,
                                                      sparsity=sparsity, method=method, layers=list(layers),
                                                      seed=self.seed, progress=progress,
                                                      true_sequential=true_sequential, on_run=on_run),
                            enabled=self.use_cache)

    def _ablation_key(self, layers, fraction, sparsity, method, true_sequential: bool = True) -> str:
        from .prune import sparsity_label

        return self.key(layers=list(layers), fraction=fraction, sparsity=sparsity_label(sparsity), method=method,
                        held_out=self.held_out, true_sequential=true_sequential)

    def ablation_cost(self, layers, fraction: float = 0.03, sparsity=0.9, method: str = "sparsegpt",
                      true_sequential: bool = True) -> dict:
        """What :meth:`ablation` will take (see :meth:`job_cost`): one run per selection criterion."""
        from .prune import CRITERIA

        key = self._ablation_key(layers, fraction, sparsity, method, true_sequential)
        return self.job_cost("ablation", key, layers, [(method, 1)] * len(CRITERIA))

    def study(self, name: str, n_experts: int = 16, sparsity=0.5, progress: bool = True, bits: int | None = None):
        """Dense vs SparseGPT vs Sparse Expansion of one layer (wnb.study_layer; ``bits`` quantizes both), cached."""
        from .analysis import study_layer
        from .prune import sparsity_label

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
        from . import analysis
        from .prune import sparsity_label

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

    def expansion_perplexity(self, layers, n_experts: int = 16, sparsity=0.5, progress: bool = True,
                             true_sequential: bool = True, on_run=None, bits: int | None = None) -> pd.DataFrame:
        """Perplexity of dense, SparseGPT (k = 1) and Sparse Expansion with ``n_experts`` on ``layers``
        (wnb.expansion_sweep), cached. The experts held at once are capped at ``APP_EXPERT_BYTES``."""
        from .analysis import expansion_sweep

        key = self._expansion_key(layers, n_experts, sparsity, true_sequential, bits)
        return self._cached("expansion_perplexity", key,
                            lambda: expansion_sweep(self.lm, self.calib, self.held_out, n_experts=_expert_counts(n_experts),
                                                    sparsities=(sparsity,), layers=list(layers), seed=self.seed,
                                                    max_bytes=APP_EXPERT_BYTES, progress=progress,
                                                    true_sequential=true_sequential, on_run=on_run, bits=bits),
                            enabled=self.use_cache)

    def _expansion_key(self, layers, n_experts, sparsity, true_sequential: bool = True, bits=None,
                       group_size=None, **extra) -> str:
        """The key of :meth:`expansion_perplexity` (``wnb expand`` stores its table under it too, with
        ``extra`` parts such as a ``pca_factor`` other than the app's)."""
        from .prune import sparsity_label

        return self.key(layers=list(layers), n_experts=list(_expert_counts(n_experts)),
                        sparsity=sparsity_label(sparsity), held_out=self.held_out, true_sequential=true_sequential,
                        **extra, **key_parts(bits, group_size))

    def expansion_cost(self, layers, n_experts: int = 16, sparsity=0.5, true_sequential: bool = True,
                       bits=None) -> dict:
        """What :meth:`expansion_perplexity` will take (see :meth:`job_cost`)."""
        key = self._expansion_key(layers, n_experts, sparsity, true_sequential, bits)
        runs = [("sparsegpt", k) for k in _expert_counts(n_experts)]
        return self.job_cost("expansion_perplexity", key, layers, runs)

    def task_scores(self, tasks, layers, n_experts: int = 16, sparsity=0.5, bits: int | None = None,
                    limit: int | None = 100, progress: bool = True, on_run=None) -> pd.DataFrame:
        """Downstream task scores of the dense, SparseGPT and Sparse Expansion models on ``layers``
        (:func:`wnb.tasks.compare_tasks`; the experts held at once capped at ``APP_EXPERT_BYTES``), cached.
        ``wnb_agreement`` (wnb's minimal pairs) needs no network; lm-eval's standard tasks do."""
        from .prune import sparsity_label
        from .tasks import compare_tasks

        tasks = list(tasks)
        key = self.key(tasks=tasks, layers=list(layers), n_experts=int(n_experts), sparsity=sparsity_label(sparsity),
                       limit=limit, **key_parts(bits))
        return _nullable_ints(self._cached(
            "task_scores", key,
            lambda: _plain_ints(compare_tasks(self.lm, self.calib, tasks, list(layers), n_experts, sparsity, bits,
                                              limit=limit, seed=self.seed, progress=progress,
                                              on_run=on_run, max_bytes=APP_EXPERT_BYTES)),
            enabled=self.use_cache), ["n"])

    def task_cost(self, tasks, layers, n_experts: int = 16, sparsity=0.5, bits: int | None = None,
                  limit: int | None = 100) -> dict:
        """What :meth:`task_scores` will take: a SparseGPT run and an expansion (as :meth:`job_cost`) and
        the tasks' items scored on three models (rough: an agreement pair is 2 choices of ~16 tokens, an
        item of another task 4 choices of ~128 tokens; ``limit=None`` counts 1,000 items)."""
        from . import estimates
        from .prune import sparsity_label
        from .tasks import AGREEMENT_TASK

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

    def negative_cost(self, layers, n_seeds: int = 3, pairs: int | None = 0, controls=("random", "matched"),
                      depth: bool = False) -> dict:
        """What the sign-ablation study (or, with ``depth``, its depth profile) will take: the WD capture
        over the calibration tokens, then held-out passes (dense, Wasserstein, one per random seed, about 8
        for the matched control's bisection; the depth profile two per layer and one) and the minimal pairs
        (2 sentences of ~16 tokens each per pair and ablation)."""
        from . import estimates
        from .models import block_of

        layers = [self.check_layer(n) for n in layers]
        depth_of = max(block_of(self.lm, n) for n in layers) + 1
        passes = 2 * len(layers) + 1 if depth else (
            2 + (int(n_seeds) if "random" in controls else 0) + (8 if "matched" in controls else 0))
        pair_tokens = 0 if depth or not pairs else int(pairs) * 2 * 16 * passes
        flops = (estimates.forward_flops(self.lm, self.calib.numel(), depth_of)
                 + passes * estimates.forward_flops(self.lm, self.held_out.numel())
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
        ``seconds`` (a dense pass plus every ``(method, n_experts)`` run, see :mod:`wnb.estimates`),
        ``bytes`` held beside the model by its largest run, and ``large`` when either passes
        ``LARGE_JOB_SECONDS`` / ``LARGE_JOB_BYTES`` (the app then asks before it starts)."""
        from . import estimates

        if self.use_cache and cache.entry_path(kind, key).exists():
            return {"cached": True, "large": False}
        layers = list(layers)
        calib, held = self.calib.numel(), self.held_out.numel()
        seconds = estimates.seconds(self.lm, estimates.forward_flops(self.lm, held))
        seconds += sum(estimates.run_seconds(self.lm, layers, calib, held, method, k) for method, k in runs)
        held_bytes = max(estimates.held_bytes(self.lm, layers, k, APP_EXPERT_BYTES) for _, k in runs)
        return {"cached": False, "seconds": seconds, "bytes": held_bytes, "runs": len(runs) + 1,
                "layers": len(layers), "large": seconds > LARGE_JOB_SECONDS or held_bytes > LARGE_JOB_BYTES}

    # ------------------------------------------------------------- sign ablation (the follow-up, issue 12)

    def sign_scores(self, layers, tokens: int | None = None, progress: bool = True) -> dict:
        """WD of every neuron of ``layers`` over the first ``tokens`` calibration tokens (default: the
        budget's overview tokens), as :func:`wnb.wasserstein_scores` returns it; cached."""
        from .sign_ablation import wasserstein_scores

        layers = [self.check_layer(n) for n in layers]
        tokens = min(int(tokens or self.budget.overview_tokens), self.calib.numel())
        batch = max(1, OVERVIEW_BATCH_TOKENS // self.calib.shape[1])
        return self._cached("sign_scores", self.key(layers=layers, tokens=tokens),
                            lambda: wasserstein_scores(self.lm, self.calib, layers, max_tokens=tokens, batch_size=batch,
                                                       max_bytes=OVERVIEW_MAX_BYTES, progress=progress),
                            enabled=self.use_cache)

    def ablated_nll(self, lm, held_out, selection, side: str = "negative", batch_size: int = 8,
                    progress: bool = True) -> torch.Tensor:
        """:func:`wnb.sign_ablation.ablated_nll`, cached by the neurons themselves, so the study, its
        surprisal and the depth profile share their held-out passes (e.g. the dense one)."""
        from .sign_ablation import ablated_nll

        neurons = {name: torch.as_tensor(idx).tolist() for name, idx in selection.items()}
        key = cache.key(model=self.model_key, held_out=held_out, neurons=neurons,
                        side=side if neurons else None)
        return self._cached("ablated_nll", key,
                            lambda: ablated_nll(lm, held_out, selection, side, batch_size=batch_size,
                                                progress=progress),
                            enabled=self.use_cache)

    def sign_pairs(self, name: str | None = "agreement", n: int | None = 10) -> list[dict] | None:
        """Minimal pairs for the sign-ablation study (:func:`wnb.minimal_pairs` with the session's seed),
        or None when ``name`` is None or the model has no tokenizer."""
        from .minimal_pairs import minimal_pairs

        if name is None or self.lm.tokenizer is None:
            return None
        return minimal_pairs(name, n=n, seed=self.seed)

    def sign_ablation(self, layers, fraction: float = 0.01, side: str = "negative", controls=("random", "matched"),
                      n_seeds: int = 3, pairs=None, tokens: int | None = None, tolerance: float = 0.02,
                      progress: bool = True) -> pd.DataFrame:
        """:func:`wnb.sign_ablation_study` on the held-out windows, random controls with seeds
        ``seed .. seed + n_seeds - 1``, WD from :meth:`sign_scores`; cached (keyed by the pairs themselves)."""
        from .sign_ablation import sign_ablation_study

        scores = self.sign_scores(layers, tokens, progress)
        seeds = [self.seed + i for i in range(int(n_seeds))]
        key = self.key(layers=list(scores), tokens=tokens, fraction=float(fraction), side=side,
                       controls=list(controls), seeds=seeds, pairs=pairs, held_out=self.held_out,
                       tolerance=float(tolerance), columns="paired differences, verdicts, spread over seeds")
        return _nullable_ints(self._cached(
            "sign_ablation", key,
            lambda: _plain_ints(sign_ablation_study(self.lm, None, self.held_out, fraction=fraction, side=side,
                                                    controls=tuple(controls), seeds=seeds, pairs=pairs, scores=scores,
                                                    tolerance=tolerance, progress=progress,
                                                    nll_fn=self.ablated_nll)),
            enabled=self.use_cache), ["seed"])

    def sign_depth(self, layers, fraction: float = 0.01, side: str = "negative", pairs=None,
                   tokens: int | None = None, progress: bool = True) -> pd.DataFrame:
        """:func:`wnb.sign_ablation_depth` (one layer at a time and cumulative) on the held-out windows; cached."""
        from .sign_ablation import sign_ablation_depth

        scores = self.sign_scores(layers, tokens, progress)
        key = self.key(layers=list(scores), tokens=tokens, fraction=float(fraction), side=side, pairs=pairs,
                       held_out=self.held_out, columns="paired delta interval")
        return _nullable_ints(self._cached(
            "sign_depth", key,
            lambda: _plain_ints(sign_ablation_depth(self.lm, None, self.held_out, fraction=fraction, side=side,
                                                    pairs=pairs, scores=scores, progress=progress,
                                                    nll_fn=self.ablated_nll)),
            enabled=self.use_cache), ["block"])

    def sign_surprisal(self, layers, fraction: float = 0.01, side: str = "negative", matched: int | None = None,
                       matched_seed: int | None = None, tokens: int | None = None, top: int = 20,
                       progress: bool = True) -> dict:
        """Per-token Δ NLL (:func:`wnb.token_surprisal`) of the Wasserstein ablation and, with ``matched``
        (the matched control's per-layer count from the study), of the matched control, aggregated:
        ``by_class`` and ``by_group`` (:func:`wnb.surprisal_by_class`, one block per ``selection``) and
        ``top`` (:func:`wnb.top_surprisal_tokens` of the Wasserstein ablation); cached."""
        from .sign_ablation import matched_candidates, select_matched, select_wasserstein
        from .surprisal import surprisal_by_class, token_surprisal, top_surprisal_tokens

        scores = self.sign_scores(layers, tokens, progress)
        matched_seed = self.seed if matched_seed is None else int(matched_seed)

        def compute():
            selections = {"wasserstein": select_wasserstein(scores, fraction)}
            if matched is not None:
                selections["matched"] = select_matched(matched_candidates(scores, seed=matched_seed), int(matched))
            dense = self.ablated_nll(self.lm, self.held_out, {}, side, progress=progress)
            out = {"by_class": [], "by_group": [], "top": None}
            for name, neurons in selections.items():
                ablated = self.ablated_nll(self.lm, self.held_out, neurons, side, progress=progress)
                table = token_surprisal(self.lm, self.held_out, neurons, side=side, dense_nll=dense,
                                        ablated_nll=ablated, progress=progress)
                for by, part in (("token_class", "by_class"), ("group", "by_group")):
                    out[part].append(surprisal_by_class(table, by=by).assign(selection=name))
                if name == "wasserstein":
                    out["top"] = top_surprisal_tokens(table, n=top, min_count=2)
            out["by_class"] = pd.concat(out["by_class"], ignore_index=True)
            out["by_group"] = pd.concat(out["by_group"], ignore_index=True)
            return out

        key = self.key(layers=list(scores), tokens=tokens, fraction=float(fraction), side=side, matched=matched,
                       matched_seed=matched_seed, top=top, held_out=self.held_out)
        return self._cached("sign_surprisal", key, compute, enabled=self.use_cache)


def _plain_ints(table: pd.DataFrame) -> pd.DataFrame:
    """Nullable integer columns (``Int64``, which the cache cannot store) as float with NaN for missing."""
    return table.astype({c: "float64" for c, t in table.dtypes.items() if isinstance(t, pd.Int64Dtype)})


def _nullable_ints(table: pd.DataFrame, columns) -> pd.DataFrame:
    """The inverse of :func:`_plain_ints` for ``columns``."""
    return table.astype({c: "Int64" for c in columns if c in table.columns})


def _overview_of(lm: LM, stats: dict) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """The overview's value: WD per layer and the per-layer table with the first-token ``sinks`` columns."""
    scores = {name: s["wd"] for name, s in stats.items()}
    return scores, overview_table(lm, scores, pos0_shares={name: s["pos0_tail_share"] for name, s in stats.items()})


def _expert_counts(n_experts) -> tuple[int, ...]:
    """The expert counts an expansion perplexity compares: SparseGPT alone (k = 1) and ``n_experts``."""
    return (1,) if int(n_experts) == 1 else (1, int(n_experts))


def contexts_key(session: "Session", layer: str, k: int = CONTEXT_K) -> str:
    """The cache key of a layer's contexts (``wnb score --contexts`` stores them under it for the app)."""
    return session.key(layer=layer, k=int(k), width=CONTEXT_WIDTH, skip_first=session.skip_first)


def _study_tensors(study) -> dict:
    """A LayerStudy as plain tensors and numbers (its router holds a weak reference torch.save refuses)."""
    routed, router = study.expansion, study.expansion.router
    return {"layer": study.layer, "weight": study.weight, "bias": study.bias, "calib_inputs": study.calib_inputs,
            "held_inputs": study.held_inputs, "sparsegpt": study.sparsegpt, "sparsity": study.sparsity,
            "mean": router.mean, "components": router.components, "centroids": router.centroids,
            "experts": routed.experts, "expert_bias": routed.bias, "tokens": routed.tokens, "damping": routed.damping}


def _study_from_tensors(d: dict):
    from .analysis import LayerStudy
    from .expand import RoutedLayer, Router

    router = Router(d["mean"], d["components"], d["centroids"])
    routed = RoutedLayer(router, d["experts"], d["expert_bias"], d["tokens"], d["damping"])
    return LayerStudy(d["layer"], d["weight"], d["bias"], d["calib_inputs"], d["held_inputs"], d["sparsegpt"],
                      routed, d["sparsity"])


def _capture_one(lm: LM, name: str, windows: torch.Tensor, progress: bool) -> dict[str, torch.Tensor]:
    acts = capture(lm, [name], windows, progress=progress)[name]
    return {"inputs": acts.inputs, "outputs": acts.outputs}


def return_freed_memory() -> None:
    """Have glibc give large freed blocks back to the system (Linux; a no-op elsewhere).

    glibc raises its mmap threshold each time a large block is freed, so later tensors of tens of MB come
    from the heap and stay resident after they are freed. The app's kernel must stay under Binder's 2 GB;
    a fixed 1 MiB threshold (``mallopt(M_MMAP_THRESHOLD)``) keeps its resting memory ~150 MB lower.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        pass
