"""Plot data against independent computations: scipy densities, numpy histograms, scipy regressions."""
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection, QuadMesh
from matplotlib.patches import StepPatch
from scipy import stats

from wnb import plots
from wnb.core.stats import r_squared
from wnb.errors import WnbError
from wnb.model.architectures import block_index


def stairs(ax):
    return [p for p in ax.patches if isinstance(p, StepPatch)]


def reference_density(x, edges):
    """Density over all samples (out-of-range ones count in n, as the bars promise)."""
    counts = np.array([((x >= lo) & (x < hi)).sum() for lo, hi in zip(edges[:-1], edges[1:])], dtype=float)
    counts[-1] += (x == edges[-1]).sum()
    return counts / (len(x) * (edges[1] - edges[0]))


def test_histogram_overlays_the_standard_normal_density():
    y = torch.from_numpy(np.random.default_rng(0).gamma(2.0, 3.0, 5000))
    fig = plots.output_histogram({"dense": y})
    ax = fig.axes[0]
    gauss = ax.lines[-1]
    t = gauss.get_xdata()
    assert gauss.get_label() == plots.GAUSSIAN_LABEL
    np.testing.assert_allclose(gauss.get_ydata(), stats.norm.pdf(t), rtol=0, atol=1e-15)
    assert t.min() <= -4 and t.max() >= 4  # the Gaussian's whole body is on screen


def test_histogram_bars_are_the_density_of_the_standardized_outputs():
    y = np.random.default_rng(1).standard_t(3, 4000) * 5 + 2
    (patch,) = stairs(plots.output_histogram(y, bins=50).axes[0])
    heights, edges = patch.get_data().values, patch.get_data().edges
    z = (y - y.mean()) / y.std()  # population std, as in the paper
    np.testing.assert_allclose(heights, reference_density(z, edges), rtol=1e-12)
    # the bars cover all but the far tails: their area is the share of samples inside the range
    inside = ((z >= edges[0]) & (z <= edges[-1])).mean()
    assert np.sum(heights * np.diff(edges)) == pytest.approx(inside)
    assert inside > 0.99


def test_histogram_first_standardizes_every_series_by_the_first():
    rng = np.random.default_rng(2)
    dense = rng.normal(1.0, 2.0, 3000)
    pruned = 0.5 * dense + 3.0
    fig = plots.output_histogram({"dense": dense, "pruned": pruned}, standardize_by="first", bins=60)
    (d, p) = stairs(fig.axes[0])
    edges = p.get_data().edges
    z_pruned = (pruned - dense.mean()) / dense.std()
    np.testing.assert_allclose(p.get_data().values, reference_density(z_pruned, edges), rtol=1e-12)
    # shifted by (0.5·mean + 3 − mean)/std and squeezed by half: the pruned mode moves right
    assert np.average(edges[:-1], weights=p.get_data().values) > np.average(edges[:-1], weights=d.get_data().values) + 1


def test_histogram_each_series_on_its_own_scale_and_weights_in_legend():
    rng = np.random.default_rng(3)
    a, b = rng.exponential(1.0, 2000), rng.normal(10.0, 0.1, 2000)
    fig = plots.output_histogram({"expert 0": a, "expert 1": b}, weights={"expert 0": 0.25, "expert 1": 0.75})
    ax = fig.axes[0]
    (pa, pb) = stairs(ax)
    edges = pa.get_data().edges
    np.testing.assert_allclose(pb.get_data().values, reference_density((b - b.mean()) / b.std(), edges), rtol=1e-12)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["expert 0 (25% of tokens)", "expert 1 (75% of tokens)", plots.GAUSSIAN_LABEL]


def test_histogram_raw_has_no_gaussian_and_rejects_bad_input():
    y = np.random.default_rng(4).normal(5, 1, 500)
    ax = plots.output_histogram(y, standardize_by=None).axes[0]
    assert not ax.lines
    assert stairs(ax)[0].get_data().edges[0] >= y.min() - 1e-9
    with pytest.raises(WnbError, match="standardize_by"):
        plots.output_histogram(y, standardize_by="median")
    with pytest.raises(WnbError, match="constant"):
        plots.output_histogram(np.ones(10))
    with pytest.raises(WnbError, match="at least one"):
        plots.output_histogram({})


def test_pair_scatter_draws_the_given_pairs_in_each_panel():
    rng = np.random.default_rng(5)
    dx = torch.from_numpy(rng.uniform(0, 1, 300))
    dy = torch.from_numpy(rng.exponential(1.0, (300, 3)))
    fig = plots.pair_scatter(dx, dy, {"Wasserstein neuron 7": 2, "ordinary neuron 1": 0})
    a, b = fig.axes
    assert a.get_title() == "Wasserstein neuron 7" and b.get_title() == "ordinary neuron 1"
    np.testing.assert_allclose(a.collections[0].get_offsets(), np.c_[dx.numpy(), dy[:, 2].numpy()])
    np.testing.assert_allclose(b.collections[0].get_offsets(), np.c_[dx.numpy(), dy[:, 0].numpy()])


