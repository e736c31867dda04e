"""Remote models through nnsight: the NDIF path, checked offline with nnsight's in-process simulation
(``remote="local"``: the trace is serialized and run as the server would), and on NDIF itself when a
key and the network are there."""

import pytest
import torch

import wnb
from wnb.errors import WnbError

LAYER = "model.layers.1.mlp.gate_proj"


@pytest.mark.integration
def test_simulated_remote_capture_matches_local(bundled):
    windows = torch.randint(0, 1000, (3, 32), generator=torch.Generator().manual_seed(0))
    remote = wnb.load_model(remote="local")
    assert remote.remote == "local" and wnb.ffn_layers(remote) == wnb.ffn_layers(bundled)
    got = wnb.capture(remote, [LAYER], windows, batch_size=2, progress=False)[LAYER]
    want = wnb.capture(bundled, [LAYER], windows, batch_size=2, progress=False)[LAYER]
    torch.testing.assert_close(got.outputs, want.outputs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.inputs, want.inputs, rtol=1e-5, atol=1e-5)
    scores = wnb.read_model(remote, windows, [LAYER], wd="streaming", progress=False).scores()[LAYER]
    assert (scores - wnb.wasserstein_to_gaussian(want.outputs)).abs().max() < 1e-3

    for run in (lambda: wnb.perplexity(remote, windows),
                lambda: wnb.pruned(remote, method="magnitude").__enter__(),
                lambda: wnb.expanded(remote, n_experts=2, calib=windows, layers=[LAYER]).__enter__()):
        with pytest.raises(WnbError, match="remote"):
            run()


@pytest.mark.integration
def test_command_scores_through_the_remote_path(tmp_path, bundled):
    from wnb import cli

    out = tmp_path / "remote"
    assert cli.main(["score", "--remote", "local", "--seq-len", "32", "--windows", "2", "--eval-windows", "0",
                     "--layers", LAYER, "--detail", LAYER, "--pairs", "20", "--no-cache", "-q", "-o", str(out)]) == 0
    import json

    import pandas as pd

    info = json.loads((out / "manifest.json").read_text())
    assert info["status"] == "complete" and info["model"]["remote"] == "local"
    calib, _ = wnb.token_windows(bundled, wnb.load_corpus(), 32, 2, 0, 0)
    y = wnb.capture(bundled, [LAYER], calib, inputs=False, progress=False)[LAYER].outputs
    rows = pd.read_csv(out / "neurons.csv").sort_values("neuron")
    assert "weight_norm" not in rows  # no weights on this side
    torch.testing.assert_close(torch.tensor(rows["wd"].to_numpy()), wnb.wasserstein_to_gaussian(y), rtol=0, atol=1e-4)
