"""benchmarks/paper.py end to end on the bundled model, at a budget small enough for the test suite."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import paper
import pytest
from scipy import stats

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "small"
    argv = ["--small", "--windows", "16", "--eval-windows", "4", "--parts", "detail,ksweep", "--experts", "1", "2",
            "--detail-tokens", "2048", "-o", str(out)]
    assert paper.main(argv) == 0
    return out


def test_run_is_complete_and_lists_its_files(run):
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert set(manifest["files"]) == {"detail.csv", "detail_wd_vs_md.png", "ksweep.csv", "ksweep_ri_vs_wd.png",
                                      "paper_table.md"}
    for name in manifest["files"]:
        assert (run / name).stat().st_size > 0
    table = (run / "paper_table.md").read_text()
    assert "| k | RI neuron" in table and "WD-MD R²" in table


def test_detail_wd_is_the_distance_to_a_gaussian(run):
    """The table's WD of its top and median neurons against scipy's W1 to 10^5 normal quantiles."""
    import wnb

    detail = pd.read_csv(run / "detail.csv")
    lm = wnb.load_model(device="cpu")
    calib, _ = wnb.token_windows(lm, wnb.load_corpus(), seq_len=128, n_calib=16, n_eval=4, seed=0)
    layer = wnb.first_ffn_layers(lm)[1]
    y = wnb.capture(lm, [layer], calib, max_tokens=2048, inputs=False, progress=False)[layer].outputs.double().numpy()
    quantiles = stats.norm.ppf((np.arange(100_000) + 0.5) / 100_000)
    for row in (detail.iloc[0], detail.iloc[len(detail) // 2]):
        z = y[:, int(row["neuron"])]
        z = (z - z.mean()) / z.std()
        assert abs(row["wd"] - stats.wasserstein_distance(z, quantiles)) < 2e-3


def test_one_expert_is_sparsegpt(run):
    """k = 1 is plain SparseGPT, so every neuron's RI is exactly 1 (PAPER.md §5)."""
    sweep = pd.read_csv(run / "ksweep.csv").set_index("k")
    assert list(sweep.index) == [1, 2]
    np.testing.assert_allclose(sweep.loc[1, ["ri_neuron", "ri_median_wasserstein", "ri_median_rest"]], 1.0,
                               atol=1e-6)
    assert np.isfinite(sweep.loc[2, "ri_neuron"]) and sweep.loc[2, "paper_ri_neuron_2402"] == 1.24
