"""What the sign study ranks and matches on: WD on two disjoint halves of the windows and the tails' rows
(exact and streaming) against a plain forward hook, the stability of the top set on planted scores, the
matched control's two pools, WD ranks, and the twin controls (variance, tokens, positions) on planted data."""
from __future__ import annotations

import pytest
import torch
from helpers import hooked_outputs

import wnb
from wnb.errors import WnbError
from wnb.scoring import controls, layers, selection, stability
from wnb.scoring.samples import tail_count

LAYER = "model.layers.1.mlp.gate_proj"


@pytest.mark.parametrize("skip_first", [0, 1])
def test_halves_and_tails_against_a_plain_hook(tiny_llama, tiny_windows, skip_first):
    stats = layers.score_layers(tiny_llama, tiny_windows, [LAYER], ("wd", "wd_halves", "low_tail", "high_tail"),
                                skip_first=skip_first, progress=False)[LAYER]
    y = hooked_outputs(tiny_llama, LAYER, tiny_windows).double()
    n, seq_len = tiny_windows.shape
    rows = torch.arange(n * seq_len)
    kept = rows % seq_len >= skip_first
    first = kept & (rows < (n // 2) * seq_len)
    second = kept & (rows >= (n // 2) * seq_len)
    torch.testing.assert_close(stats["wd_halves"][0], wnb.wasserstein_to_gaussian(y[first]))
    torch.testing.assert_close(stats["wd_halves"][1], wnb.wasserstein_to_gaussian(y[second]))
    k = tail_count(int(kept.sum()))
    assert k == 8 and stats["low_tail"].shape == (k, y.shape[1])  # 90 tokens: 1% is below the floor of 8
    for neuron in (0, 17, 63):
        values = y[kept, neuron]
        order = torch.argsort(values)
        want_low = set(rows[kept][order[:k]].tolist())
        want_high = set(rows[kept][order[-k:]].tolist())
        assert set(stats["low_tail"][:, neuron].tolist()) == want_low
        assert set(stats["high_tail"][:, neuron].tolist()) == want_high
        assert all(r % seq_len >= skip_first for r in want_low)


@pytest.mark.parametrize("skip_first", [0, 2])
def test_streaming_gives_the_same_halves_tails_and_skip_first(tiny_llama, tiny_windows, skip_first):
    fields = ("wd", "variance", "wd_halves", "low_tail", "high_tail")
    exact = layers.score_layers(tiny_llama, tiny_windows, [LAYER], fields, skip_first=skip_first, progress=False)[LAYER]
    streamed = layers.score_layers(tiny_llama, tiny_windows, [LAYER], fields, wd="streaming", skip_first=skip_first,
                                   batch_size=2, progress=False)[LAYER]
    torch.testing.assert_close(streamed["wd"], exact["wd"], atol=5e-3, rtol=0)
    torch.testing.assert_close(streamed["wd_halves"], exact["wd_halves"], atol=5e-3, rtol=0)
    torch.testing.assert_close(streamed["variance"], exact["variance"], rtol=1e-5, atol=1e-9)
    for tail in ("low_tail", "high_tail"):  # running extremes are exact
        assert [set(c) for c in streamed[tail].T.tolist()] == [set(c) for c in exact[tail].T.tolist()]


def test_halves_need_two_windows(tiny_llama, tiny_windows):
    with pytest.raises(WnbError, match="2 windows"):
        layers.score_layers(tiny_llama, tiny_windows[:1], [LAYER], ("wd_halves",), progress=False)


def test_stability_on_planted_halves():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(200, generator=gen)
    b = a.clone()
    top = torch.argsort(a, descending=True)[:10]  # the top 5%: swap 3 of them out in the second half
    b[top[:3]] = -1.0
    shared, k = stability.top_overlap(a, b, 0.05)
    assert (shared, k) == (7, 10)
    table = stability.set_stability({"x": torch.stack([a, b]), "y": torch.stack([a, a])}, 0.05)
    assert table["shared"].tolist() == [7, 10] and table["overlap"].tolist() == [0.7, 1.0]
    summary = stability.stability_summary(table)
    assert summary == {"top_overlap": 17 / 20, "top_overlap_min": 0.7, "top_overlap_layer": "x"}
    assert "85%" in stability.stability_words(summary, 0.05) and "70%" in stability.stability_words(summary, 0.05)
    with pytest.raises(WnbError, match=r"\[2, n_neurons\]"):
        stability.set_stability({"x": a}, 0.05)


def test_matched_pools_and_wd_ranks():
    wd = torch.tensor([0.9, 0.1, 0.5, 0.05, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6])  # ranks: 1 10 5 ... by hand below
    scores = {"x": wd}
    bottom = selection.matched_candidates(scores, exclude=0.2, pool="bottom")["x"]
    assert bottom.tolist() == [3, 1, 6, 5, 8, 2, 9, 4]  # lowest WD first, the top 2 (0 and 7) left out
    outside = selection.matched_candidates(scores, exclude=0.2, pool="outside", seed=1)["x"]
    assert sorted(outside.tolist()) == sorted(bottom.tolist()) and outside.tolist() != bottom.tolist()
    ranks = selection.wd_ranks(scores, {"x": torch.tensor([0, 3, 9])})
    assert ranks.tolist() == [1, 10, 4]
    with pytest.raises(WnbError, match="unknown pool"):
        selection.matched_candidates(scores, pool="top")


def _planted_scores(n=100, top=5):
    wd = torch.linspace(0.0, 1.0, n)
    return {"x": wd}, torch.arange(n - 1, n - 1 - top, -1)  # the top 5 by WD, highest first


def test_variance_twins_find_the_planted_twins():
    scores, top = _planted_scores()
    variance = torch.logspace(-3, 3, 100)
    twins = torch.tensor([7, 40, 12, 55, 3])
    variance[twins] = variance[top] * 1.0001  # a twin of each Wasserstein neuron, far from every other
    chosen = controls.select_twins("variance", scores, {"x": {"variance": variance}}, fraction=0.05)
    assert chosen["x"].tolist() == twins.tolist()


@pytest.mark.parametrize("by", ["tokens", "positions"])
def test_tail_twins_find_the_planted_twins(by):
    scores, top = _planted_scores()
    seq_len, k, n_windows = 64, 8, 20
    windows = torch.arange(n_windows * seq_len).view(n_windows, seq_len) % 97  # the token at row r is r % 97
    gen = torch.Generator().manual_seed(3)
    # every tail at positions 16-63 of random windows, on random tokens
    rows = torch.randint(0, n_windows, (k, 100), generator=gen) * seq_len + torch.randint(16, seq_len, (k, 100),
                                                                                           generator=gen)
    twins = torch.tensor([30, 8, 66, 21, 50])
    for i, (t, w) in enumerate(zip(twins, top)):
        if by == "positions":  # the Wasserstein neuron's tail at position i, its twin's too, in other windows
            rows[:, w] = torch.randint(0, n_windows, (k,), generator=gen) * seq_len + i
            rows[:, t] = torch.randint(0, n_windows, (k,), generator=gen) * seq_len + i
        else:  # the twin's tail on the same tokens (97 rows away), in another order
            moved = torch.where(rows[:, w] + 97 < windows.numel(), rows[:, w] + 97, rows[:, w] - 97)
            rows[:, t] = moved[torch.randperm(k, generator=gen)]
    stats = {"x": {"low_tail": rows}}
    chosen = controls.select_twins(by, scores, stats, fraction=0.05, windows=windows)
    assert chosen["x"].tolist() == twins.tolist()
    assert not set(chosen["x"].tolist()) & set(top.tolist())


def test_key_similarity_is_the_cosine_of_counts():
    keys = torch.tensor([[1, 5, 2], [1, 5, 2], [2, 7, 2]])  # neuron 0: {1, 1, 2}; 1: {5, 5, 7}; 2: {2, 2, 2}
    sim = controls.key_similarity(keys, torch.tensor([0]), torch.tensor([1, 2]))
    # by hand: counts 0 = (1:2, 2:1), 2 = (2:3): cos = 1·3 / (√5 · 3)
    torch.testing.assert_close(sim, torch.tensor([[0.0, 1 / 5 ** 0.5]], dtype=torch.float64))


def test_twins_refuse_missing_statistics():
    scores, _ = _planted_scores()
    with pytest.raises(WnbError, match="variance"):
        controls.select_twins("variance", scores, {"x": {}}, fraction=0.05)
    with pytest.raises(WnbError, match="windows"):
        controls.select_twins("tokens", scores, {"x": {"low_tail": torch.zeros(8, 100, dtype=torch.long)}})
    assert controls.twin_fields(["random", "variance", "tokens", "positions"], "both") == (
        "variance", "low_tail", "high_tail")
    assert controls.position_bins(torch.tensor([0, 1, 2, 3, 4, 7, 8, 15, 16, 2047])).tolist() == [
        0, 1, 2, 3, 4, 4, 5, 5, 6, 12]
