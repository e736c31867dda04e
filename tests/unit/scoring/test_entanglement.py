"""WD, top neurons and mapping difficulty against scipy, numerical integration and direct definitions."""
import numpy as np
import pytest
import torch
from scipy import integrate, stats

import wnb
import wnb.scoring.mapping
from wnb.errors import WnbError

NORMAL_QUANTILES = stats.norm.ppf((np.arange(10**6) + 0.5) / 10**6)


def standardized(x):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean()) / x.std()


def scipy_reference(column):
    """The authors' measure with the random N(0,1) sample replaced by 10^6 exact normal quantiles."""
    return stats.wasserstein_distance(standardized(column), NORMAL_QUANTILES)


def quad_reference(column):
    """∫ |F_n(t) − Φ(t)| dt by adaptive quadrature, piece by piece between the sorted samples."""
    z = np.sort(standardized(column))
    n = len(z)
    total = integrate.quad(stats.norm.cdf, -np.inf, z[0])[0] + integrate.quad(stats.norm.sf, z[-1], np.inf)[0]
    for i in range(n - 1):
        c = (i + 1) / n
        total += integrate.quad(lambda t: abs(c - stats.norm.cdf(t)), z[i], z[i + 1], limit=100)[0]
    return total


def test_normal_samples_score_near_zero():
    y = torch.from_numpy(np.random.default_rng(0).standard_normal((100_000, 3)))
    wd = wnb.wasserstein_to_gaussian(y)
    assert wd.dtype == torch.float64 and wd.shape == (3,)
    assert (wd < 0.01).all()


@pytest.mark.parametrize("dist", ["uniform", "exponential", "student_t", "bimodal"])
def test_matches_scipy_against_normal_quantiles(dist):
    rng = np.random.default_rng(1)
    n = 20_000
    samples = {
        "uniform": rng.uniform(-1, 3, n),
        "exponential": rng.exponential(2.0, n),
        "student_t": rng.standard_t(4, n),
        "bimodal": np.concatenate([rng.normal(-3, 0.5, n // 2), rng.normal(2, 1.0, n - n // 2)]),
    }[dist]
    wd = wnb.wasserstein_to_gaussian(torch.from_numpy(samples)[:, None].float())
    assert abs(wd.item() - scipy_reference(samples)) < 1e-3
    assert wd.item() > 0.02  # none of these is Gaussian


def test_exact_against_quadrature():
    y = np.random.default_rng(2).gamma(2.0, size=(60, 2))
    wd = wnb.wasserstein_to_gaussian(torch.from_numpy(y))
    for j in range(2):
        assert wd[j].item() == pytest.approx(quad_reference(y[:, j]), abs=1e-7)


def test_two_point_distribution_closed_form():
    """Standardized ±1 with equal mass: W1 = E|Z − sign(Z)|, by symmetry 2∫_0^∞ |t − 1| φ(t) dt."""
    y = torch.tensor([[-1.0], [1.0]] * 500)
    expected = 2 * integrate.quad(lambda t: abs(t - 1) * stats.norm.pdf(t), 0, np.inf)[0]
    assert wnb.wasserstein_to_gaussian(y).item() == pytest.approx(expected, abs=1e-9)


def test_invariant_to_positive_affine_maps_and_chunking():
    y = torch.from_numpy(np.random.default_rng(3).lognormal(size=(5000, 7)))
    wd = wnb.wasserstein_to_gaussian(y)
    torch.testing.assert_close(wnb.wasserstein_to_gaussian(3.5 * y - 11.0), wd, rtol=0, atol=1e-9)
    torch.testing.assert_close(wnb.wasserstein_to_gaussian(y, chunk=2), wd, rtol=0, atol=1e-12)


def test_constant_column_is_nan_and_never_ranked():
    y = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0))
    y[:, 2] = 5.0
    y[:, 0] = y[:, 0] ** 3  # heavy tails: the most entangled
    wd = wnb.wasserstein_to_gaussian(y)
    assert torch.isnan(wd[2]) and not torch.isnan(wd[[0, 1, 3]]).any()
    top = wnb.top_neurons(wd, k=4)
    assert 2 not in top.tolist() and top[0].item() == 0 and len(top) == 3


def test_top_neurons_fraction():
    wd = torch.from_numpy(np.random.default_rng(4).random(1000))
    top = wnb.top_neurons(wd, fraction=0.03)
    assert len(top) == 30
    assert top.tolist() == np.argsort(-wd.numpy())[:30].tolist()
    with pytest.raises(WnbError):
        wnb.top_neurons(wd, fraction=0)


def test_bad_shapes():
    with pytest.raises(WnbError):
        wnb.wasserstein_to_gaussian(torch.zeros(10))
    with pytest.raises(WnbError):
        wnb.wasserstein_to_gaussian(torch.zeros(1, 3))


def direct_md(x, y, i, j):
    """Mapping difficulty straight from the definition, pair by pair, in numpy."""
    dx = np.array([np.linalg.norm(x[a] - x[b]) for a, b in zip(i, j)])
    dy = np.abs(y[i] - y[j])
    return np.mean((dy / np.median(dy, axis=0)) / (dx / dx.max())[:, None], axis=0)


def test_mapping_difficulty_matches_definition():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 6))
    y = np.stack([x @ rng.standard_normal(6), np.tanh(3 * x[:, 0])], axis=1)
    md = wnb.mapping_difficulty(torch.from_numpy(x), torch.from_numpy(y), n_pairs=150, seed=7)
    i, j = wnb.scoring.mapping.sample_pairs(400, 150, seed=7)
    assert len(set(i.tolist()) | set(j.tolist())) == 300  # pairs are disjoint
    np.testing.assert_allclose(md.numpy(), direct_md(x, y, i.numpy(), j.numpy()), rtol=1e-10)


