"""One neuron across Sparse Expansion experts: every listed token is routed to its expert (checked with the
router itself), per-expert numbers equal direct ones, the tail spread sits next to a seeded random control."""
import math

import numpy as np
import pytest
import torch

import wnb
from wnb.errors import WnbError


class WordTokenizer:
    def decode(self, ids, **_):
        return " ".join(f"w{i}" for i in ids)


@pytest.fixture(scope="module")
def study_and_windows(tiny_llama):
    gen = torch.Generator().manual_seed(11)
    calib = torch.randint(0, 128, (8, 16), generator=gen)
    held = torch.randint(0, 128, (8, 16), generator=gen)
    study = wnb.study_layer(tiny_llama, "model.layers.1.mlp.gate_proj", calib, held, n_experts=3, sparsity=0.5,
                            pca_factor=8, progress=False)
    return study, calib, held


@pytest.mark.parametrize("on", ["held_out", "calib"])
def test_every_listed_token_is_routed_to_its_expert(study_and_windows, on):
    study, calib, held = study_and_windows
    windows = held if on == "held_out" else calib
    frame = wnb.expert_contexts(study, 4, windows, WordTokenizer(), k=3, width=2, on=on)
    inputs = study.held_inputs if on == "held_out" else study.calib_inputs
    routed = study.expansion.router.predict(inputs[torch.tensor(frame["token_index"].to_numpy())])
    assert routed.tolist() == frame["expert"].tolist()
    dense = (inputs @ study.weight.T)[:, 4]
    seq_len = windows.shape[1]
    for row in frame.itertuples():
        assert row.token_index == row.window * seq_len + row.position
        assert row.value == pytest.approx(dense[row.token_index].item(), rel=1e-5, abs=1e-6)
        assert row.token == f"w{windows[row.window, row.position].item()}"
    for (expert, side), group in frame.groupby(["expert", "side"]):
        members = torch.nonzero(study.labels(on) == expert).flatten()
        values = dense[members]
        expected = values.sort(descending=side == "high").values[:3]
        np.testing.assert_allclose(group["value"], expected.numpy(), rtol=1e-5)


def test_expert_summary_equals_direct_numbers(study_and_windows):
    study, _, _ = study_and_windows
    table = wnb.expert_summary(study, 4)
    labels = study.labels("held_out")
    dense = study.outputs("dense")[:, 4].double()
    own = study.outputs("expansion")[:, 4].double()
    assert table["tokens"].sum() == labels.numel() and table["share"].sum() == pytest.approx(1.0)
    for row in table.itertuples():
        members = labels == row.expert
        assert row.tokens == int(members.sum())
        if row.tokens >= 2:
            assert row.wd_dense == pytest.approx(wnb.wasserstein_to_gaussian(dense[members][:, None]).item())
            assert row.wd_expansion == pytest.approx(wnb.wasserstein_to_gaussian(own[members][:, None]).item())
            assert row.mean == pytest.approx(dense[members].mean().item())


def test_tail_routing_against_its_control(study_and_windows):
    study, _, _ = study_and_windows
    table = wnb.tail_routing(study, 4, threshold=1.5, n_control=100, seed=2).set_index("tail")
    z = study.outputs("dense")[:, 4].double()
    z = (z - z.mean()) / z.std(correction=0)
    labels = study.labels("held_out")
    both = table.loc["both"]
    tail = labels[z.abs() > 1.5]
    counts = torch.bincount(tail, minlength=3).double()
    assert both["tail_tokens"] == tail.numel()
    assert both["largest_expert"] == int(counts.argmax())
    assert both["largest_share"] == pytest.approx((counts.max() / counts.sum()).item())
    p = counts[counts > 0] / counts.sum()
    assert both["entropy"] == pytest.approx(float(-(p * p.log2()).sum()))
    assert 1 / 3 - 1e-9 <= both["control_share"] <= 1 and 0 <= both["p_share"] <= 1
    assert 0 <= both["control_entropy"] <= math.log2(3) + 1e-9
    assert table.reset_index().equals(wnb.tail_routing(study, 4, threshold=1.5, n_control=100, seed=2))


def test_router_that_splits_the_tails_beats_the_control():
    """A layer whose router sends the neuron's lower tail to one expert: largest share 1, p near 0."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(600, 4, generator=gen)
    x[:30, 0] -= 8.0  # thirty tokens far away along the neuron's own direction
    weight = torch.eye(2, 4)
    routed = wnb.expand_layer(weight, x, n_experts=2, sparsity=0.5, pca_factor=None)
    study = wnb.LayerStudy("toy", weight, None, x, x, weight, routed, 0.5)
    lower = wnb.tail_routing(study, 0, n_control=200, seed=0).set_index("tail").loc["lower"]
    assert lower["tail_tokens"] == 30 and lower["largest_share"] == 1.0 and lower["entropy"] == 0.0
    # one expert of 30 tokens holds the whole tail: chance would give it about 5%
    assert lower["expert_share"] == pytest.approx(30 / 600) and lower["enrichment"] == pytest.approx(20.0)
    assert lower["p_enrichment"] < 0.05 and lower["control_enrichment"] < 3


def test_bad_arguments(study_and_windows):
    study, calib, held = study_and_windows
    with pytest.raises(WnbError, match="between 0 and 63"):
        wnb.expert_summary(study, 64)
    with pytest.raises(WnbError, match="windows the study was built from"):
        wnb.expert_contexts(study, 0, held[:2])
    with pytest.raises(WnbError, match="outputs must be"):
        wnb.expert_contexts(study, 0, held, outputs="sparsegpt")
    with pytest.raises(WnbError, match="on must be"):
        wnb.tail_routing(study, 0, on="train")
