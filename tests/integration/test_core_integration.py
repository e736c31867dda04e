"""The bundled SmolLM2-135M-Instruct, offline: loading, perplexity, entanglement of a real layer."""
import pytest
import torch

import wnb
import wnb.model.bundled

pytestmark = pytest.mark.integration


def test_bundled_model_shape(bundled):
    assert len(wnb.decoder_blocks(bundled)) == 30
    assert len(wnb.ffn_layers(bundled)) == 90
    assert wnb.layer_weight(bundled, "model.layers.1.mlp.gate_proj").shape == (1536, 576)


def test_held_out_perplexity_is_sane(bundled, bundled_windows):
    _, held_out = bundled_windows
    ppl = wnb.perplexity(bundled, held_out[:8], progress=False)
    assert 5 < ppl < 40


def test_layer1_gate_proj_has_heavy_wd_tail(bundled, bundled_windows):
    calib, _ = bundled_windows
    name = "model.layers.1.mlp.gate_proj"
    act = wnb.capture(bundled, [name], calib, progress=False)[name]
    wd = wnb.wasserstein_to_gaussian(act.outputs)
    top = wnb.top_neurons(wd, fraction=0.03)
    assert len(top) == 46
    assert wd[top].mean() >= 2 * wd.median()
    # the capture is the layer's own computation on real text
    torch.testing.assert_close(act.outputs, act.inputs @ wnb.layer_weight(bundled, name).detach().T)


def test_corrupt_model_cache_is_rebuilt(bundled, tmp_path, monkeypatch):
    src = wnb.model.bundled.bundled_cache()
    monkeypatch.setenv("WNB_CACHE", str(tmp_path))
    dst = wnb.model.bundled.bundled_cache()
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    weights = dst / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: 1000])  # an interrupted copy
    lm = wnb.load_model(device="cpu")
    assert wnb.model.bundled.copy_complete(dst)
    assert weights.stat().st_size == (src / "model.safetensors").stat().st_size
    for name, param in bundled.model.state_dict().items():
        assert torch.equal(lm.model.state_dict()[name], param), name
