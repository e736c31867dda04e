"""Several minimal-pair sets in one study: each named for what it is, phenomena kept apart, each scored by
its own rule (TSE by the mean per token, the others by the sum) against sentence_logprobs called per
sentence, and the first-token rule (wnb's or the authors') said in words."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_word_llama, word_tokenizer

import wnb
from wnb.errors import WnbError
from wnb.experiments import minimal_pairs, pair_scoring, pair_sets


def test_each_set_is_named_for_what_it_is():
    assert set(pair_sets.SET_NAMES) == set(minimal_pairs.SOURCES)
    assert "Marvin" not in pair_sets.set_label("agreement") and "hand-made" in pair_sets.set_label("agreement")
    assert "Marvin & Linzen" in pair_sets.set_label("tse") and "BLiMP" in pair_sets.set_label("blimp")
    assert pair_sets.set_of("/data/my_pairs.jsonl") == "my_pairs"


def test_several_sets_keep_their_phenomena_apart():
    one = pair_sets.pair_sets(["tse"], n=2)
    assert {p["set"] for p in one} == {"tse"} and "subject_verb_agreement" in {p["phenomenon"] for p in one}
    both = pair_sets.pair_sets(["agreement", "tse"], n=2)
    agreement = [p for p in both if p["set"] == "agreement"]
    assert len(agreement) == 2 * 6 and all(p["phenomenon"].startswith("agreement/") for p in agreement)
    assert {p["phenomenon"] for p in both if p["set"] == "tse"} == {
        "tse/subject_verb_agreement", "tse/reflexive_anaphora", "tse/negative_polarity_items"}
    # the same pairs as each set alone
    assert [(p["good"], p["bad"]) for p in agreement] == [(p["good"], p["bad"]) for p in wnb.minimal_pairs(n=2)]
    with pytest.raises(WnbError, match="twice"):
        pair_sets.pair_sets(["tse", "tse"])
    with pytest.raises(WnbError, match="unknown minimal pairs"):
        pair_sets.pair_sets(["tse", "nosuch"])


def test_each_set_scored_by_its_rule():
    lm = tiny_word_llama()
    pairs = pair_sets.pair_sets(["agreement", "tse"], n=1)
    table = pair_sets.score_pair_sets(lm, pairs, progress=False)
    assert list(table["good"]) == [p["good"] for p in pairs] and list(table["set"]) == [p["set"] for p in pairs]
    for rule, rows in (("sum", table["set"] == "agreement"), ("mean", table["set"] == "tse")):
        good = wnb.sentence_logprobs(lm, list(table.loc[rows, "good"]), score=rule, progress=False)
        bad = wnb.sentence_logprobs(lm, list(table.loc[rows, "bad"]), score=rule, progress=False)
        np.testing.assert_allclose(table.loc[rows, "good_logprob"], good, rtol=1e-6)
        np.testing.assert_allclose(table.loc[rows, "bad_logprob"], bad, rtol=1e-6)
    assert table.attrs["score"] == "agreement: sum, tse: mean" and table.attrs["scoring_rule"] == "after <s>"
    summed = pair_sets.score_pair_sets(lm, pairs, score="sum", prefix="", progress=False)
    rows = summed["set"] == "tse"
    want = wnb.sentence_logprobs(lm, list(summed.loc[rows, "good"]), score="sum", prefix="", progress=False)
    np.testing.assert_allclose(summed.loc[rows, "good_logprob"], want, rtol=1e-6)
    assert summed.attrs["score"] == "sum" and summed.attrs["scoring_rule"] == "from the second token"
    plain = pair_sets.score_pair_sets(lm, wnb.minimal_pairs(n=1), progress=False)  # a list without sets: summed
    assert set(plain["set"]) == {pair_sets.UNNAMED} and plain.attrs["score"] == "sum"
    with pytest.raises(WnbError, match="score must be"):
        pair_sets.score_pair_sets(lm, pairs, score="median")


def test_first_token_rules():
    assert pair_sets.first_token_prefix(word_tokenizer(), "wnb") is None
    assert pair_sets.first_token_prefix(word_tokenizer(), "authors") == ""  # adds no BOS itself: first word unscored
    assert pair_sets.first_token_prefix(word_tokenizer(prepend_bos=True), "authors") is None
    assert pair_scoring.scoring_rule(word_tokenizer(), pair_sets.first_token_prefix(word_tokenizer(), "authors")) \
        == "from the second token"
    with pytest.raises(WnbError, match="first-token rule"):
        pair_sets.first_token_prefix(word_tokenizer(), "theirs")
