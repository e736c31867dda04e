"""wnb: Wasserstein neurons, entanglement and sparsity in language models.

The public API (README.md)::

    lm = wnb.load_model()
    calib, held_out = wnb.token_windows(lm, wnb.load_corpus(), seq_len=256, n_calib=32, n_eval=32)
    acts = wnb.capture(lm, ["model.layers.1.mlp.gate_proj"], calib)
    wd = wnb.wasserstein_to_gaussian(acts["model.layers.1.mlp.gate_proj"].outputs)

Each name below is imported from its home module the first time it is used, so ``import wnb`` (and a
light module such as :mod:`wnb.app.seats`) does not load torch. The packages follow the data flow, each
importing only those before it: core, model, data, tracing, scoring, reading, compression,
experiments, plots, app, widgets, cli (README.md, "Layout").
"""
from __future__ import annotations

import importlib

from wnb.core.version import VERSION as __version__  # noqa: F401  (the package version, read by setup and the app)

# home module: the public names it gives
_API = {
    "wnb.compression.checkpoint": ("save_pruned",),
    "wnb.compression.patches": ("activation_patched",),
    "wnb.compression.clamp": ("sign_ablated",),
    "wnb.compression.expansion": ("expand_layer", "expanded", "Expansion", "RoutedLayer"),
    "wnb.compression.expansion_io": ("load_expanded", "save_expanded"),
    "wnb.compression.kmeans": ("kmeans",),
    "wnb.compression.prune": ("prune_layer", "prune_weight"),
    "wnb.compression.pruned": ("pruned",),
    "wnb.compression.quantize": ("effective_bits", "fit_grid", "model_effective_bits", "quantize"),
    "wnb.compression.router": ("Router",),
    "wnb.compression.sparsegpt": ("SparseGPT",),
    "wnb.compression.sparsity": ("parse_sparsity",),
    "wnb.core.cache": ("cache_dir",),
    "wnb.data.corpora": ("load_corpus",),
    "wnb.data.positions": ("drop_positions", "position_profile", "position_tail_share"),
    "wnb.data.windows": ("token_windows",),
    "wnb.errors": ("WnbError",),
    "wnb.experiments.checkpoints": ("checkpoint_study",),
    "wnb.experiments.claim_runner": ("ClaimContext", "ClaimPlan", "claims_frame", "run_claims"),
    "wnb.experiments.claims": ("CLAIMS",),
    "wnb.experiments.dissociation": ("dissociation_summary", "double_dissociation"),
    "wnb.experiments.interventions": ("intervention_study",),
    "wnb.experiments.knowledge": ("knowledge_pairs",),
    "wnb.experiments.layer_study": ("entanglement_change", "expert_outputs", "LayerStudy", "relative_improvement",
        "ri_regression", "study_layer", "token_shares"),
    "wnb.experiments.minimal_pairs": ("minimal_pairs",),
    "wnb.experiments.pair_scoring": ("minimal_pair_accuracy", "minimal_pair_scores", "scoring_rule",
        "sentence_logprobs", "tokenizer_prefix"),
    "wnb.experiments.pair_sets": ("pair_sets", "score_pair_sets"),
    "wnb.experiments.sign_ablation": ("selection_table", "sign_ablation_study", "study_selections",
        "wasserstein_scores"),
    "wnb.experiments.sign_controls": ("study_statistics",),
    "wnb.experiments.sign_depth": ("sign_ablation_depth",),
    "wnb.experiments.sign_setting": ("setting_differences",),
    "wnb.experiments.surprisal": ("FUNCTION_WORDS", "surprisal_by_class", "token_class", "token_classes",
        "token_surprisal", "token_tags", "top_surprisal_tokens"),
    "wnb.experiments.sweeps": ("ablation", "expansion_sweep", "sweep"),
    "wnb.experiments.tasks": ("evaluate_tasks",),
    "wnb.experiments.tse": ("tse_pairs",),
    "wnb.model.architectures": ("decoder_blocks", "ffn_layers", "first_ffn_layers", "layer_outputs",
        "layer_weight", "linear_layers"),
    "wnb.model.lm": ("LM", "wrap_model"),
    "wnb.model.loading": ("load_model",),
    "wnb.model.offload": ("offload_blocks", "resident"),
    "wnb.reading.contexts": ("NeuronContexts",),
    "wnb.reading.highlight": ("activation_html", "context_html", "contexts_html", "token_activations", "tokens_html"),
    "wnb.reading.neuron": ("differentiating_pairs", "output_effect", "tail_concentration", "token_table"),
    "wnb.reading.per_expert": ("expert_contexts", "expert_summary", "tail_routing"),
    "wnb.reading.reader": ("cached_reading", "contexts_from_outputs", "neuron_contexts", "plan_read", "read_model"),
    "wnb.reading.readout": ("Readout",),
    "wnb.scoring.comparison": ("neuron_errors", "output_rmse", "output_shift"),
    "wnb.scoring.controls": ("select_twins",),
    "wnb.scoring.layers": ("layer_scores", "layer_statistics", "overview"),
    "wnb.scoring.mapping": ("mapping_difficulty", "pair_distances"),
    "wnb.scoring.negative_mass": ("negative_mass",),
    "wnb.scoring.reader": ("ReadProgress",),
    "wnb.scoring.selection": ("matched_candidates", "select_matched", "select_neurons", "select_random",
        "select_wasserstein"),
    "wnb.scoring.sign": ("gate_up_quadrants", "shape_statistics", "sign_quadrants", "wasserstein_split"),
    "wnb.scoring.sketch": ("NeuronSketch",),
    "wnb.scoring.stability": ("set_stability",),
    "wnb.scoring.tables": ("neuron_table", "overview_table"),
    "wnb.scoring.wasserstein": ("top_neurons", "wasserstein_to_gaussian"),
    "wnb.tracing.capture": ("Activations", "capture", "estimate_bytes"),
    "wnb.tracing.nll": ("perplexity", "perplexity_interval", "token_nll"),
    "wnb.tracing.sequential": ("walk",),
}
_HOME = {name: module for module, names in _API.items() for name in names}
__all__ = sorted(_HOME, key=str.lower)

# public names taken out of the API: what to use instead
_RETIRED = {
    "ContextAccumulator": "wnb.ContextAccumulator was retired; use wnb.neuron_contexts(lm, layer, windows) or "
                          "wnb.read_model(lm, windows, layers, contexts=k) (one pass, any number of layers), or "
                          "wnb.contexts_from_outputs(outputs, windows) for outputs already captured",
    "StreamingWD": "wnb.StreamingWD was retired; use wnb.NeuronSketch(n_neurons, seq_len), fed outputs [windows, "
                   "positions, n_neurons] batch by batch (.results()['wd'] is within 1e-3 of exact, in less memory), "
                   "or wnb.read_model(lm, windows, layers, wd='streaming') for whole layers in one pass",
    "stream_scores": "wnb.stream_scores was retired; use wnb.read_model(lm, windows, layers, wd='streaming'): one "
                     "pass over any number of layers, .scores() gives {layer: WD}, .table(layer) one layer's table",
}


_PACKAGES = ("app", "cli", "compression", "core", "data", "errors", "experiments", "model", "plots", "reading",
             "scoring", "tracing", "widgets")


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    elif name in _PACKAGES:  # wnb.model.lm etc. without importing them first, as before the names were lazy
        value = importlib.import_module(f"wnb.{name}")
    elif name in _RETIRED:
        raise AttributeError(_RETIRED[name])
    else:
        raise AttributeError(f"module 'wnb' has no attribute {name!r}")
    globals()[name] = value  # found once, then a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
