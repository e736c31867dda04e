"""Positions (skip_first, first-token tails) and the sign view, against hand-made references and scipy."""
import numpy as np
import pytest
import torch
from helpers.positions import by_hand_without_first, hook_outputs
from scipy import integrate, stats

import wnb
import wnb.data
import wnb.scoring
from wnb.data.positions import SINK_SHARE
from wnb.errors import WnbError
from wnb.scoring.sign import up_projection_of

# ---------------------------------------------------------------- skip_first

def test_skip_first_equals_dropping_position_zero_by_hand(tiny, tiny_windows):
    layers = wnb.ffn_layers(tiny)[:2]
    seq_len = tiny_windows.shape[1]
    ref = hook_outputs(tiny, layers, tiny_windows)
    scores = wnb.layer_scores(tiny, tiny_windows, layers, max_tokens=None, skip_first=1, progress=False)
    for name in layers:
        expected = wnb.wasserstein_to_gaussian(by_hand_without_first(ref[name], seq_len))
        torch.testing.assert_close(scores[name], expected, rtol=0, atol=1e-12)
        assert not torch.allclose(scores[name], wnb.wasserstein_to_gaussian(ref[name]))
    stats = wnb.layer_statistics(tiny, tiny_windows, layers, max_tokens=None, skip_first=1, progress=False)
    torch.testing.assert_close(stats[layers[0]]["wd"], scores[layers[0]], rtol=0, atol=0)
    streamed = wnb.read_model(tiny, tiny_windows, layers[:1], wd="streaming", batch_size=2, skip_first=1,
                              progress=False)
    assert (streamed.scores()[layers[0]] - scores[layers[0]]).abs().max() < 2e-3
    assert streamed.stats[layers[0]]["bin_count"].sum() == tiny_windows.shape[0] * (seq_len - 1)  # tokens kept


def test_neuron_table_skip_first(tiny_llama, tiny_windows):
    layer = wnb.ffn_layers(tiny_llama)[0]
    acts = wnb.capture(tiny_llama, [layer], tiny_windows, progress=False)[layer]
    seq_len = tiny_windows.shape[1]
    table = wnb.neuron_table(acts.outputs, acts.inputs, n_pairs=30, seq_len=seq_len, skip_first=1)
    x, y = by_hand_without_first(acts.inputs, seq_len), by_hand_without_first(acts.outputs, seq_len)
    expected = wnb.neuron_table(y, x, n_pairs=30)
    for col in expected.columns:
        np.testing.assert_allclose(table[col], expected[col], rtol=0, atol=1e-12)
    assert {"pos0_tail_share", "sink"} <= set(table.columns)
    with pytest.raises(WnbError, match="seq_len"):
        wnb.neuron_table(acts.outputs, skip_first=1)
    with pytest.raises(WnbError, match="skip_first"):
        wnb.neuron_table(acts.outputs, seq_len=seq_len, skip_first=seq_len)


def test_drop_positions_handles_a_last_window_cut_short():
    y = torch.arange(23)[:, None].float()
    kept = wnb.drop_positions(y, seq_len=10, skip_first=2)
    assert kept[:, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19, 22]
    assert wnb.drop_positions(y, 10, 0) is y


def test_position_tail_share_against_direct_count():
    seq_len = 20
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(50 * seq_len, 3, generator=gen, dtype=torch.float64)
    first = torch.arange(y.shape[0]) % seq_len == 0
    y[first, 0] += 30
    share = wnb.position_tail_share(y, seq_len)
    for j in range(3):
        z = (y[:, j] - y[:, j].mean()) / y[:, j].std(correction=0)
        tail = z.abs() > 2.5
        assert share[j].item() == pytest.approx((tail & first).sum().item() / tail.sum().item())
    assert share[0] == 1.0 and share[1] < SINK_SHARE
    at3 = wnb.position_tail_share(y, seq_len, position=3)
    assert at3[0] == 0.0
    constant = wnb.position_tail_share(torch.ones(40, 1), seq_len)
    assert torch.isnan(constant).all()


