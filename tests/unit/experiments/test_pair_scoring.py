"""Scoring minimal pairs by sum or mean log-probability, the first-token rules (wnb's and the follow-up
authors'), and BLiMP in full. References are plain PyTorch log-softmax over a tiny word-level Llama."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_word_llama, word_tokenizer

import wnb
from wnb.experiments import minimal_pairs as mp
from wnb.experiments import pair_scoring

TEXTS = ["The author laughs .", "The authors near the pilot laugh .", "The doctor that the lawyers like smiles .",
         "The pilots laugh and smile ."]


@pytest.fixture(scope="module")
def word_lm():
    return tiny_word_llama()


def _token_logprobs(model, ids: list[int], first: int) -> list[float]:
    """log p(ids[t] | ids[:t]) for t = first .. len(ids) - 1, one plain forward pass in float64."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return [float(logp[t - 1, ids[t]]) for t in range(first, len(ids))]


def _reference(lm, texts, before: list[int], score: str) -> np.ndarray:
    out = []
    for text in texts:
        ids = before + lm.tokenizer(text, add_special_tokens=False).input_ids
        per_token = _token_logprobs(lm.model, ids, max(len(before), 1))
        out.append(sum(per_token) / (len(per_token) if score == "mean" else 1))
    return np.array(out)


@pytest.mark.parametrize("score", ["sum", "mean"])
def test_sum_and_mean_equal_plain_pytorch(word_lm, score):
    bos = word_lm.tokenizer.convert_tokens_to_ids("<s>")
    ours = pair_scoring.sentence_logprobs(word_lm, TEXTS, batch_size=3, progress=False, score=score)
    np.testing.assert_allclose(ours, _reference(word_lm, TEXTS, [bos], score), rtol=0, atol=1e-5)


def test_mean_divides_by_the_number_of_scored_tokens(word_lm):
    total = pair_scoring.sentence_logprobs(word_lm, TEXTS, progress=False)
    mean = pair_scoring.sentence_logprobs(word_lm, TEXTS, progress=False, score="mean")
    words = [len(t.split()) for t in TEXTS]  # one token per word; after <s> every word is scored
    np.testing.assert_allclose(mean, total / np.array(words), rtol=1e-12)


def test_empty_prefix_scores_from_the_second_token(word_lm):
    """prefix="": nothing before the sentence, its first token unscored (the follow-up's code on
    tokenizers without an automatic BOS), although this tokenizer has a BOS that wnb would use."""
    for score in ("sum", "mean"):
        ours = pair_scoring.sentence_logprobs(word_lm, TEXTS, progress=False, prefix="", score=score)
        np.testing.assert_allclose(ours, _reference(word_lm, TEXTS, [], score), rtol=0, atol=1e-5)
    mean = pair_scoring.sentence_logprobs(word_lm, TEXTS, progress=False, prefix="", score="mean")
    total = pair_scoring.sentence_logprobs(word_lm, TEXTS, progress=False, prefix="")
    np.testing.assert_allclose(mean, total / (np.array([len(t.split()) for t in TEXTS]) - 1), rtol=1e-12)
    with pytest.raises(wnb.WnbError, match="no token to score"):
        pair_scoring.sentence_logprobs(word_lm, ["cat"], prefix="", progress=False)


def test_scoring_rule_says_what_comes_first():
    plain = word_tokenizer()
    assert pair_scoring.scoring_rule(plain) == "after <s>"
    assert pair_scoring.scoring_rule(plain, "") == "from the second token"
    assert pair_scoring.scoring_rule(plain, "the cat") == "after 'the cat'"
    assert pair_scoring.scoring_rule(word_tokenizer(bos=False)) == "after </s>"
    assert pair_scoring.scoring_rule(word_tokenizer(bos=False, eos=False)) == "from the second token"


def test_tokenizer_prefix_reproduces_the_tokenizers_own_special_tokens():
    from tokenizers import processors

    assert pair_scoring.tokenizer_prefix(word_tokenizer()) == ""                  # puts nothing before text (Pythia, Qwen)
    assert pair_scoring.tokenizer_prefix(word_tokenizer(prepend_bos=True)) is None  # puts its BOS: wnb's rule gives it too
    odd = word_tokenizer()
    eos = odd.convert_tokens_to_ids("</s>")
    odd.backend_tokenizer.post_processor = processors.TemplateProcessing(single="</s> $A",
                                                                         special_tokens=[("</s>", eos)])
    assert pair_scoring.tokenizer_prefix(odd) == "</s>" and pair_scoring.prefix_ids(odd, "</s>") == [eos]


def test_pair_tables_carry_the_score_the_rule_and_the_constructions(word_lm):
    pairs = [{"good": "The author laughs .", "bad": "The author laugh .", "phenomenon": "agreement",
              "construction": "simple", "condition": "singular"},
             {"good": "The authors near the pilot laugh .", "bad": "The authors near the pilot laughs .",
              "phenomenon": "agreement", "construction": "pp", "condition": "plural"},
             {"good": "The pilots laugh and smile .", "bad": "The pilots laugh and smiles .",
              "phenomenon": "agreement", "construction": "pp", "condition": "plural"}]
    table = pair_scoring.minimal_pair_scores(word_lm, pairs, progress=False, prefix="", score="mean")
    assert table.attrs == {"score": "mean", "scoring_rule": "from the second token"}
    assert list(table["construction"]) == ["simple", "pp", "pp"] and "paradigm" not in table
    good = _reference(word_lm, [p["good"] for p in pairs], [], "mean")
    bad = _reference(word_lm, [p["bad"] for p in pairs], [], "mean")
    np.testing.assert_allclose(table["margin"], good - bad, atol=1e-5)
    by = wnb.minimal_pair_accuracy(word_lm, pairs, progress=False, prefix="", score="mean", by="construction")
    assert list(by["construction"]) == ["simple", "pp"] and list(by["n"]) == [1, 2]
    assert by["accuracy"].tolist() == pytest.approx([float(good[0] > bad[0]), np.mean(good[1:] > bad[1:])])
    assert by.attrs["score"] == "mean"
    with pytest.raises(wnb.WnbError, match="no column 'paradigm'"):
        pair_scoring.pair_accuracy(table, by="paradigm")
    with pytest.raises(wnb.WnbError, match="'sum'.*'mean'"):
        wnb.minimal_pair_accuracy(word_lm, pairs, progress=False, score="max")


def test_blimp_with_n_none_takes_all_1000_pairs_of_all_67_paradigms(monkeypatch):
    import datasets

    configs = [f"paradigm_{i:02d}" for i in range(67)]

    def load(name, config, split):
        return datasets.Dataset.from_dict({
            "sentence_good": [f"{config} good {j}." for j in range(1000)],
            "sentence_bad": [f"{config} bad {j}." for j in range(1000)],
            "linguistics_term": [f"term_{int(config[-2:]) % 12}"] * 1000})

    monkeypatch.setattr(mp, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda name: configs)
    monkeypatch.setattr(datasets, "load_dataset", load)
    pairs = wnb.minimal_pairs("blimp", n=None)
    assert len(pairs) == 67_000
    counts = pd.Series([p["paradigm"] for p in pairs]).value_counts()
    assert set(counts.index) == set(configs) and (counts == 1000).all()
    assert all(p["bad"] == p["good"].replace(" good ", " bad ") for p in pairs)
    assert pairs[-1]["phenomenon"] == "term_6"
