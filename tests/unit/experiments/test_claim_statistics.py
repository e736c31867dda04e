"""The claims' statistics and verdicts on data whose truth is known by construction: planted heavy-tailed
neurons (W1), a planted linear WD-MD relation of known R² (W2, W5), planted paired effects of known size and
noise reaching each verdict, planted per-expert Gaussianisation against random partitions (W6), planted
token-class effects (N5) and per-layer accuracies (N6). Every number is checked against scipy or a closed
form, never against the code's own output."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from wnb.core.inference import paired_difference
from wnb.errors import WnbError
from wnb.experiments.claim_statistics import (
    below_zero_share,
    class_difference,
    combine,
    correlation,
    early_late,
    group_gaussianisation,
    judge,
    median_change,
    parts_verdict,
    r2_advantage,
    tail_excess,
    window_errors,
)
from wnb.experiments.claims import claim

QUANTILES = stats.norm.ppf((np.arange(5_000) + 0.5) / 5_000)


def scipy_wd(column: np.ndarray) -> float:
    """W1 of the standardized column to N(0, 1), by scipy against 5,000 normal quantiles."""
    z = (column - column.mean()) / column.std()
    return stats.wasserstein_distance(z, QUANTILES)


# ---------------------------------------------------------------- W1

def planted_layer(heavy: int, n: int = 512, d: int = 100, seed: int = 0) -> torch.Tensor:
    """Gaussian neurons, the first ``heavy`` of them replaced by a lump: 95% N(0, 1), 5% at −8."""
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((n, d))
    for j in range(heavy):
        y[rng.random(n) < 0.05, j] = -8.0
    return torch.from_numpy(y)


def test_w1_planted_heavy_tailed_neurons_hold_and_match_scipy():
    y = planted_layer(heavy=3)
    result = tail_excess(y, seq_len=64, n_boot=20, seed=0)
    wd = np.array([scipy_wd(y[:, j].numpy()) for j in range(y.shape[1])])
    expected = np.sort(wd)[-3:].mean() / np.median(wd)  # top 3% of 100 = 3 neurons
    assert result["ratio"] == pytest.approx(expected, rel=0.02)
    assert result["ratio"] > 3 * result["null"]
    assert judge(claim("W1"), result["value"], result["low"], result["high"])["verdict"] == "holds"


def test_w1_gaussian_layer_is_not_observed():
    """Only Gaussian neurons: the top 3% sit above the median by sampling alone, as much as the null says."""
    y = planted_layer(heavy=0)
    result = tail_excess(y, seq_len=64, n_boot=20, seed=0)
    wd = np.array([scipy_wd(y[:, j].numpy()) for j in range(y.shape[1])])
    assert result["ratio"] == pytest.approx(np.sort(wd)[-3:].mean() / np.median(wd), rel=0.02)
    assert result["low"] < 0 < result["high"] and result["high"] < claim("W1").minimum
    assert judge(claim("W1"), result["value"], result["low"], result["high"])["verdict"] == "not observed"


def test_w1_wide_layer_resamples_its_top_and_a_median_sample():
    """A layer of 1,200 neurons (36 planted): the half-samples take the top among the 72 highest and the median
    of 128 drawn at random; the ratio itself is still the whole layer's."""
    y = planted_layer(heavy=36, n=256, d=1200)
    result = tail_excess(y, seq_len=64, n_boot=10, seed=0)
    wd = np.array([scipy_wd(y[:, j].numpy()) for j in range(1200)])
    assert result["ratio"] == pytest.approx(np.sort(wd)[-36:].mean() / np.median(wd), rel=0.02)
    assert result["low"] < result["value"] < result["high"]
    assert judge(claim("W1"), result["value"], result["low"], result["high"])["verdict"] == "holds"


