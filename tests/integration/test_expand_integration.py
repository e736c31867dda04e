"""Sparse Expansion of the bundled SmolLM2-135M: the paper's claims at small, fast budgets."""
import pytest
import torch

import wnb
import wnb.compression
from wnb.compression.expansion import expand_layer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def many_windows(bundled):
    """64 calibration and 16 held-out windows of 128 tokens: experts need enough tokens per cluster."""
    return wnb.token_windows(bundled, wnb.load_corpus(), seq_len=128, n_calib=64, n_eval=16, seed=0)


def test_layer_error_falls_as_experts_grow(bundled, many_windows):
    """One FFN layer at 90%: held-out relative output error for k = 1 (plain SparseGPT, see the unit tests),
    4 and 16."""
    calib, held = many_windows
    name = "model.layers.1.mlp.gate_proj"
    x = wnb.capture(bundled, [name], calib, outputs=False, progress=False)[name].inputs
    x_held = wnb.capture(bundled, [name], held, outputs=False, progress=False)[name].inputs
    weight = wnb.layer_weight(bundled, name).detach()
    dense = x_held @ weight.T
    errors = {}
    for k in (1, 4, 16):
        layer = expand_layer(weight, x, None, n_experts=k, sparsity=0.9)
        with torch.no_grad():
            errors[k] = ((layer(x_held) - dense).norm() / dense.norm()).item()
    assert errors[1] > errors[4] > errors[16], errors
    assert errors[16] < 0.95 * errors[1], errors


def test_expansion_beats_sparsegpt_on_the_model(bundled, many_windows):
    """Whole model, every FFN layer at 50%: sequential Sparse Expansion with k = 16 has a lower held-out
    perplexity than sequential SparseGPT on the same 8,192 calibration tokens (measured 24.51 vs 26.13;
    ~5 min on 2 CPU cores, most of it building 16 experts for each of the 90 layers)."""
    calib, held = many_windows
    with wnb.pruned(bundled, "sparsegpt", 0.5, calib, progress=False):
        ppl_sparsegpt = wnb.perplexity(bundled, held, progress=False)
    with wnb.expanded(bundled, n_experts=16, sparsity=0.5, calib=calib, progress=False) as exp:
        ppl_expansion = wnb.perplexity(bundled, held, progress=False)
        assert set(exp.layers) == set(wnb.ffn_layers(bundled))
    assert ppl_expansion < ppl_sparsegpt, (ppl_expansion, ppl_sparsegpt)