def test_position_profile():
    seq_len = 8
    y = torch.arange(64, dtype=torch.float64).view(8, 8).T.reshape(-1, 1)  # value = window + 8·position
    frame = wnb.position_profile(y, seq_len, 0)
    assert frame["position"].tolist() == list(range(8))
    np.testing.assert_allclose(frame["mean"], [3.5 + 8 * p for p in range(8)])
    np.testing.assert_allclose(frame["std"], np.full(8, np.std(np.arange(8))))
    assert frame["count"].eq(8).all()
    skipped = wnb.position_profile(y, seq_len, 0, skip_first=3)
    assert skipped["position"].tolist() == [3, 4, 5, 6, 7]


def test_overview_flags_first_position_sinks_and_survives_a_constant_layer(tiny_llama):
    layers = wnb.ffn_layers(tiny_llama)[:2]
    scores = {layers[0]: torch.tensor([0.5, 0.4, 0.1, 0.2]), layers[1]: torch.full((4,), float("nan"))}
    shares = {layers[0]: torch.tensor([0.9, 0.2, 0.95, float("nan")]), layers[1]: torch.full((4,), float("nan"))}
    table = wnb.overview_table(tiny_llama, scores, fraction=0.5, pos0_shares=shares)
    first, constant = table.iloc[0], table.iloc[1]
    assert first["top_neurons"] == [0, 1] and first["sinks"] == 2 and first["sink_top_share"] == 0.5
    assert constant["constant"] == 4 and constant["top_neurons"] == [] and np.isnan(constant["wd_median"])
    assert np.isnan(constant["sink_top_share"]) and constant["sinks"] == 0
    assert "sinks" not in wnb.overview_table(tiny_llama, scores).columns


def test_overview_runs_with_skip_first(tiny_llama, tiny_windows):
    table = wnb.overview(tiny_llama, tiny_windows, max_tokens=None, skip_first=1, progress=False)
    assert len(table) == len(wnb.ffn_layers(tiny_llama)) and {"sinks", "sink_top_share"} <= set(table.columns)




# ---------------------------------------------------------------- the sign view

def quad_split(column, raw_zero=False):
    """∫ |F_n − Φ| below and above the split point (t = 0, or the raw zero t = −mean/std) by adaptive
    quadrature, piece by piece between the sorted samples."""
    z = np.sort((column - column.mean()) / column.std())
    split = -column.mean() / column.std() if raw_zero else 0.0
    n = len(z)
    knots = np.concatenate([[-np.inf], z, [np.inf]])
    parts = [0.0, 0.0]
    for i in range(n + 1):
        a, b, c = knots[i], knots[i + 1], i / n
        for side, (lo, hi) in enumerate(((a, min(b, split)), (max(a, split), b))):
            if lo < hi:
                parts[side] += integrate.quad(lambda t: abs(c - stats.norm.cdf(t)), lo, hi, limit=200)[0]
    return parts


def grid_split(column, raw_zero=False, points=400_001):
    """The same two integrals on a fine grid (trapezoid rule over [−12, 12] in standardized units)."""
    z = np.sort((column - column.mean()) / column.std())
    split = -column.mean() / column.std() if raw_zero else 0.0
    t = np.linspace(-12, 12, points)
    gap = np.abs(np.searchsorted(z, t, side="right") / len(z) - stats.norm.cdf(t))
    below = t <= split
    return (integrate.trapezoid(np.where(below, gap, 0), t), integrate.trapezoid(np.where(below, 0, gap), t))


def test_wasserstein_split_at_the_mean_against_quadrature_and_adds_up():
    rng = np.random.default_rng(0)
    y = np.stack([rng.gamma(2.0, size=80), -rng.gamma(2.0, size=80), rng.standard_normal(80)], axis=1)
    lower, upper = wnb.wasserstein_split(torch.from_numpy(y), at="mean")
    wd = wnb.wasserstein_to_gaussian(torch.from_numpy(y))
    torch.testing.assert_close(lower + upper, wd, rtol=0, atol=1e-9)
    for j in range(3):
        ref = quad_split(y[:, j])
        assert lower[j].item() == pytest.approx(ref[0], abs=1e-7)
        assert upper[j].item() == pytest.approx(ref[1], abs=1e-7)


