"""NeuronSketch against independent references on synthetic outputs: scipy's W1 to a fine grid of N(0, 1)
quantiles and the closed-form exact WD, numerical integration of the WD below the mean and below raw zero,
float64 moments, scipy's skewness and kurtosis, counts below zero, direct statistics by position."""
import math

import numpy as np
import pytest
import torch
from scipy import stats as st

import wnb
from wnb.data.positions import position_tail_share
from wnb.errors import WnbError
from wnb.scoring.sketch import NeuronSketch, Scratch, sketch_bytes
from wnb.scoring.wasserstein import wasserstein_to_gaussian

SEQ = 32


def columns(n: int, seed: int = 0) -> torch.Tensor:
    """Outputs of very different shapes: Gaussian, heavy tails, skewed, bimodal, far from zero (either side),
    centred exactly on zero, all positive, a position-0 sink, constant."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, 8, generator=gen, dtype=torch.float64)
    cols = [g[:, 0], g[:, 1] ** 3, torch.exp(g[:, 2]), torch.where(g[:, 3] > 0.5, g[:, 4] + 6, g[:, 4]),
            g[:, 5] * 0.1 - 40.0, g[:, 6] * 3 + 25.0, g[:, 7] - g[:, 7].mean(), g[:, 0].abs() + 0.01]
    sink = g[:, 1].clone()
    sink[::SEQ] += 30  # the first position of every window: an attention-sink-like tail
    cols += [sink, torch.full((n,), 2.5, dtype=torch.float64)]
    return torch.stack(cols, 1).float()


def read(y: torch.Tensor, batch: int, spread: bool = True, skip_first: int = 0) -> dict:
    sk = NeuronSketch(y.shape[1], SEQ, spread=spread, skip_first=skip_first)
    scratch = Scratch()
    for s in range(0, y.shape[0], batch):
        part = y[s:s + batch]
        full = part.shape[0] // SEQ * SEQ
        if full:
            sk.update(part[:full].view(-1, SEQ, y.shape[1]), scratch)
        if part.shape[0] > full:
            sk.update(part[full:], scratch)  # a window cut short (the last one)
    return sk.results()


def below_by_integration(y: torch.Tensor, at: str = "zero") -> torch.Tensor:
    """∫ |F_n − Φ| over standardized z below z₀ (``at="zero"``: z₀ = −mean/std, raw zero; ``"mean"``: z₀ = 0),
    on a fine grid (trapezoid)."""
    y = y.double()
    out = []
    for j in range(y.shape[1]):
        mean, std = y[:, j].mean(), y[:, j].std(correction=0)
        z = np.sort(((y[:, j] - mean) / std).numpy())
        z0 = float(-mean / std) if at == "zero" else 0.0
        grid = np.linspace(min(z[0], z0) - 9, z0, 400_001)
        f = np.searchsorted(z, grid, side="right") / z.size
        out.append(np.trapezoid(np.abs(f - st.norm.cdf(grid)), grid))
    return torch.tensor(out)


def scipy_wd(y: torch.Tensor) -> torch.Tensor:
    """scipy's W1 between each standardized column and 10⁶ N(0, 1) quantiles (within ~1e-5 of the continuous law)."""
    grid = st.norm.ppf((np.arange(1_000_000) + 0.5) / 1_000_000)
    y = y.double().numpy()
    return torch.tensor([st.wasserstein_distance((c - c.mean()) / c.std(), grid) for c in y.T])


