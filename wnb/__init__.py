"""wnb: Wasserstein neurons, entanglement and sparsity in language models.

The public API (see README.md)::

    lm = wnb.load_model()
    calib, held_out = wnb.token_windows(lm, wnb.load_corpus(), seq_len=256, n_calib=32, n_eval=32)
    acts = wnb.capture(lm, ["model.layers.1.mlp.gate_proj"], calib)
    wd = wnb.wasserstein_to_gaussian(acts["model.layers.1.mlp.gate_proj"].outputs)
"""
from wnb.core.cache import cache_dir
from wnb.tracing.capture import Activations, capture, estimate_bytes
from wnb.data.corpora import load_corpus
from wnb.data.windows import token_windows
from wnb.scoring.tables import layer_scores, neuron_table, overview, overview_table
from wnb.scoring.mapping import mapping_difficulty, pair_distances
from wnb.scoring.wasserstein import top_neurons, wasserstein_to_gaussian
from wnb.errors import WnbError
from wnb.reading.accumulator import ContextAccumulator
from wnb.reading.contexts import NeuronContexts
from wnb.reading.accumulator import contexts_from_outputs, neuron_contexts
from wnb.scoring.tables import layer_statistics
from wnb.reading.highlight import activation_html, context_html, contexts_html, token_activations, tokens_html
from wnb.reading.per_expert import expert_contexts, expert_summary, tail_routing
from wnb.data.positions import drop_positions, position_profile, position_tail_share
from wnb.reading.neuron import differentiating_pairs, output_effect, tail_concentration, token_table
from wnb.scoring.sign import gate_up_quadrants, shape_statistics, sign_quadrants, wasserstein_split
from wnb.compression.expansion import Expansion, RoutedLayer, expand_layer, expanded
from wnb.compression.router import Router
from wnb.compression.kmeans import kmeans
from wnb.experiments.layer_study import (LayerStudy, entanglement_change, expert_outputs, relative_improvement, ri_regression, study_layer, token_shares)
from wnb.experiments.sweeps import expansion_sweep
from wnb.experiments.sweeps import ablation, sweep
from wnb.model.architectures import layer_outputs
from wnb.scoring.comparison import neuron_errors, output_rmse, output_shift
from wnb.tracing.nll import perplexity, perplexity_interval, token_nll
from wnb.compression.sparsegpt import SparseGPT
from wnb.compression.sparsity import parse_sparsity
from wnb.compression.prune import prune_layer, prune_weight
from wnb.compression.pruned import pruned
from wnb.scoring.selection import select_neurons
from wnb.compression.quantize import effective_bits, fit_grid, model_effective_bits, quantize
from wnb.model.offload import offload_blocks, resident
from wnb.tracing.sequential import walk
from wnb.scoring.streaming import StreamingWD, stream_scores
from wnb.experiments.pair_scoring import (minimal_pair_accuracy, minimal_pair_scores, scoring_rule, sentence_logprobs, tokenizer_prefix)
from wnb.experiments.minimal_pairs import minimal_pairs
from wnb.experiments.knowledge import knowledge_pairs
from wnb.experiments.tse import tse_pairs
from wnb.sign_ablation import (matched_candidates, select_matched, select_random, select_wasserstein, selection_table,
                            sign_ablated, sign_ablation_depth, sign_ablation_study, study_selections,
                            wasserstein_scores)
from wnb.experiments.surprisal import (FUNCTION_WORDS, surprisal_by_class, token_class, token_classes, token_surprisal,
                        top_surprisal_tokens)
from wnb.model.lm import LM, wrap_model
from wnb.model.architectures import decoder_blocks, ffn_layers, first_ffn_layers, layer_weight, linear_layers
from wnb.model.loading import load_model
from wnb.compression.expansion_io import load_expanded, save_expanded
from wnb.compression.checkpoint import save_pruned
from wnb.experiments.tasks import evaluate_tasks

__all__ = ["ablation", "Activations", "cache_dir", "capture", "decoder_blocks", "entanglement_change",
           "estimate_bytes", "expand_layer", "expanded", "Expansion", "expansion_sweep", "expert_outputs",
           "ffn_layers", "first_ffn_layers", "kmeans", "layer_outputs", "layer_scores", "layer_weight",
           "LayerStudy", "linear_layers", "LM", "load_corpus", "load_model", "mapping_difficulty",
           "neuron_errors", "neuron_table", "offload_blocks", "output_rmse", "output_shift", "overview",
           "overview_table", "pair_distances", "parse_sparsity", "perplexity", "prune_layer", "prune_weight",
           "pruned", "relative_improvement", "resident", "ri_regression", "RoutedLayer", "Router",
           "select_neurons", "SparseGPT", "stream_scores", "StreamingWD", "study_layer", "sweep", "token_shares",
           "token_windows", "top_neurons", "walk", "wasserstein_to_gaussian", "WnbError", "wrap_model"]
__all__ += ["FUNCTION_WORDS", "matched_candidates", "minimal_pair_accuracy", "minimal_pair_scores", "minimal_pairs",
            "perplexity_interval", "select_matched", "select_random", "select_wasserstein", "selection_table",
            "sentence_logprobs", "sign_ablated", "sign_ablation_depth", "sign_ablation_study", "study_selections",
            "surprisal_by_class", "token_class", "token_classes", "token_nll", "token_surprisal",
            "top_surprisal_tokens", "wasserstein_scores"]

__all__ += ["activation_html", "ContextAccumulator", "context_html", "contexts_from_outputs", "contexts_html",
            "differentiating_pairs", "drop_positions", "expert_contexts", "expert_summary", "gate_up_quadrants",
            "layer_statistics", "neuron_contexts", "NeuronContexts", "output_effect", "position_profile",
            "position_tail_share", "shape_statistics", "sign_quadrants", "tail_concentration", "tail_routing",
            "token_activations", "token_table", "tokens_html", "wasserstein_split"]

__all__ += ["effective_bits", "fit_grid", "model_effective_bits", "quantize"]

__all__ += ["evaluate_tasks", "load_expanded", "save_expanded", "save_pruned"]

__all__ += ["knowledge_pairs", "scoring_rule", "tokenizer_prefix", "tse_pairs"]

from wnb.core.version import VERSION as __version__  # noqa: E402  (from the package metadata)
