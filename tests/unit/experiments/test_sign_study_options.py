"""The sign study's options against references computed here from a plain forward hook: the ranking with
the first positions left out, the set's split-half stability, the matched control from the bottom of the
ranking, the twin controls (variance, tokens, positions) by plain loops, several pair sets with their
scoring rules named in the table, and the depth profile's grammar per phenomenon against scipy."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import hooked_outputs, tiny_word_llama
from scipy import stats

import wnb
from wnb.experiments import pair_sets, sign_controls
from wnb.scoring.samples import tail_count

FRACTION = 0.05  # 3 of 64 neurons per layer


@pytest.fixture(scope="module")
def windows():
    gen = torch.Generator().manual_seed(7)
    return torch.randint(0, 128, (6, 24), generator=gen), torch.randint(0, 128, (6, 24), generator=gen)


def _outputs(lm, calib, skip_first=0):
    """Every first-FFN layer's outputs on ``calib`` from a plain hook, the first positions dropped, and the
    flat rows kept."""
    rows = torch.arange(calib.numel())
    kept = rows % calib.shape[1] >= skip_first
    return {n: hooked_outputs(lm, n, calib).double()[kept] for n in wnb.first_ffn_layers(lm)}, rows[kept]


def _top(wd, k):
    return torch.argsort(wd, descending=True, stable=True)[:k]


def _ppl(lm, held_out, neurons):
    with wnb.sign_ablated(lm, neurons):
        return wnb.perplexity(lm, held_out, progress=False)


def test_ranking_without_the_first_positions_and_the_sets_stability(tiny_llama, windows):
    calib, held_out = windows
    table = wnb.sign_ablation_study(tiny_llama, calib, held_out, fraction=FRACTION, controls=(), skip_first=2,
                                    progress=False)
    w = table.iloc[1]
    assert w["skip_first"] == 2 and w["wd_rank_min"] == 1 and w["wd_rank_max"] == 3
    ys, rows = _outputs(tiny_llama, calib, skip_first=2)
    top = {n: _top(wnb.wasserstein_to_gaussian(y), 3) for n, y in ys.items()}
    everything, _ = _outputs(tiny_llama, calib)
    assert any(set(top[n].tolist()) != set(_top(wnb.wasserstein_to_gaussian(y), 3).tolist())
               for n, y in everything.items())  # leaving the first positions out changes the set here
    assert w["perplexity"] == pytest.approx(_ppl(tiny_llama, held_out, top), rel=1e-6)
    first = rows < 3 * calib.shape[1]  # windows 0-2 and 3-5
    shared = {n: len(set(_top(wnb.wasserstein_to_gaussian(y[first]), 3).tolist())
                     & set(_top(wnb.wasserstein_to_gaussian(y[~first]), 3).tolist())) for n, y in ys.items()}
    assert w["top_overlap"] == pytest.approx(sum(shared.values()) / (3 * len(shared)))
    worst = min(shared, key=lambda n: (shared[n], list(shared).index(n)))
    assert w["top_overlap_min"] == pytest.approx(shared[worst] / 3) and w["top_overlap_layer"] == worst
    assert pd.isna(table.iloc[0]["top_overlap"])


def test_matched_control_from_the_bottom_of_the_ranking(tiny_llama, windows):
    calib, held_out = windows
    table = wnb.sign_ablation_study(tiny_llama, calib, held_out, fraction=FRACTION, controls=("matched",),
                                    pool="bottom", progress=False)
    m = table.iloc[-1]
    assert m["selection"] == "matched" and m["pool"] == "bottom" and "bottom" in m["note"]
    count = int(m["per_layer"])
    ys, _ = _outputs(tiny_llama, calib)
    bottom = {n: torch.argsort(wnb.wasserstein_to_gaussian(y), stable=True)[:count] for n, y in ys.items()}
    assert m["perplexity"] == pytest.approx(_ppl(tiny_llama, held_out, bottom), rel=1e-6)
    assert (m["wd_rank_min"], m["wd_rank_max"]) == (64 - count + 1, 64)  # its neurons' ranks, shown in the row


def _greedy(chosen, pool, similarity):
    """The twin of each chosen neuron in turn: the most similar pool neuron not taken (ties: lowest index)."""
    free, out = sorted(pool), []
    for w in chosen:
        best = max(free, key=lambda p: (similarity(w, p), -p))
        free.remove(best)
        out.append(best)
    return out


def _cosine(a: Counter, b: Counter) -> float:
    return sum(a[t] * b[t] for t in a) / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))


def test_twin_controls_against_plain_loops(tiny_llama, windows):
    calib, held_out = windows
    table = wnb.sign_ablation_study(tiny_llama, calib, held_out, fraction=FRACTION,
                                    controls=("variance", "tokens", "positions"), progress=False)
    assert list(table["selection"]) == ["dense", "wasserstein", "variance", "tokens", "positions"]
    ys, rows = _outputs(tiny_llama, calib)
    flat, seq_len = calib.flatten(), calib.shape[1]
    expected = {c: {} for c in ("variance", "tokens", "positions")}
    for name, y in ys.items():
        wd = wnb.wasserstein_to_gaussian(y)
        order = torch.argsort(wd, descending=True, stable=True).tolist()
        chosen, pool = order[:3], order[6:]  # outside the top 10% (6 of 64)
        log_var = y.var(0, unbiased=False).log()
        tails = torch.argsort(y, dim=0, stable=True)[:tail_count(y.shape[0])]  # the lowest outputs (negative side)
        tokens = [Counter(flat[rows[tails[:, i]]].tolist()) for i in range(64)]
        bins = [Counter(int(p) if p < 4 else int(math.log2(p)) + 2 for p in (rows[tails[:, i]] % seq_len).tolist())
                for i in range(64)]
        expected["variance"][name] = _greedy(chosen, pool, lambda w, p: -abs(float(log_var[w] - log_var[p])))
        expected["tokens"][name] = _greedy(chosen, pool, lambda w, p: round(_cosine(tokens[w], tokens[p]), 12))
        expected["positions"][name] = _greedy(chosen, pool, lambda w, p: round(_cosine(bins[w], bins[p]), 12))
    scores = {n: wnb.wasserstein_to_gaussian(y) for n, y in ys.items()}
    statistics = wnb.study_statistics(tiny_llama, calib, list(ys), sign_controls.study_fields(expected), progress=False)
    rebuilt = wnb.study_selections(table, scores, statistics=statistics, windows=calib)
    for control, want in expected.items():
        got = rebuilt[(control, None)]
        assert {n: i.tolist() for n, i in got.items()} == want, control
        row = table[table["selection"] == control].iloc[0]
        assert row["n_neurons"] == table.iloc[1]["n_neurons"] and pd.isna(row["seed"])
        assert row["perplexity"] == pytest.approx(_ppl(tiny_llama, held_out, got), rel=1e-6)
        assert pd.notna(row["w_delta_perplexity"]) and row["wd_rank_min"] > 6
    assert "Wasserstein − tokens twins" in wnb.experiments.sign_statistics.study_words(table)


def test_twin_controls_need_their_statistics(tiny_llama, windows):
    scores = wnb.wasserstein_scores(tiny_llama, windows[0], progress=False)
    with pytest.raises(wnb.WnbError, match="variance"):
        wnb.sign_ablation_study(tiny_llama, None, windows[1], scores=scores, controls=("variance",), progress=False)
    with pytest.raises(wnb.WnbError, match="pool"):
        wnb.sign_ablation_study(tiny_llama, windows[0], windows[1], pool="top", progress=False)
    with pytest.raises(wnb.WnbError, match="score must be"):
        wnb.sign_ablation_study(tiny_llama, windows[0], windows[1], pair_score="max", progress=False)


@pytest.fixture(scope="module")
def word_lm():
    lm = tiny_word_llama()
    ids = lm.tokenizer(" ".join(p["good"] for p in wnb.minimal_pairs(n=8)), add_special_tokens=False).input_ids
    return lm, torch.tensor(ids[:16 * 12]).view(12, 16)


def test_pair_sets_and_their_scoring_rules_in_the_table(word_lm):
    lm, windows = word_lm
    pairs = pair_sets.pair_sets(["agreement", "tse"], n=1)
    table = wnb.sign_ablation_study(lm, windows[:6], windows[6:], fraction=FRACTION, controls=(), pairs=pairs,
                                    prefix="", progress=False)
    assert (table["pair_score"] == "agreement: sum, tse: mean").all()
    assert (table["scoring_rule"] == "from the second token").all()
    assert {"accuracy_agreement/simple", "accuracy_tse/negative_polarity_items"} <= set(table.columns)
    scores = wnb.wasserstein_scores(lm, windows[:6], progress=False)
    with wnb.sign_ablated(lm, wnb.select_wasserstein(scores, FRACTION)):
        direct = pair_sets.score_pair_sets(lm, pairs, prefix="", progress=False)
    assert table.iloc[1]["accuracy"] == direct["correct"].mean()
    tse = direct[direct["set"] == "tse"]
    assert table.iloc[1]["accuracy_tse/reflexive_anaphora"] == tse[
        tse["phenomenon"] == "tse/reflexive_anaphora"]["correct"].mean()


def test_depth_profile_scores_the_pairs_per_layer_and_phenomenon(word_lm):
    lm, windows = word_lm
    pairs = wnb.minimal_pairs(n=4, phenomena=["simple", "vp_coordination"])
    depth = wnb.sign_ablation_depth(lm, windows[:6], windows[6:], fraction=0.1, pairs=pairs, progress=False)
    scores = wnb.wasserstein_scores(lm, windows[:6], progress=False)
    top = wnb.select_wasserstein(scores, 0.1)
    dense = wnb.minimal_pair_scores(lm, pairs, progress=False)
    phenomena = dense["phenomenon"].to_numpy()
    assert (depth["scoring_rule"] == "after <s>").all() and (depth["pair_score"] == "sum").all()
    for _, row in depth[depth["mode"] == "layer"].iterrows():
        with wnb.sign_ablated(lm, {row["layer"]: top[row["layer"]]}):
            right = wnb.minimal_pair_scores(lm, pairs, progress=False)["correct"].to_numpy()
        before = dense["correct"].to_numpy()
        for phenomenon in ("simple", "vp_coordination"):
            part = phenomena == phenomenon
            assert row[f"delta_accuracy_{phenomenon}"] == pytest.approx(right[part].mean() - before[part].mean())
        lost, gained = int((before & ~right).sum()), int((~before & right).sum())
        want = 1.0 if lost + gained == 0 else stats.binomtest(lost, lost + gained, 0.5).pvalue
        assert row["mcnemar_p"] == pytest.approx(want)
        assert row["delta_acc_low"] <= row["delta_accuracy"] <= row["delta_acc_high"]
    assert np.isfinite(depth["delta_perplexity"]).all()