@pytest.mark.parametrize("batch", [SEQ * 16, SEQ * 3 + 7])
def test_every_statistic_against_exact_references(batch):
    y = columns(SEQ * 256)  # 8,192 samples
    r = read(y, batch)
    live = slice(0, y.shape[1] - 1)
    torch.testing.assert_close(r["wd"][live], scipy_wd(y[:, live]), atol=1e-3, rtol=0)
    torch.testing.assert_close(r["wd"][live], wasserstein_to_gaussian(y)[live], atol=1e-3, rtol=0)
    torch.testing.assert_close(r["wd_lower"][live], below_by_integration(y[:, live], "mean"), atol=1e-3, rtol=0)
    torch.testing.assert_close(r["wd_lower"] + r["wd_upper"], r["wd"], equal_nan=True)
    torch.testing.assert_close(r["wd_below_zero"][live], below_by_integration(y[:, live]), atol=1e-3, rtol=0)
    torch.testing.assert_close(r["wd_below_zero"] + r["wd_above_zero"], r["wd"], equal_nan=True)
    y64 = y.double()
    torch.testing.assert_close(r["mean"], y64.mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(r["variance"], y64.var(0, correction=0), atol=1e-9, rtol=1e-5)
    varying = y64.numpy()[:, live]
    for name, ref in (("skewness", st.skew(varying)), ("kurtosis", st.kurtosis(varying))):  # excess kurtosis
        torch.testing.assert_close(r[name][live], torch.from_numpy(ref), atol=1e-4, rtol=1e-4)
    miscount = ((r["frac_negative"] - (y < 0).double().mean(0)) * y.shape[0]).abs()
    assert miscount[[0, 2, 3, 4, 5, 6, 7, 8, 9]].max() <= 1
    assert miscount[1] <= 0.006 * y.shape[0]  # g³: density spiking at zero, finer than the grid resolves there


def test_constant_neurons_are_nan_and_others_are_not():
    y = columns(SEQ * 64)
    r = read(y, SEQ * 8)
    for name in ("wd", "wd_lower", "wd_below_zero", "skewness", "kurtosis", "pos0_tail_share"):
        assert torch.isnan(r[name][-1]), name
        assert not torch.isnan(r[name][:-2]).any() or name == "pos0_tail_share", name
    # no output beyond ±2.5σ (the bimodal column): no tail share, as position_tail_share says
    assert torch.equal(torch.isnan(r["pos0_tail_share"]), torch.isnan(position_tail_share(y, SEQ)))
    assert r["frac_negative"][-1] == 0 and r["variance"][-1] == 0


def test_ties_of_bf16_outputs_with_spread():
    y = columns(SEQ * 256, seed=1)[:, :-1].bfloat16()
    r = read(y, SEQ * 16)
    torch.testing.assert_close(r["wd"], wasserstein_to_gaussian(y.float()), atol=1e-3, rtol=0)


def test_share_below_zero_is_exact_around_zero():
    """Outputs crowded around zero, zero itself included: the count below zero is a bin edge's prefix count."""
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(SEQ * 64, 6, generator=gen) * torch.tensor([1e-3, 1.0, 1.0, 10.0, 1e3, 1.0])
    y[:, 1] = torch.round(y[:, 1] * 4) / 4  # many exact zeros and ties
    y[:, 2] += 0.013  # zero just below the mean
    y[:, 5] -= 0.25
    r = read(y, SEQ * 8)
    assert torch.equal((r["frac_negative"] * y.shape[0]).round().long(), (y < 0).sum(0))


def test_positions_and_first_position_tail_share():
    y = columns(SEQ * 128)
    r = read(y, SEQ * 4, skip_first=1)
    kept = y.view(-1, SEQ, y.shape[1])[:, 1:]
    edges = r["bin_edges"].long().tolist()
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        part = kept[:, lo - 1:hi - 1].reshape(-1, y.shape[1]).double()
        assert r["bin_count"][b] == part.shape[0]
        torch.testing.assert_close(r["bin_mean"][b], part.mean(0), atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(r["bin_std"][b], part.std(0, correction=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r["mean"], kept.reshape(-1, y.shape[1]).double().mean(0), atol=1e-6, rtol=1e-6)
    r0 = read(y, SEQ * 4)
    exact = position_tail_share(y, SEQ)
    assert r0["pos0_tail_share"][8] > 0.9 and exact[8] > 0.9   # the sink column
    ok = ~torch.isnan(exact[:-1])
    assert (r0["pos0_tail_share"][:-1][ok] - exact[:-1][ok]).abs().max() < 0.1


def test_state_does_not_grow_with_tokens():
    small, large = NeuronSketch(10, SEQ), NeuronSketch(10, SEQ)
    small.update(columns(SEQ * 4).view(-1, SEQ, 10))
    for s in range(8):
        large.update(columns(SEQ * 64, seed=s).view(-1, SEQ, 10))
    assert small.nbytes() == large.nbytes() <= sketch_bytes(10, SEQ)


def test_bad_input():
    sk = NeuronSketch(4, SEQ)
    with pytest.raises(WnbError, match="positions"):
        sk.update(torch.zeros(2, SEQ + 1, 4))
    with pytest.raises(WnbError, match="at least 2"):
        sk.results()
    bad = torch.randn(SEQ, 4)
    bad[3, 1] = math.inf
    with pytest.raises(WnbError, match="NaN or infinite"):
        sk.update(bad)
    with pytest.raises(WnbError, match="even"):
        NeuronSketch(4, SEQ, n_bins=255)


def drifting(n: int, seed: int = 0) -> torch.Tensor:
    """Columns whose first windows are far narrower than the rest (the grid is set from the first batch): a
    neuron quiet at first, one nearly constant at first, one with rare spikes that the first windows lack,
    one crowded about zero with many exact zeros, and a Gaussian control."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    quiet, early = g[:, 0].clone(), slice(0, SEQ * 8)
    quiet[early] *= 1e-3
    near_constant = g[:, 1] ** 3 + 2.0
    near_constant[early] = 2.0 + 1e-6 * g[early, 1]
    spikes = g[:, 2] * 0.01
    spikes[SEQ * 8:][torch.rand(n - SEQ * 8, generator=gen) < 2e-3] = 50.0
    zeros = torch.where(g[:, 3] > 0, torch.zeros_like(g[:, 3]), g[:, 3] * 30)
    zeros[early] *= 1e-4
    return torch.stack([quiet, near_constant, spikes, zeros, g[:, 4]], 1).float()


@pytest.mark.parametrize("spread", [True, False])
def test_a_first_batch_far_narrower_than_the_rest(spread):
    """The grid is redrawn once a neuron outgrows it: WD within 1e-3 of scipy's, the moments against float64 and
    scipy, the count below zero exact, as if the first batch had been typical."""
    y = drifting(SEQ * 256)
    r = read(y, SEQ * 8, spread=spread)
    torch.testing.assert_close(r["wd"], scipy_wd(y), atol=1e-3, rtol=0)
    torch.testing.assert_close(r["wd_below_zero"], below_by_integration(y), atol=1e-3, rtol=0)
    y64 = y.double()
    torch.testing.assert_close(r["mean"], y64.mean(0), atol=1e-6 * y64.std(0).max().item(), rtol=1e-6)
    torch.testing.assert_close(r["variance"], y64.var(0, correction=0), atol=0, rtol=1e-5)
    for name, ref in (("skewness", st.skew(y64.numpy())), ("kurtosis", st.kurtosis(y64.numpy()))):
        torch.testing.assert_close(r[name], torch.from_numpy(ref), atol=1e-3, rtol=1e-4)
    assert torch.equal((r["frac_negative"] * y.shape[0]).round().long(), (y < 0).sum(0))
    exact = position_tail_share(y, SEQ)  # the first position's counts move with their bins
    assert (r["pos0_tail_share"] - exact).abs().max() < 0.1



def synthetic(n: int, seed: int = 0) -> torch.Tensor:
    """Nine shapes, from the Gaussian to ties, two modes, a drifting start and sparse spikes."""
    rng = np.random.default_rng(seed)
    cols = [rng.standard_normal(n), rng.standard_t(3, n), rng.exponential(2.0, n), rng.lognormal(0.0, 1.0, n),
            np.concatenate([rng.normal(-3, 0.5, n // 2), rng.normal(2, 1.0, n - n // 2)]), rng.uniform(-1, 3, n),
            rng.poisson(3.0, n).astype(np.float64),
            np.concatenate([rng.normal(0, 0.1, 1000), rng.standard_t(2, n - 1000) * 20]),
            np.where(rng.random(n) < 0.01, rng.normal(50, 5, n), rng.normal(0, 1, n))]
    return torch.from_numpy(np.stack(cols, axis=1)).float()


@pytest.mark.parametrize("batch", [SEQ, SEQ * 37 + 5])
def test_synthetic_distributions_match_scipy_within_1e3(batch):
    y = synthetic(SEQ * 600)
    wd = read(y, batch)["wd"]
    torch.testing.assert_close(wd, scipy_wd(y), atol=1e-3, rtol=0)
    assert wd[0] < 0.02 and (wd[1:] > 0.02).all()  # only the Gaussian column is close to Gaussian


def test_more_bins_are_more_accurate():
    y = torch.from_numpy(np.random.default_rng(2).standard_t(3, size=(SEQ * 640, 8))).float()
    exact = wasserstein_to_gaussian(y)
    errors = []
    for bins in (32, 256, 2048):
        sk = NeuronSketch(8, SEQ, n_bins=bins)
        for part in y.view(-1, SEQ, 8).split(64):
            sk.update(part)
        errors.append((sk.results()["wd"] - exact).abs().max().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 2e-4


def test_mean_and_variance_of_outputs_far_from_zero():
    y = torch.from_numpy(np.random.default_rng(1).lognormal(3.0, 1.0, size=(SEQ * 960, 5))).float() + 1000.0
    r = read(y, SEQ * 16)
    y64 = y.double()
    assert ((r["mean"] - y64.mean(0)).abs() < 1e-6 * y64.std(0)).all()
    torch.testing.assert_close(r["variance"], y64.var(0, correction=0), rtol=1e-5, atol=0)


def test_the_retired_streaming_names_say_what_replaced_them():
    for name in ("StreamingWD", "stream_scores"):
        with pytest.raises(AttributeError, match="retired.*read_model"):
            getattr(wnb, name)
        assert name not in wnb.__all__
    assert "NeuronSketch" in wnb.__all__