def test_w1_half_samples_give_the_standard_error_of_a_mean():
    """The delete-half jackknife's premise, checked on the mean of windows: the spread of half-sample means
    (without replacement) is the standard error of the full mean, σ/√n."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal(64)
    halves = [values[rng.permutation(64)[:32]].mean() for _ in range(4000)]
    assert np.std(halves) == pytest.approx(values.std() / math.sqrt(64), rel=0.05)


def test_w1_needs_whole_windows():
    with pytest.raises(WnbError, match="whole windows"):
        tail_excess(torch.randn(100, 4), seq_len=64)


# ---------------------------------------------------------------- W2, W5

def planted_line(n: int, slope: float, noise: float, seeds: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    return x, np.stack([2 + slope * x + noise * rng.standard_normal(n) for _ in range(seeds)])


def test_w2_planted_linear_relation_has_its_r2():
    """y = 2 + 0.5 x + 0.5 ε, x and ε standard normal: R² = 0.25 / (0.25 + 0.25) = 0.5."""
    x, ys = planted_line(4000, 0.5, 0.5, seeds=3)
    result = correlation(x, ys, n_boot=300, seed=0)
    assert result["r2"] == pytest.approx(0.5, abs=0.03)
    assert result["r2_low"] < 0.5 < result["r2_high"]
    assert result["value"] == pytest.approx(np.mean([stats.spearmanr(x, y).statistic for y in ys]), abs=1e-12)
    # Spearman's ρ of a bivariate normal with Pearson r: (6/π) arcsin(r/2)
    assert result["value"] == pytest.approx(6 / math.pi * math.asin(math.sqrt(0.5) / 2), abs=0.03)
    assert judge(claim("W2"), result["value"], result["low"], result["high"])["verdict"] == "holds"


def test_w2_unrelated_is_not_observed_and_nan_rows_dropped():
    x, ys = planted_line(4000, 0.0, 1.0, seeds=2)
    x[:5] = np.nan
    result = correlation(x, ys, n_boot=300, seed=0)
    assert result["n"] == 3995
    assert judge(claim("W2"), result["value"], result["low"], result["high"])["verdict"] == "not observed"


def test_w5_r2_advantage_of_a_planted_predictor():
    rng = np.random.default_rng(1)
    wd = rng.standard_normal(3000)
    table = pd.DataFrame({"wd": wd, "mean": rng.standard_normal(3000), "variance": rng.standard_normal(3000),
                          "ri": 1 + 0.5 * wd + 0.5 * rng.standard_normal(3000)})
    result = r2_advantage(table, n_boot=300, seed=0)
    assert result["r2_wd"] == pytest.approx(stats.linregress(table["wd"], table["ri"]).rvalue ** 2, abs=1e-10)
    assert result["r2_wd"] == pytest.approx(0.5, abs=0.04)
    assert result["value"] == pytest.approx(result["r2_wd"] - max(result["r2_mean"], result["r2_variance"]))
    assert judge(claim("W5"), result["value"], result["low"], result["high"])["verdict"] == "holds"


# ---------------------------------------------------------------- paired effects: every verdict

@pytest.mark.parametrize("delta, noise, n, expected", [
    (0.05, 0.01, 200, "holds"),          # far above 0
    (-0.05, 0.01, 200, "reversed"),      # far below 0
    (0.0, 0.01, 400, "not observed"),    # around 0, narrower than the 0.01 minimum effect
    (0.0, 0.5, 20, "inconclusive"),      # around 0, wider than the minimum effect
])
def test_paired_effects_reach_each_verdict(delta, noise, n, expected):
    """b − a = delta + noise·ε per window: the bootstrap interval is the normal-theory one (mean ± 1.96 s/√n,
    within 25%), and W3's rule (greater, minimum 0.01 nats) reads it as planted."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal(n)
    e = rng.standard_normal(n)
    diff = delta + noise * (e - e.mean())  # the planted mean exactly
    d = paired_difference(a, a + diff, n_boot=4000, seed=0)
    half = 1.96 * diff.std(ddof=1) / math.sqrt(n)
    assert d.delta == pytest.approx(diff.mean(), abs=1e-12)
    assert (d.high - d.low) / 2 == pytest.approx(half, rel=0.25)
    assert judge(claim("W3"), d.delta, d.low, d.high)["verdict"] == expected


def test_combine_and_the_weakest_part():
    assert combine(["holds", "holds"]) == "holds"
    assert combine(["holds", "reversed", "not observed"]) == "reversed"
    assert combine(["holds", "not observed", "inconclusive"]) == "not observed"
    assert combine(["holds", "inconclusive"]) == "inconclusive"
    parts = pd.DataFrame({"label": ["a", "b"], "value": [0.5, 0.02], "low": [0.4, -0.01], "high": [0.6, 0.05]})
    out = parts_verdict(claim("W3"), parts)
    assert out["verdict"] == "inconclusive" and out["value"] == 0.02 and out["parts_holding"] == "1 of 2"
    assert "weakest part b" in out["wording"]


def test_judge_uses_the_claims_null_and_direction():
    w6 = claim("W6")  # less, minimum 0.1
    assert judge(w6, -0.4, -0.5, -0.3)["verdict"] == "holds"
    assert judge(w6, 0.0, -0.05, 0.05)["verdict"] == "not observed"
    assert judge(w6, 0.2, 0.1, 0.3)["verdict"] == "reversed"


# ---------------------------------------------------------------- W6, W4