def test_wasserstein_split_at_the_raw_zero_against_quadrature_and_a_grid():
    """Split at y = 0, i.e. t = z₀ = −mean/std: z₀ < 0 (mostly positive outputs), z₀ > 0 (mostly negative),
    z₀ below every sample (all outputs positive), z₀ above every sample, and a centred column (z₀ ≈ 0)."""
    rng = np.random.default_rng(6)
    y = np.stack([rng.gamma(2.0, size=90) - 0.5, 0.7 - rng.gamma(2.0, size=90), rng.normal(20.0, 2.0, 90),
                  -rng.gamma(40.0, size=90), rng.standard_normal(90) * 3], axis=1)
    z0 = -y.mean(0) / y.std(0)
    assert z0[0] < 0 < z0[1] and z0[2] < ((y[:, 2] - y[:, 2].mean()) / y[:, 2].std()).min()
    assert z0[3] > ((y[:, 3] - y[:, 3].mean()) / y[:, 3].std()).max()
    lower, upper = wnb.wasserstein_split(torch.from_numpy(y))  # at="zero" is the default
    torch.testing.assert_close(lower + upper, wnb.wasserstein_to_gaussian(torch.from_numpy(y)), rtol=0, atol=1e-9)
    for j in range(y.shape[1]):
        ref = quad_split(y[:, j], raw_zero=True)
        assert (lower[j].item(), upper[j].item()) == pytest.approx(ref, abs=1e-7)
        grid = grid_split(y[:, j], raw_zero=True)
        assert (lower[j].item(), upper[j].item()) == pytest.approx(grid, abs=2e-4)
    # no outputs on one side of zero: only the Gaussian's own mass is left there
    assert lower[2].item() == pytest.approx(integrate.quad(stats.norm.cdf, -np.inf, z0[2])[0], abs=1e-9)
    assert upper[3].item() == pytest.approx(integrate.quad(stats.norm.sf, z0[3], np.inf)[0], abs=1e-9)
    mean_split = wnb.wasserstein_split(torch.from_numpy(y), at="mean")
    assert abs(mean_split[0][0] - lower[0]) > 1e-3  # the two splits differ where the mean is far from zero
    with pytest.raises(WnbError, match="unknown split"):
        wnb.wasserstein_split(torch.from_numpy(y), at="median")


def test_wasserstein_split_finds_a_separate_negative_tail():
    """A lump of outputs far below the bulk puts most of the W1 integral at t < 0. (A merely skewed
    distribution need not: a long right tail pushes the bulk left and F − Φ is large at t < 0 too.)"""
    rng = np.random.default_rng(4)
    bulk = rng.standard_normal(20_000)
    lump = rng.random(20_000) < 0.05
    y = np.stack([np.where(lump, -5 - rng.random(20_000), bulk), np.where(lump, 5 + rng.random(20_000), bulk)], 1)
    lower, upper = wnb.wasserstein_split(torch.from_numpy(y), at="mean")
    assert lower[0] > 1.5 * upper[0] and upper[1] > 1.5 * lower[1]


def test_wasserstein_split_large_and_chunked():
    y = torch.randn(30_000, 5, generator=torch.Generator().manual_seed(1)) ** 3
    lower, upper = wnb.wasserstein_split(y)
    torch.testing.assert_close(lower + upper, wnb.wasserstein_to_gaussian(y), rtol=0, atol=1e-9)
    again = wnb.wasserstein_split(y, chunk=2)
    torch.testing.assert_close(again[0], lower, rtol=0, atol=1e-12)
    by_mean = wnb.wasserstein_split(y, chunk=2, at="mean")
    torch.testing.assert_close(by_mean[0] + by_mean[1], lower + upper, rtol=0, atol=1e-9)
    constant = wnb.wasserstein_split(torch.ones(10, 1))
    assert torch.isnan(constant[0]).all() and torch.isnan(constant[1]).all()


def test_shape_statistics_against_scipy():
    rng = np.random.default_rng(2)
    y = np.stack([rng.gamma(2.0, size=5000), rng.standard_normal(5000) - 0.3, np.full(5000, 2.0)], axis=1)
    out = wnb.shape_statistics(torch.from_numpy(y))
    np.testing.assert_allclose(out["skewness"][:2], stats.skew(y[:, :2]), rtol=1e-9)
    np.testing.assert_allclose(out["kurtosis"][:2], stats.kurtosis(y[:, :2]), rtol=1e-9)
    np.testing.assert_allclose(out["frac_negative"], (y < 0).mean(0))
    assert torch.isnan(out["skewness"][2]) and torch.isnan(out["kurtosis"][2])