def test_pair_scatter_subsamples_the_same_pairs_in_every_panel_seeded():
    rng = np.random.default_rng(6)
    dx, dy = rng.uniform(0, 1, 5000), rng.exponential(1.0, (5000, 2))
    one = plots.pair_scatter(dx, dy, {"a": 0, "b": 1}, max_points=700, seed=3)
    two = plots.pair_scatter(dx, dy, {"a": 0, "b": 1}, max_points=700, seed=3)
    pa, pb = (ax.collections[0].get_offsets() for ax in one.axes)
    assert len(pa) == 700
    np.testing.assert_array_equal(pa[:, 0], pb[:, 0])  # same pairs in both panels
    # every drawn point is a real pair: its dy is the dy of the pair with that dx
    index = {x: i for i, x in enumerate(dx)}
    rows = [index[x] for x in pa[:, 0]]
    np.testing.assert_array_equal(pb[:, 1], dy[rows, 1])
    np.testing.assert_array_equal(pa, two.axes[0].collections[0].get_offsets())
    with pytest.raises(WnbError, match="pairs"):
        plots.pair_scatter(dx[:10], dy, {"a": 0})


def test_neuron_scatter_fit_and_highlights_match_scipy():
    rng = np.random.default_rng(7)
    wd = rng.gamma(2.0, 0.05, 400)
    md = 1.5 + 2 * wd + rng.normal(0, 0.05, 400)
    md[3] = np.nan  # a constant neuron: left out
    table = pd.DataFrame({"neuron": np.arange(400), "wd": wd, "md": md})
    top = list(np.argsort(-wd)[:12])
    fig = plots.neuron_scatter(table, highlight=top, selected=int(top[0]))
    ax = fig.axes[0]
    ok = np.isfinite(md)
    fit = stats.linregress(wd[ok], md[ok])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"fit, R² = {fit.rvalue ** 2:.2f}" in labels
    assert r_squared(wd, md) == pytest.approx(fit.rvalue ** 2, rel=1e-12)
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_ydata(), fit.slope * line.get_xdata() + fit.intercept, rtol=1e-9)
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(points[0].get_offsets()) + len(points[1].get_offsets()) == ok.sum()
    assert len(points[1].get_offsets()) == 12
    np.testing.assert_allclose(points[2].get_offsets()[0], [wd[top[0]], md[top[0]]])
    with pytest.raises(WnbError, match="no column 'ri'"):
        plots.neuron_scatter(table, "ri", "wd")


def test_block_index_and_scores_frame():
    assert block_index("model.layers.12.mlp.gate_proj") == 12
    assert block_index("transformer.h.3.mlp.c_fc") == 3
    with pytest.raises(WnbError, match="block number"):
        block_index("lm_head")
    scores = {"m.layers.0.mlp.up": torch.tensor([0.1, float("nan"), 0.3]), "m.layers.1.mlp.up": torch.tensor([0.2])}
    frame = plots.scores_frame(scores)
    assert list(frame["block"]) == [0, 0, 1] and list(frame["neuron"]) == [0, 2, 0]


def overview_scores():
    rng = np.random.default_rng(8)
    scores = {}
    for block in range(4):
        for kind in ("gate_proj", "down_proj"):
            scores[f"model.layers.{block}.mlp.{kind}"] = torch.from_numpy(rng.gamma(2.0, 0.03 * (block + 1), 300))
    return scores


def test_overview_heatmap_cells_are_log_shares_per_block():
    scores = overview_scores()
    fig = plots.wd_overview(scores, style="heatmap", bins=20)
    heat_axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in heat_axes] == ["gate_proj", "down_proj"]
    mesh = [c for c in heat_axes[1].collections if isinstance(c, QuadMesh)][0]
    cells = np.ma.masked_invalid(mesh.get_array()).reshape(20, 4)  # rows: WD bins, columns: blocks
    top = max(s.max().item() for s in scores.values())
    edges = np.linspace(0, top * 1.0001, 21)
    for block in range(4):
        counts, _ = np.histogram(scores[f"model.layers.{block}.mlp.down_proj"].numpy(), bins=edges)
        share = counts / counts.sum()
        column = cells[:, block]
        np.testing.assert_array_equal(np.ma.getmaskarray(column), share == 0)
        np.testing.assert_allclose(column.compressed(), np.log10(share[share > 0]), rtol=1e-12)


def test_overview_violins_and_bad_style():
    fig = plots.wd_overview(overview_scores(), style="violin")
    assert [ax.get_title() for ax in fig.axes] == ["gate_proj", "down_proj"]
    assert len(fig.axes[0].collections) == 4  # one violin per block
    with pytest.raises(WnbError, match="style"):
        plots.wd_overview(overview_scores(), style="bars")


def test_to_png_size():
    fig = plots.output_histogram(np.random.default_rng(9).normal(size=100))
    png = plots.to_png(fig, dpi=50)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (round(fig.get_figwidth() * 50), round(fig.get_figheight() * 50))


