"""Streaming WD of the one-pass reader (the sketch) on the bundled model against the exact WD of a capture."""
import pytest
import torch

import wnb


@pytest.mark.integration
def test_bundled_layer1_gate_proj_within_1e3(bundled, bundled_windows):
    calib, _ = bundled_windows
    name = "model.layers.1.mlp.gate_proj"
    outputs = wnb.capture(bundled, [name], calib, inputs=False, progress=False)[name].outputs
    reading = wnb.read_model(bundled, calib, [name], wd="streaming", progress=False)
    assert reading.meta["wd"] == "streaming"
    wd, exact = reading.stats[name]["wd"], wnb.wasserstein_to_gaussian(outputs)
    assert (wd - exact).abs().max() < 1e-3
    torch.testing.assert_close(reading.stats[name]["variance"], outputs.double().var(0, correction=0), rtol=1e-5,
                               atol=0)
    top_exact = set(wnb.top_neurons(exact).tolist())
    assert len(top_exact & set(wnb.top_neurons(wd).tolist())) >= 0.9 * len(top_exact)
    table = reading.table(name, weight=wnb.layer_weight(bundled, name))
    assert table["rank"].tolist()[:3] == [1, 2, 3] and table["wd"].is_monotonic_decreasing
