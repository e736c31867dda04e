"""negative_mass: the share of WD below the raw zero per layer, against numeric integration of |F − Φ| on both
sides of z₀ = −mean/std of outputs read with a plain forward hook; a smooth (SiLU) model beside a ReLU one (OPT)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import hooked_outputs, tiny_opt
from matplotlib.figure import Figure
from scipy import stats

import wnb
from wnb.errors import WnbError
from wnb.plots.negative_mass import negative_mass_plot
from wnb.scoring.negative_mass import negative_mass


def _integrated(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column, ∫|F_z − Φ| below and above z₀ by the trapezoid rule on a fine grid."""
    z = (y - y.mean(0)) / y.std(0)
    z0 = -y.mean(0) / y.std(0)
    t = np.linspace(-12, 12, 240_001)
    phi = stats.norm.cdf(t)
    lower, upper = [], []
    for j in range(y.shape[1]):
        f = np.searchsorted(np.sort(z[:, j]), t, side="right") / z.shape[0]
        gap = np.abs(f - phi)
        below = t <= z0[j]
        lower.append(np.trapezoid(gap[below], t[below]))
        upper.append(np.trapezoid(gap[~below], t[~below]))
    return np.array(lower), np.array(upper)


@pytest.fixture(scope="module")
def opt():
    return tiny_opt()


@pytest.mark.parametrize("model", ["tiny_llama", "opt"])
def test_shares_equal_numeric_integration(model, request, tiny_windows):
    lm = request.getfixturevalue(model)
    table = negative_mass(lm, tiny_windows, fraction=0.1, progress=False)
    assert list(table["block"]) == list(range(3))
    assert set(table["activation"]) == ({"ReLU"} if model == "opt" else {"SiLUActivation"})
    for _, row in table.iterrows():
        y = hooked_outputs(lm, row["layer"], tiny_windows).double().numpy()
        lower, upper = _integrated(y)
        wd = lower + upper
        assert row["share_below_zero"] == pytest.approx(lower.sum() / wd.sum(), abs=2e-4)
        assert row["median_share_below_zero"] == pytest.approx(np.median(lower / wd), abs=2e-3)
        top = np.argsort(-wd)[:round(0.1 * y.shape[1])]
        assert row["top_share_below_zero"] == pytest.approx(lower[top].sum() / wd[top].sum(), abs=2e-3)
        assert row["frac_negative"] == pytest.approx((y < 0).mean())
        assert row["wd_mean"] == pytest.approx(wd.mean(), abs=2e-4)
        assert row["n_tokens"] == tiny_windows.numel() and row["n_neurons"] == y.shape[1]


def test_skip_first_and_bad_input(tiny_llama, tiny_windows):
    table = negative_mass(tiny_llama, tiny_windows, skip_first=1, progress=False, max_bytes=1)  # one layer a pass
    assert (table["n_tokens"] == tiny_windows.shape[0] * (tiny_windows.shape[1] - 1)).all()
    with pytest.raises(WnbError, match="not the first projection"):
        negative_mass(tiny_llama, tiny_windows, layers=["model.layers.0.mlp.up_proj"], progress=False)
    with pytest.raises(WnbError, match="fraction"):
        negative_mass(tiny_llama, tiny_windows, fraction=0, progress=False)


def test_the_plot(tiny_llama, opt, tiny_windows):
    tables = {"llama": negative_mass(tiny_llama, tiny_windows, progress=False),
              "opt": negative_mass(opt, tiny_windows, progress=False)}
    fig = negative_mass_plot(tables, title="negative mass")
    assert isinstance(fig, Figure)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "llama (SiLUActivation)" in labels and "opt (ReLU)" in labels
    assert isinstance(negative_mass_plot(tables["opt"]), Figure)
    with pytest.raises(WnbError, match="no column"):
        negative_mass_plot({"x": tables["opt"].drop(columns="activation")})
    assert wnb.negative_mass is negative_mass