def test_w6_planted_per_expert_gaussianisation_beats_random_partitions():
    """Four experts, each Gaussian around its own centre: the mixture is far from Gaussian, each expert is
    Gaussian; random partitions of the same sizes keep the mixture in every group."""
    rng = np.random.default_rng(3)
    labels = torch.from_numpy(rng.integers(0, 4, 2000))
    centres = torch.tensor([-6.0, -2.0, 2.0, 6.0], dtype=torch.float64)
    y = centres[labels][:, None] + torch.from_numpy(rng.standard_normal((2000, 12)))
    table = group_gaussianisation(y, labels, 4, n_random=3, seed=0)
    shares = np.bincount(labels.numpy(), minlength=4) / 2000
    expected = sum(shares[c] * scipy_wd(y[labels == c, 0].numpy()) for c in range(4))
    assert table["wd_after"].iloc[0] == pytest.approx(expected, abs=2e-3)
    assert table["wd_before"].iloc[0] == pytest.approx(scipy_wd(y[:, 0].numpy()), abs=2e-3)
    result = median_change(table["ratio_corrected"], n_boot=300, seed=0)
    assert result["share_fallen"] == 1.0 and result["value"] < -0.5
    assert judge(claim("W6"), result["value"], result["low"], result["high"])["verdict"] == "holds"


def test_w6_the_correction_removes_the_small_sample_bias():
    """Gaussian outputs, groups unrelated to them, 32 tokens each: the uncorrected per-group WD rises (WD of
    fewer tokens is biased up), the corrected one stays: not observed."""
    rng = np.random.default_rng(4)
    labels = torch.from_numpy(np.repeat(np.arange(16), 32))
    y = torch.from_numpy(rng.standard_normal((512, 60)))
    table = group_gaussianisation(y, labels, 16, n_random=5, seed=0)
    raw = median_change(table["ratio_raw"], n_boot=300, seed=0)
    corrected = median_change(table["ratio_corrected"], n_boot=300, seed=0)
    assert raw["low"] > 0.5  # per-group WD of 32 Gaussian tokens is well above WD of 512
    assert abs(corrected["value"]) < 0.1
    assert judge(claim("W6"), raw["value"], raw["low"], raw["high"])["verdict"] == "reversed"
    assert judge(claim("W6"), corrected["value"], corrected["low"], corrected["high"])["verdict"] != "holds"


def test_window_errors_are_relative_norms_per_window():
    dense = torch.ones(6, 2, dtype=torch.float64)
    other = dense.clone()
    other[3:] *= 1.5  # second window: error 0.5 ‖y‖
    np.testing.assert_allclose(window_errors(dense, other, 3), [0.0, 0.5])


# ---------------------------------------------------------------- N1, N5, N6

def test_n1_a_lump_below_zero_puts_the_wd_there():
    y = planted_layer(heavy=4, d=100)
    wd = torch.tensor([scipy_wd(y[:, j].numpy()) for j in range(100)])
    result = below_zero_share(y, wd, fraction=0.04, n_boot=300)
    assert len(result["shares"]) == 4 and (result["shares"] > 0.5).all()
    assert judge(claim("N1"), result["value"], result["low"], result["high"])["verdict"] == "holds"


def test_n5_planted_function_word_excess():
    rng = np.random.default_rng(5)
    rows = []
    for w in range(30):
        for t in range(40):
            group = "function" if t % 3 == 0 else "content" if t % 3 == 1 else "punctuation"
            rows.append({"window": w, "group": group, "delta_nll": (0.1 if group == "function" else 0.0)
                         + 0.05 * rng.standard_normal()})
    table = pd.DataFrame(rows)
    result = class_difference(table, n_boot=500, seed=0)
    means = table.groupby("group")["delta_nll"].mean()
    assert result["value"] == pytest.approx(means["function"] - means["content"], abs=1e-12)
    assert result["low"] < 0.1 < result["high"]
    assert judge(claim("N5"), result["value"], result["low"], result["high"])["verdict"] == "holds"


def test_n6_early_late_normal_interval():
    blocks, acc, n = [5, 0, 3, 1], [0.8, 0.6, 0.8, 0.6], 200
    result = early_late(blocks, acc, n)
    half = 1.96 * math.sqrt(2 * 0.6 * 0.4 / n / 4 + 2 * 0.8 * 0.2 / n / 4)
    assert result["value"] == pytest.approx(-0.2)
    assert (result["high"] - result["low"]) / 2 == pytest.approx(half, rel=1e-3)
    assert judge(claim("N6"), result["value"], result["low"], result["high"])["verdict"] == "holds"