def test_step_neuron_is_harder_than_linear_one():
    """A jump makes close inputs map to distant outputs: the step neuron must score higher."""
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.standard_normal((20_000, 16)))
    w = torch.from_numpy(rng.standard_normal(16))
    s = x @ (w / w.norm())  # unit variance
    # a unit step at s = 1 (slightly tilted, so that the median output difference is not zero)
    y = torch.stack([s, (s > 1.0).double() + 0.1 * s], dim=1)
    md = wnb.mapping_difficulty(x, y, n_pairs=5000, seed=0)
    assert md[1] > 2 * md[0]


def test_mapping_difficulty_is_seeded():
    x = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0))
    y = torch.sin(3 * x)
    a = wnb.mapping_difficulty(x, y, n_pairs=200, seed=1)
    assert torch.equal(a, wnb.mapping_difficulty(x, y, n_pairs=200, seed=1))
    assert not torch.equal(a, wnb.mapping_difficulty(x, y, n_pairs=200, seed=2))


def test_neuron_table_ranks_by_wd():
    x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
    y = torch.cat([x, x[:, :1] ** 3], dim=1)
    table = wnb.neuron_table(y, inputs=x, weight=torch.eye(5, 4))
    assert table["neuron"].iloc[0] == 4 and table["rank"].tolist() == [1, 2, 3, 4, 5]
    assert list(table.columns) == ["rank", "neuron", "wd", "mean", "variance", "md", "weight_norm"]
    assert table["wd"].is_monotonic_decreasing
    np.testing.assert_allclose(table.set_index("neuron").loc[4, "variance"], y[:, 4].double().var(correction=0).item())


def test_pairs_kept_for_the_next_neuron_are_not_used_after_the_inputs_change():
    """input_pairs keeps its last result for the same inputs tensor; an in-place change or another
    tensor with equal shape must give the pairs of the new values (compared with a fresh copy)."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(400, 6, generator=g), torch.randn(400, 5, generator=g)
    first = wnb.mapping_difficulty(x, y, n_pairs=150)
    assert torch.equal(wnb.mapping_difficulty(x, y, n_pairs=150), first)
    x[:50] *= 10  # in place: the kept pairs' distances are stale now
    torch.testing.assert_close(wnb.mapping_difficulty(x, y, n_pairs=150),
                               wnb.mapping_difficulty(x.clone(), y, n_pairs=150), rtol=0, atol=0)
    other = torch.randn(400, 6, generator=g)
    torch.testing.assert_close(wnb.mapping_difficulty(other, y, n_pairs=150),
                               wnb.mapping_difficulty(other.clone(), y, n_pairs=150), rtol=0, atol=0)
    assert not torch.equal(wnb.mapping_difficulty(other, y, n_pairs=150), first)