def test_histogram_grid_panels_share_the_first_series_scale():
    rng = np.random.default_rng(10)
    dense = rng.gamma(2.0, 1.0, 3000)
    series = {"dense": dense, "SparseGPT": dense * 0.7 + 0.5, "expansion": dense * 0.95}
    fig = plots.histogram_grid(series, standardize_by="first", ncols=3, bins=30)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["dense", "SparseGPT", "expansion"]
    for ax, values in zip(visible, series.values()):
        (patch,) = stairs(ax)
        edges = patch.get_data().edges
        z = (values - dense.mean()) / dense.std()
        np.testing.assert_allclose(patch.get_data().values, reference_density(z, edges), rtol=1e-12)
        np.testing.assert_allclose(ax.lines[-1].get_ydata(), stats.norm.pdf(ax.lines[-1].get_xdata()), atol=1e-15)


def test_histogram_grid_per_expert_with_shares():
    rng = np.random.default_rng(11)
    experts = {f"expert {c}": rng.normal(c, 1 + c, 200) for c in range(5)}
    fig = plots.histogram_grid(experts, weights={"expert 0": 0.5, "expert 3": 0.125}, ncols=4)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 5 and len(fig.axes) == 8  # a 2 × 4 grid, 3 panels hidden
    assert visible[0].get_title() == "expert 0 · 50% of tokens" and visible[1].get_title() == "expert 1"
    assert visible[3].get_title() == "expert 3 · 12% of tokens"
    (patch,) = stairs(visible[4])
    x = experts["expert 4"]
    np.testing.assert_allclose(patch.get_data().values,
                               reference_density((x - x.mean()) / x.std(), patch.get_data().edges), rtol=1e-12)


def test_perplexity_curves_lines_markers_and_dense():
    table = pd.DataFrame({
        "method": ["dense", "wanda", "wanda", "wanda", "sparsegpt", "sparsegpt", "sparsegpt"],
        "sparsity": ["0%", "70%", "30%", "2:4", "30%", "70%", "4:8"],
        "perplexity": [10.0, 40.0, 11.0, 20.0, 10.5, 25.0, 15.0]})
    ax = plots.perplexity_curves(table).axes[0]
    dense, wanda, sparsegpt = ax.lines
    assert dense.get_ydata()[0] == 10.0
    np.testing.assert_allclose(wanda.get_xdata(), [0.3, 0.7])  # sorted by sparsity, N:M not on the line
    np.testing.assert_allclose(wanda.get_ydata(), [11.0, 40.0])
    np.testing.assert_allclose(sparsegpt.get_ydata(), [10.5, 25.0])
    marks = {tuple(c.get_offsets()[0]) for c in ax.collections}
    assert marks == {(0.5, 20.0), (0.5, 15.0)}  # 2:4 and 4:8 both zero half the weights
    assert ax.get_yscale() == "log"  # 10 → 40 spans more than 3×
    flat = table.assign(perplexity=[10.0, 12.0, 10.5, 11.0, 10.2, 11.5, 10.8])
    assert plots.perplexity_curves(flat).axes[0].get_yscale() == "linear"
    with pytest.raises(WnbError, match="perplexity"):
        plots.perplexity_curves(table.drop(columns="perplexity"))


def test_ablation_bars_heights_and_highlight():
    table = pd.DataFrame({"criterion": ["dense", "wd", "random", "mean", "variance", "weight_norm"],
                          "perplexity": [10.0, 19.0, 11.0, 11.5, 12.0, 10.8]})
    ax = plots.ablation_bars(table).axes[0]
    bars = ax.patches
    np.testing.assert_allclose([b.get_height() for b in bars], [19.0, 11.0, 11.5, 12.0, 10.8])
    colors = [b.get_facecolor() for b in bars]
    assert colors[0] != colors[1] and colors[1] == colors[2]  # WD stands out
    assert [t.get_text() for t in ax.get_xticklabels()] == ["wd", "random", "mean", "variance", "weight_norm"]
    assert ax.lines[0].get_ydata()[0] == 10.0


def test_before_after_points_and_median_ratio():
    rng = np.random.default_rng(12)
    before = rng.uniform(0.2, 0.6, 30)
    after = before * rng.uniform(0.3, 0.9, 30)
    table = pd.DataFrame({"neuron": np.arange(30), "wd_before": before, "wd_after": after,
                          "md_before": before + 1, "md_after": after + 1})
    fig = plots.before_after(table, title="t")
    wd_ax, md_ax = fig.axes
    np.testing.assert_allclose(wd_ax.collections[0].get_offsets(), np.c_[before, after])
    assert wd_ax.get_title() == f"WD: median after / before = {np.median(after / before):.2f}"
    assert md_ax.get_title() == f"MD: median after / before = {np.median((after + 1) / (before + 1)):.2f}"
    line = wd_ax.lines[0]
    np.testing.assert_allclose(line.get_xdata(), line.get_ydata())  # y = x
    with pytest.raises(WnbError, match="before"):
        plots.before_after(table[["neuron"]])
