"""The sign-ablation figures against their tables: bar heights, error bars, lines (tests/unit/plots/test_plots.py style)."""
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from wnb import plots
from wnb.errors import WnbError
from wnb.plots.sign import sign_palette


def study_table():
    return pd.DataFrame({
        "selection": ["dense", "wasserstein", "random", "random", "matched"],
        "seed": pd.array([None, None, 0, 1, 0], dtype="Int64"),
        "n_neurons": [0, 30, 30, 30, 400], "perplexity": [20.0, 26.0, 20.5, 20.7, 25.5],
        "ppl_low": [18.0, 23.0, 18.4, 18.6, 23.1], "ppl_high": [22.0, 29.0, 22.6, 22.9, 28.0],
        "accuracy_simple": [0.9, 0.7, 0.85, 0.95, 0.8], "accuracy_vp_coordination": [0.8, 0.6, 0.8, 0.7, 0.75]})


def bar_containers(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def test_sign_ablation_bars_heights_intervals_and_labels():
    table = study_table()
    ax = plots.sign_ablation_bars(table).axes[0]
    (bars,) = bar_containers(ax)
    np.testing.assert_allclose([b.get_height() for b in bars], table["perplexity"])
    caps = bars.errorbar.lines[2][0].get_segments()  # the vertical error bars, one per bar
    np.testing.assert_allclose([s[0][1] for s in caps], table["ppl_low"])
    np.testing.assert_allclose([s[1][1] for s in caps], table["ppl_high"])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "dense\n0 neurons" and labels[3] == "random s1\n30 neurons" and labels[4].startswith("matched s0")
    assert ax.lines[-1].get_ydata()[0] == 20.0  # the dense line
    with pytest.raises(WnbError, match="no column 'perplexity'"):
        plots.sign_ablation_bars(table.drop(columns="perplexity"))


def test_sign_ablation_bars_without_intervals():
    table = study_table().drop(columns=["ppl_low", "ppl_high"])
    (bars,) = bar_containers(plots.sign_ablation_bars(table).axes[0])
    assert bars.errorbar is None
    np.testing.assert_allclose([b.get_height() for b in bars], table["perplexity"])


def test_minimal_pair_bars_average_the_seeds_and_draw_their_range():
    table = study_table()
    ax = plots.minimal_pair_bars(table).axes[0]
    containers = bar_containers(ax)
    assert [c.get_label() for c in containers] == ["dense", "wasserstein", "random (mean of 2)", "matched"]
    np.testing.assert_allclose([b.get_height() for b in containers[2]], [0.9, 0.75])  # the two seeds' mean
    np.testing.assert_allclose([b.get_height() for b in containers[1]], [0.7, 0.6])
    segments = containers[2].errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose([(s[0][1], s[1][1]) for s in segments], [(0.85, 0.95), (0.7, 0.8)])
    assert containers[0].errorbar is None
    with pytest.raises(WnbError, match="accuracy_"):
        plots.minimal_pair_bars(table[["selection", "perplexity"]])


def test_surprisal_bars_per_class_and_selection():
    table = pd.DataFrame({"token_class": ["determiner", "content", "determiner", "content"],
                          "token_share": [0.2, 0.8, 0.2, 0.8], "delta_nll": [0.3, 0.1, 0.05, 0.2],
                          "delta_sem": [0.01, 0.02, 0.03, 0.04],
                          "selection": ["wasserstein", "wasserstein", "matched", "matched"]})
    ax = plots.surprisal_bars(table).axes[0]
    w, m = bar_containers(ax)
    assert (w.get_label(), m.get_label()) == ("wasserstein", "matched")
    np.testing.assert_allclose([b.get_height() for b in w], [0.3, 0.1])
    np.testing.assert_allclose([b.get_height() for b in m], [0.05, 0.2])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["determiner\n20%", "content\n80%"]


def test_depth_profile_lines():
    table = pd.DataFrame({"mode": ["dense", "layer", "layer", "layer", "cumulative", "cumulative", "cumulative"],
                          "block": pd.array([None, 0, 1, 2, 0, 1, 2], dtype="Int64"),
                          "delta_perplexity": [0.0, 1.0, 0.5, 2.0, 1.0, 1.6, 3.9]})
    single, cumulative, summed = plots.depth_profile(table).axes[0].lines[:3]
    np.testing.assert_allclose(single.get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(single.get_ydata(), [1.0, 0.5, 2.0])
    np.testing.assert_allclose(cumulative.get_ydata(), [1.0, 1.6, 3.9])
    np.testing.assert_allclose(summed.get_ydata(), [1.0, 1.5, 3.5])
    with pytest.raises(WnbError, match="no column 'mode'"):
        plots.depth_profile(table.drop(columns="mode"))


def test_depth_profile_grammar_panel_per_phenomenon():
    table = pd.DataFrame({"mode": ["dense", "layer", "layer", "cumulative", "cumulative"],
                          "block": pd.array([None, 0, 1, 0, 1], dtype="Int64"),
                          "delta_perplexity": [0.0, 1.0, 0.5, 1.0, 1.6],
                          "delta_accuracy_simple": [0.0, -0.1, 0.02, -0.1, -0.05],
                          "delta_accuracy_tse/npi": [0.0, 0.0, -0.25, 0.0, -0.3]})
    fig = plots.depth_profile(table)
    assert len(fig.axes) == 2
    simple, npi = fig.axes[1].lines[:2]
    assert (simple.get_label(), npi.get_label()) == ("simple", "tse/npi")
    np.testing.assert_allclose(simple.get_ydata(), [-10.0, 2.0])  # points, each layer alone
    np.testing.assert_allclose(npi.get_ydata(), [0.0, -25.0])
    assert len(plots.depth_profile(table.drop(columns=["delta_accuracy_simple", "delta_accuracy_tse/npi"])).axes) == 1


def test_the_mirror_bar_names_its_side_and_has_its_own_colour():
    table = study_table()
    mirror = table.iloc[[1]].assign(selection="mirror", perplexity=21.0, ppl_low=19.5, ppl_high=22.5)
    table = pd.concat([table.iloc[:2], mirror, table.iloc[2:]], ignore_index=True).assign(side="negative")
    table.loc[2, "side"] = "positive"
    ax = plots.sign_ablation_bars(table).axes[0]
    (bars,) = bar_containers(ax)
    assert [t.get_text() for t in ax.get_xticklabels()][2] == "mirror\n(positive side)\n30 neurons"
    colours = [tuple(b.get_facecolor()[:3]) for b in bars]
    assert colours[2] == pytest.approx(sign_palette()["mirror"])
    assert len({colours[i] for i in (0, 1, 2, 3, 5)}) == 5  # dense, Wasserstein, mirror, random, matched all differ


def test_the_perplexity_axis_turns_logarithmic_when_one_row_dwarfs_the_rest():
    table = study_table()
    assert plots.sign_ablation_bars(table).axes[0].get_yscale() == "linear"
    table.loc[2, ["perplexity", "ppl_low", "ppl_high"]] = [1790.0, 1150.0, 2690.0]  # the mirror on SmolLM2
    ax = plots.sign_ablation_bars(table).axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    (bars,) = bar_containers(ax)
    np.testing.assert_allclose([b.get_height() for b in bars], table["perplexity"])
    low, high = ax.get_ylim()
    assert low < table["ppl_low"].min() and high > table["ppl_high"].max()  # every bar and interval in view
