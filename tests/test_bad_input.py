"""Bad input to the public API gets a WnbError naming what is allowed, before any long work."""
import numpy as np
import pytest
import torch

import wnb
from wnb.errors import WnbError

from conftest import VOCAB


def test_layers_must_be_names(tiny_llama, tiny_windows):
    with pytest.raises(WnbError, match="layer name or a list"):
        wnb.capture(tiny_llama, None, tiny_windows)
    with pytest.raises(WnbError, match="layer name or a list"):
        wnb.capture(tiny_llama, [3], tiny_windows)


@pytest.mark.parametrize("ids, bad", [([[1, VOCAB]], VOCAB), ([[-1, 2]], -1), ([[1, 10**6]], 10**6)])
def test_token_ids_outside_the_vocabulary(tiny_llama, ids, bad):
    with pytest.raises(WnbError, match=f"token id {bad} is outside the vocabulary"):
        wnb.perplexity(tiny_llama, ids)
    with pytest.raises(WnbError, match="outside the vocabulary"):
        wnb.capture(tiny_llama, wnb.ffn_layers(tiny_llama)[:1], ids)


def test_perplexity_needs_two_tokens_and_a_positive_batch(tiny_llama, tiny_windows):
    with pytest.raises(WnbError, match="at least 2 tokens"):
        wnb.perplexity(tiny_llama, [[5]])
    for batch in (0, -1, 1.5):
        with pytest.raises(WnbError, match="batch_size"):
            wnb.perplexity(tiny_llama, tiny_windows, batch_size=batch)


@pytest.mark.parametrize("batch", [0, -1])
def test_pruned_batch_size(tiny_llama, tiny_windows, batch):
    dense = [p.clone() for p in tiny_llama.model.parameters()]
    with pytest.raises(WnbError, match="batch_size"):
        with wnb.pruned(tiny_llama, "sparsegpt", 0.5, calib=tiny_windows, batch_size=batch):
            pass
    assert all(torch.equal(p, q) for p, q in zip(tiny_llama.model.parameters(), dense))


def test_prune_weight_arguments():
    w, x = torch.randn(8, 16), torch.randn(64, 16)
    with pytest.raises(WnbError, match="percdamp must be a number"):
        wnb.prune_weight(w, x, percdamp="0.01")
    with pytest.raises(WnbError, match="percdamp"):
        wnb.prune_weight(w, x, percdamp=-0.1)
    x[3, 2] = float("nan")
    for method in ("sparsegpt", "wanda"):
        with pytest.raises(WnbError, match="NaN"):
            wnb.prune_weight(w, x, method=method)


def test_numpy_integers_are_integers(tiny_llama, tiny_windows):
    layer = wnb.ffn_layers(tiny_llama)[0]
    with wnb.expanded(tiny_llama, n_experts=np.int64(2), sparsity=0.5, calib=tiny_windows, layers=[layer],
                      progress=False) as expansion:
        assert expansion.layers[layer].n_experts == 2
    calib, _ = wnb.token_windows(_Tokenized(tiny_llama), "", seq_len=np.int64(4), n_calib=np.int32(2), n_eval=1)
    assert calib.shape == (2, 4)


def test_token_windows_arguments(tiny_llama):
    lm = _Tokenized(tiny_llama)
    with pytest.raises(WnbError, match="seq_len must be a whole number"):
        wnb.token_windows(lm, "", seq_len=8.5)
    with pytest.raises(WnbError, match="longer than .* context of 128"):  # the tiny model's positions
        wnb.token_windows(lm, "", seq_len=129, n_calib=1, n_eval=0)


def test_a_tied_output_layer_is_refused(tiny_gpt2, tiny_windows):
    assert tiny_gpt2.model.lm_head.weight is tiny_gpt2.model.transformer.wte.weight  # GPT-2 ties them
    embedding = tiny_gpt2.model.transformer.wte.weight.clone()
    with pytest.raises(WnbError, match="tied to transformer.wte.weight"):
        with wnb.pruned(tiny_gpt2, "magnitude", 0.5, layers=["lm_head"]):
            pass
    assert torch.equal(tiny_gpt2.model.transformer.wte.weight, embedding)


def test_unknown_device():
    with pytest.raises(WnbError, match="unknown device 'tpu'"):
        wnb.load_model(device="tpu")


class _Tokenized:
    """A tiny model whose 'tokenizer' returns fixed ids, so token_windows runs without a real tokenizer."""

    def __init__(self, lm):
        self.model, self.name = lm.model, lm.name
        self.tokenizer = lambda text, **kw: type("Ids", (), {"input_ids": torch.arange(200)[None] % VOCAB})()
