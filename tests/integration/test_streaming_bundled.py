"""Streaming WD, mean and variance against scipy, exact statistics and the in-memory capture."""
import numpy as np
import pytest
import torch
from scipy import stats

import wnb
import wnb.scoring
from wnb.scoring.streaming import stream_scores

NORMAL_QUANTILES = stats.norm.ppf((np.arange(10**6) + 0.5) / 10**6)


@pytest.mark.integration
def test_bundled_layer1_gate_proj_within_1e3(bundled, bundled_windows):
    calib, _ = bundled_windows
    name = "model.layers.1.mlp.gate_proj"
    outputs = wnb.capture(bundled, [name], calib, inputs=False, progress=False)[name].outputs
    acc = stream_scores(bundled, calib, [name], progress=False)[name]
    exact = wnb.wasserstein_to_gaussian(outputs)
    assert (acc.wasserstein() - exact).abs().max() < 1e-3
    torch.testing.assert_close(acc.variance, outputs.double().var(0, correction=0), rtol=1e-5, atol=0)
    top_exact = set(wnb.top_neurons(exact).tolist())
    top_stream = set(wnb.top_neurons(acc.wasserstein()).tolist())
    assert len(top_exact & top_stream) >= 0.9 * len(top_exact)
    table = acc.table(weight=wnb.layer_weight(bundled, name))
    assert table["rank"].tolist()[:3] == [1, 2, 3] and table["wd"].is_monotonic_decreasing
