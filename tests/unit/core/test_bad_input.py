"""Bad input to the public API gets a WnbError naming what is allowed, before any long work."""
import numpy as np
import pytest
import torch
from helpers import VOCAB

import wnb
import wnb.model
import wnb.model.bundled
from wnb.errors import WnbError


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


# ---------------------------------------------------------------- issue 19: inputs that were answered silently

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_pruning_refuses_a_weight_holding_nan_or_inf(method, bad):
    """Magnitude kept a NaN weight and SparseGPT spread one over its row; every method refuses it."""
    w, x = torch.randn(8, 16), torch.randn(64, 16)
    w[2, 5] = bad
    with pytest.raises(WnbError, match=r"NaN or infinite value\(s\) \(the first at \[row, column\] \[2, 5\]\)"):
        wnb.prune_weight(w, x, method=method, sparsity=0.5)
    with pytest.raises(WnbError, match="NaN or infinite"):
        wnb.prune_weight(w, x, method=method, sparsity=0.5, neurons=[0, 1])  # even when the row is not pruned


def test_sparsegpt_and_experts_refuse_a_nan_weight():
    w, x = torch.randn(8, 16), torch.randn(64, 16)
    w[0, 0] = float("nan")
    with pytest.raises(WnbError, match="NaN or infinite"):
        wnb.SparseGPT(w)
    with pytest.raises(WnbError, match="NaN or infinite"):
        wnb.expand_layer(w, x, n_experts=2, pca_factor=None)


def test_pruning_refuses_complex_weights():
    """A complex weight was pruned as its real part (with only a torch warning)."""
    w = torch.randn(8, 16, dtype=torch.complex64)
    x = torch.randn(64, 16)
    for method in ("magnitude", "wanda", "sparsegpt"):
        with pytest.raises(WnbError, match="complex .*real weights only"):
            wnb.prune_weight(w, x, method=method)
    with pytest.raises(WnbError, match="complex"):
        wnb.SparseGPT(w)


def test_model_pruning_refuses_a_nan_weight_before_any_work(tiny_llama, tiny_windows):
    layer = wnb.ffn_layers(tiny_llama)[1]
    weight = wnb.layer_weight(tiny_llama, layer)
    acts = wnb.capture(tiny_llama, [layer], tiny_windows, progress=False)
    dense = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[3, 4] = float("nan")
        for method in ("magnitude", "sparsegpt"):
            with pytest.raises(WnbError, match=f"weight of {layer} holds 1 NaN"):
                with wnb.pruned(tiny_llama, method, 0.5, calib=tiny_windows, progress=False):
                    pytest.fail("pruning ran")
            with pytest.raises(WnbError, match=f"weight of {layer} holds 1 NaN"):
                wnb.prune_layer(tiny_llama, layer, acts, method=method)
        with pytest.raises(WnbError, match=f"weight of {layer} holds 1 NaN"):
            with wnb.expanded(tiny_llama, n_experts=2, calib=tiny_windows, pca_factor=None, progress=False):
                pytest.fail("expansion ran")
        assert torch.isnan(weight[3, 4]) and torch.equal(weight[:3], dense[:3])  # nothing was changed
    finally:
        with torch.no_grad():
            weight.copy_(dense)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_kmeans_and_the_router_refuse_non_finite_points(bad):
    """k-means returned NaN centroids and labelled every point 0."""
    x = torch.randn(50, 4)
    x[7, 1] = bad
    with pytest.raises(WnbError, match="1 of the 50 rows hold NaN or infinite"):
        wnb.kmeans(x, 3)
    with pytest.raises(WnbError, match="finite"):
        wnb.Router.fit(x, n_clusters=3, pca_factor=None)
    with pytest.raises(WnbError, match="finite"):
        wnb.Router.fit(x, n_clusters=3, pca_factor=2)
    with pytest.raises(WnbError, match="finite"):
        wnb.kmeans(torch.randn(50, 4), 3, init=torch.full((3, 4), bad))


def test_windows_longer_than_the_context_are_refused(tiny_llama):
    """The tiny Llama has 128 positions; a 129-token window ran (one 9,000-token window of the bundled model
    took 54 s) instead of being refused, as token_windows already refuses it."""
    long = torch.randint(0, VOCAB, (1, 129), generator=torch.Generator().manual_seed(0))
    layer = wnb.ffn_layers(tiny_llama)[0]
    for run in (lambda: wnb.capture(tiny_llama, [layer], long, progress=False),
                lambda: wnb.perplexity(tiny_llama, long, progress=False),
                lambda: wnb.token_nll(tiny_llama, long, progress=False)):
        with pytest.raises(WnbError, match="129 tokens are longer than .* context of 128 tokens; use .* at most 128"):
            run()
    assert wnb.token_nll(tiny_llama, long[:, :128], progress=False).shape == (1, 127)  # the context itself is fine


def test_the_bundled_model_refuses_a_revision(monkeypatch):
    """load_model(revision="nope") returned the bundled model as if the revision existed."""
    monkeypatch.setattr(wnb.model.loading, "load_bundled", lambda: pytest.fail("the model was loaded"))
    for name in (None, wnb.model.bundled.BUNDLED):
        with pytest.raises(WnbError, match="one version only, so revision must be None \\(got 'nope'\\)"):
            wnb.load_model(name, revision="nope")
