"""wnb: Wasserstein neurons, entanglement and sparsity in language models.

The public API (see README.md)::

    lm = wnb.load_model()
    calib, held_out = wnb.token_windows(lm, wnb.load_corpus(), seq_len=256, n_calib=32, n_eval=32)
    acts = wnb.capture(lm, ["model.layers.1.mlp.gate_proj"], calib)
    wd = wnb.wasserstein_to_gaussian(acts["model.layers.1.mlp.gate_proj"].outputs)
"""
from .cache import cache_dir
from .capture import Activations, capture, estimate_bytes
from .data import load_corpus, token_windows
from .entanglement import (layer_scores, mapping_difficulty, neuron_table, overview, overview_table,
                           pair_distances, top_neurons, wasserstein_to_gaussian)
from .errors import WnbError
from .contexts import ContextAccumulator, NeuronContexts, contexts_from_outputs, neuron_contexts
from .entanglement import layer_statistics
from .highlight import activation_html, context_html, contexts_html, token_activations, tokens_html
from .per_expert import expert_contexts, expert_summary, tail_routing
from .positions import drop_positions, position_profile, position_tail_share
from .reading import differentiating_pairs, output_effect, tail_concentration, token_table
from .sign_view import gate_up_quadrants, shape_statistics, sign_quadrants, wasserstein_split
from .expand import Expansion, Router, RoutedLayer, expand_layer, expanded, kmeans
from .analysis import (LayerStudy, entanglement_change, expansion_sweep, expert_outputs, relative_improvement,
                       ri_regression, study_layer, token_shares)
from .evaluate import (ablation, layer_outputs, neuron_errors, output_rmse, output_shift, perplexity,
                       perplexity_interval, sweep, token_nll)
from .prune import SparseGPT, parse_sparsity, prune_layer, prune_weight, pruned, select_neurons
from .quantize import effective_bits, fit_grid, model_effective_bits, quantize
from .offload import offload_blocks, resident
from .sequential import walk
from .streaming import StreamingWD, stream_scores
from .minimal_pairs import (minimal_pair_accuracy, minimal_pair_scores, minimal_pairs, scoring_rule,
                            sentence_logprobs, tokenizer_prefix)
from .knowledge import knowledge_pairs
from .tse import tse_pairs
from .sign_ablation import (matched_candidates, select_matched, select_random, select_wasserstein, selection_table,
                            sign_ablated, sign_ablation_depth, sign_ablation_study, study_selections,
                            wasserstein_scores)
from .surprisal import (FUNCTION_WORDS, surprisal_by_class, token_class, token_classes, token_surprisal,
                        top_surprisal_tokens)
from .models import (LM, decoder_blocks, ffn_layers, first_ffn_layers, layer_weight, linear_layers, load_model,
                     wrap_model)
from .saving import load_expanded, save_expanded, save_pruned
from .tasks import evaluate_tasks

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

__version__ = "0.1.0"