def test_neuron_table_sign_columns():
    y = torch.randn(3000, 3, generator=torch.Generator().manual_seed(3))
    y[:, 0] = -(y[:, 0] ** 2)  # all outputs negative, a long lower tail
    y[:150, 2] -= 6.0  # a separate lump far below the bulk
    table = wnb.neuron_table(y, sign=True).set_index("neuron")
    for col in ("frac_negative", "skewness", "kurtosis", "wd_below_zero", "wd_above_zero", "wd_share_below_zero",
                "wd_below_mean", "wd_above_mean", "wd_share_below_mean"):
        assert col in table.columns
    for at in ("zero", "mean"):
        np.testing.assert_allclose(table[f"wd_below_{at}"] + table[f"wd_above_{at}"], table["wd"], atol=1e-9)
        np.testing.assert_allclose(table[f"wd_share_below_{at}"], table[f"wd_below_{at}"] / table["wd"], rtol=1e-12)
    assert table.loc[0, "frac_negative"] == 1.0 and table.loc[0, "skewness"] < -1
    z0 = (-y[:, 0].mean() / y[:, 0].std(correction=0)).item()  # no output above zero: only Φ's own tail there
    assert table.loc[0, "wd_above_zero"] == pytest.approx(integrate.quad(stats.norm.sf, z0, np.inf)[0], abs=1e-6)
    for j in range(3):
        below, above = quad_split(y[:, j].double().numpy(), raw_zero=True)
        assert table.loc[j, "wd_below_zero"] == pytest.approx(below, abs=1e-6)
    assert table.loc[2, "wd_share_below_mean"] > 0.6
    assert table.loc[1, "wd_share_below_mean"] == pytest.approx(0.5, abs=0.15)
    assert list(wnb.neuron_table(y).columns) == ["rank", "neuron", "wd", "mean", "variance"]  # unchanged default


def test_sign_quadrants_count_each_quadrant():
    gate = torch.tensor([[-1.0, 2.0], [-1.0, -2.0], [3.0, 0.0], [4.0, -1.0]])
    up = torch.tensor([[-1.0, 1.0], [2.0, -1.0], [-3.0, 0.0], [4.0, 1.0]])
    table = wnb.sign_quadrants(gate, up)
    assert table["tokens"].tolist() == [4, 4]
    assert table.loc[0, ["gate_neg_up_neg", "gate_neg_up_pos", "gate_pos_up_neg", "gate_pos_up_pos"]].tolist() == \
        [0.25, 0.25, 0.25, 0.25]
    assert table.loc[1, ["gate_neg_up_neg", "gate_neg_up_pos", "gate_pos_up_neg", "gate_pos_up_pos"]].tolist() == \
        [0.25, 0.25, 0.0, 0.5]  # zero counts as positive
    with pytest.raises(WnbError, match="same tokens"):
        wnb.sign_quadrants(gate, up[:3])


def test_gate_up_quadrants_stream_equals_hook_capture(tiny_llama, tiny_windows):
    gate, up = "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"
    assert up_projection_of(tiny_llama, gate) == up
    ref = hook_outputs(tiny_llama, [gate, up], tiny_windows)
    streamed = wnb.gate_up_quadrants(tiny_llama, gate, tiny_windows, batch_size=2, progress=False)
    expected = wnb.sign_quadrants(ref[gate], ref[up])
    assert streamed.equals(expected)
    seq_len = tiny_windows.shape[1]
    skipped = wnb.gate_up_quadrants(tiny_llama, gate, tiny_windows, neurons=[3, 7], skip_first=1, progress=False)
    by_hand = wnb.sign_quadrants(by_hand_without_first(ref[gate], seq_len), by_hand_without_first(ref[up], seq_len),
                                 neurons=[3, 7])
    assert skipped.equals(by_hand)


def test_sign_quadrants_refuse_non_gated_layers(tiny_llama, tiny_neox):
    with pytest.raises(WnbError, match="gated MLP"):
        wnb.gate_up_quadrants(tiny_llama, "model.layers.0.mlp.up_proj", torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(WnbError, match="gated MLP"):
        up_projection_of(tiny_neox, wnb.ffn_layers(tiny_neox)[0])
