"""Bad input to the entanglement functions gets a WnbError naming what is allowed (hardening issue)."""
import numpy as np
import pytest
import torch

import wnb
from wnb.errors import WnbError


@pytest.mark.parametrize("k", [-1, 0, 2.0, "3", True])
def test_top_neurons_refuses_a_bad_k(k):
    with pytest.raises(WnbError, match="k must be a whole number of at least 1"):
        wnb.top_neurons(torch.rand(100), k=k)


def test_top_neurons_takes_numpy_integers():
    assert wnb.top_neurons(torch.arange(10.0), k=np.int64(3)).tolist() == [9, 8, 7]


def test_wasserstein_upcasts_bfloat16_and_float16():
    y = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) ** 3
    for dtype in (torch.bfloat16, torch.float16):
        low = y.to(dtype)
        torch.testing.assert_close(wnb.wasserstein_to_gaussian(low), wnb.wasserstein_to_gaussian(low.float()),
                                   rtol=0, atol=0)


def test_wasserstein_accepts_numpy_and_refuses_other_types():
    y = np.random.default_rng(1).standard_normal((300, 3))
    torch.testing.assert_close(wnb.wasserstein_to_gaussian(y), wnb.wasserstein_to_gaussian(torch.from_numpy(y)))
    with pytest.raises(WnbError, match="torch tensor or a numpy array"):
        wnb.wasserstein_to_gaussian(y.tolist())


@pytest.mark.parametrize("chunk", [0, -3, 1.5])
def test_wasserstein_refuses_a_bad_chunk(chunk):
    with pytest.raises(WnbError, match="chunk must be a whole number"):
        wnb.wasserstein_to_gaussian(torch.randn(10, 2), chunk=chunk)


@pytest.mark.parametrize("n_pairs", [0, -5, 2.5])
def test_mapping_difficulty_refuses_a_bad_n_pairs(n_pairs):
    x, y = torch.randn(100, 3), torch.randn(100, 2)
    with pytest.raises(WnbError, match="n_pairs must be a whole number of at least 1"):
        wnb.mapping_difficulty(x, y, n_pairs=n_pairs)
    with pytest.raises(WnbError, match="n_pairs"):
        wnb.pair_distances(x, y, n_pairs=n_pairs)


def test_overview_table_of_an_all_constant_layer_is_nan_not_an_error(tiny_llama):
    layer = wnb.ffn_layers(tiny_llama)[0]
    row = wnb.overview_table(tiny_llama, {layer: torch.full((64,), float("nan"))}).iloc[0]
    assert row["constant"] == 64 and row["top_neurons"] == []
    assert all(np.isnan(row[c]) for c in ("wd_min", "wd_median", "wd_max", "wd_top_mean", "top_over_median"))
