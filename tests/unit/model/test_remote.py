"""Remote models through nnsight: the NDIF path, checked offline with nnsight's in-process simulation
(``remote="local"``: the trace is serialized and run as the server would), and on NDIF itself when a
key and the network are there."""
import os

import pytest
import torch

import wnb
from wnb.errors import WnbError

LAYER = "model.layers.1.mlp.gate_proj"


def test_remote_refusals_come_before_any_download(monkeypatch):
    from nnsight import CONFIG

    with pytest.raises(WnbError, match="does not host the bundled"):
        wnb.load_model(remote=True)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(WnbError, match="NDIF_API_KEY"):
        wnb.load_model("EleutherAI/pythia-70m", remote=True)
    with pytest.raises(WnbError, match="device"):
        wnb.load_model(remote="local", device="cuda")
    with pytest.raises(WnbError, match="remote must be"):
        wnb.load_model(remote="ndif")




@pytest.mark.skipif(not os.environ.get("NDIF_API_KEY"), reason="needs NDIF_API_KEY (and network access to NDIF)")
def test_ndif_capture():  # pragma: no cover - network
    name = os.environ.get("WNB_NDIF_MODEL", "openai-community/gpt2")
    try:
        lm = wnb.load_model(name, remote=True)
    except WnbError as exc:
        pytest.skip(f"NDIF or the Hugging Face hub is not reachable: {exc}")
    layer = wnb.first_ffn_layers(lm)[1]
    windows = torch.randint(0, 1000, (1, 16))
    acts = wnb.capture(lm, [layer], windows, progress=False)[layer]
    assert acts.outputs.shape == (16, wnb.layer_weight(lm, layer).shape[0])
    assert torch.isfinite(acts.outputs).all()


