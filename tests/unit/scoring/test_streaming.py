"""Streaming WD, mean and variance against scipy, exact statistics and the in-memory capture."""
import numpy as np
import pytest
import torch
from scipy import stats

import wnb
import wnb.scoring
from wnb.errors import WnbError
from wnb.scoring.streaming import StreamingWD, estimate_stream_bytes, stream_scores

NORMAL_QUANTILES = stats.norm.ppf((np.arange(10**6) + 0.5) / 10**6)


def scipy_wd(column):
    """W1 of the standardized column to N(0, 1), with N(0, 1) as 10^6 exact quantiles."""
    x = np.asarray(column, dtype=np.float64)
    return stats.wasserstein_distance((x - x.mean()) / x.std(), NORMAL_QUANTILES)


def feed(acc, y, sizes):
    """Feed ``y`` in batches whose sizes cycle through ``sizes``."""
    start, i = 0, 0
    while start < y.shape[0]:
        step = sizes[i % len(sizes)]
        acc.update(y[start:start + step])
        start, i = start + step, i + 1
    return acc


def synthetic(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    columns = {
        "normal": rng.standard_normal(n),
        "student_t3": rng.standard_t(3, n),
        "exponential": rng.exponential(2.0, n),
        "lognormal": rng.lognormal(0.0, 1.0, n),
        "bimodal": np.concatenate([rng.normal(-3, 0.5, n // 2), rng.normal(2, 1.0, n - n // 2)]),
        "uniform": rng.uniform(-1, 3, n),
        "poisson_ties": rng.poisson(3.0, n).astype(np.float64),
        # the first batch is far narrower than the rest: its grid must still cover the outliers
        "drifting": np.concatenate([rng.normal(0, 0.1, 1000), rng.standard_t(2, n - 1000) * 20]),
        "sparse_spikes": np.where(rng.random(n) < 0.01, rng.normal(50, 5, n), rng.normal(0, 1, n)),
    }
    return columns


def test_synthetic_distributions_match_scipy_within_1e3():
    columns = synthetic()
    y = torch.from_numpy(np.stack(list(columns.values()), axis=1)).float()
    wd = feed(StreamingWD(), y, [1000, 1, 4096, 333]).wasserstein()
    for j, (name, column) in enumerate(columns.items()):
        reference = scipy_wd(y[:, j].double().numpy())
        assert abs(wd[j].item() - reference) < 1e-3, name
    assert wd[0] < 0.02 and (wd[1:] > 0.02).all()  # only the normal column is close to Gaussian


def test_mean_and_variance_match_float64():
    y = torch.from_numpy(np.random.default_rng(1).lognormal(3.0, 1.0, size=(30_000, 5))).float() + 1000.0
    acc = feed(StreamingWD(), y, [512, 2048])
    std = y.double().std(0, correction=0)
    assert ((acc.mean - y.double().mean(0)).abs() < 1e-6 * std).all()
    torch.testing.assert_close(acc.variance, y.double().var(0, correction=0), rtol=1e-5, atol=0)
    assert acc.n_tokens == 30_000


def test_memory_does_not_grow_with_tokens():
    rng = torch.Generator().manual_seed(0)
    small = StreamingWD(n_bins=256).update(torch.randn(100, 64, generator=rng))
    before = small.nbytes()
    for _ in range(20):
        small.update(torch.randn(5000, 64, generator=rng))
    assert small.nbytes() == before
    assert before == StreamingWD(n_bins=256).update(torch.randn(3, 64)).nbytes()
    assert before < 64 * 256 * 20 + 64 * 100  # count and two moments per bin, a few numbers per neuron


def test_more_bins_are_more_accurate():
    y = torch.from_numpy(np.random.default_rng(2).standard_t(3, size=(20_000, 8))).float()
    exact = wnb.wasserstein_to_gaussian(y)
    errors = [(feed(StreamingWD(n_bins=b), y, [2048]).wasserstein() - exact).abs().max().item() for b in (32, 256, 2048)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 2e-4


def test_constant_neurons_are_nan():
    y = torch.randn(4000, 3, generator=torch.Generator().manual_seed(3))
    y[:, 1] = 7.0
    y[:1000, 2] = 0.0  # constant in the first batch only: still scored
    wd = feed(StreamingWD(), y, [1000]).wasserstein()
    assert torch.isnan(wd[1]) and not torch.isnan(wd[[0, 2]]).any()
    assert abs(wd[2].item() - scipy_wd(y[:, 2].numpy())) < 1e-3


def test_bad_input_is_refused():
    with pytest.raises(WnbError, match="n_bins"):
        StreamingWD(n_bins=4)
    with pytest.raises(WnbError, match="n_neurons"):
        StreamingWD().update(torch.randn(10))
    acc = StreamingWD().update(torch.randn(10, 3))
    with pytest.raises(WnbError, match="3 neurons"):
        acc.update(torch.randn(10, 4))
    with pytest.raises(WnbError, match="NaN"):
        acc.update(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(WnbError, match="at least 2 samples"):
        StreamingWD().update(torch.randn(1, 3)).wasserstein()


def test_capture_on_batch_sees_the_same_rows(tiny_llama, tiny_windows):
    layers = wnb.ffn_layers(tiny_llama)[:2]
    kept = wnb.capture(tiny_llama, layers, tiny_windows, batch_size=4, max_tokens=70, progress=False)
    seen = {n: [] for n in layers}

    def on_batch(batch):
        for name, acts in batch.items():
            seen[name].append(acts.outputs.clone())

    # max_bytes=1 would refuse a stored capture: with on_batch nothing is stored
    out = wnb.capture(tiny_llama, layers, tiny_windows, batch_size=4, max_tokens=70, inputs=False,
                      max_bytes=1, progress=False, on_batch=on_batch)
    assert out == {}
    for name in layers:
        assert len(seen[name]) == 2
        torch.testing.assert_close(torch.cat(seen[name]), kept[name].outputs)


def test_stream_scores_tiny_model_matches_exact(tiny_neox, tiny_windows):
    layers = wnb.ffn_layers(tiny_neox)
    acts = wnb.capture(tiny_neox, layers, tiny_windows, inputs=False, progress=False)
    scores = stream_scores(tiny_neox, tiny_windows, layers, batch_size=2, progress=False)
    assert list(scores) == layers
    for name in layers:
        y = acts[name].outputs.double()
        assert ((scores[name].mean - y.mean(0)).abs() < 1e-6 * y.std(0)).all()
        exact = wnb.wasserstein_to_gaussian(acts[name].outputs)
        assert (scores[name].wasserstein() - exact).abs().max() < 1e-3  # only 96 tokens per neuron here
    assert estimate_stream_bytes(tiny_neox, layers) == sum(s.nbytes() for s in scores.values())


