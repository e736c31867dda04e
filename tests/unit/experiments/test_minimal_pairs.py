"""Minimal pairs: the agreement generator, JSONL and BLiMP loading, and scoring by sentence log-prob."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from helpers import tiny_word_llama, word_tokenizer

import wnb
from wnb.experiments import agreement, pair_scoring
from wnb.experiments import minimal_pairs as mp


@pytest.fixture(scope="module")
def word_lm():
    return tiny_word_llama()


# ---------------------------------------------------------------- the generator

def test_every_agreement_pair_differs_in_exactly_one_word_the_verb():
    pairs = wnb.minimal_pairs("agreement", n=None)
    verbs = {form: pair for pair in agreement.INTRANSITIVE for form in pair}
    assert {p["phenomenon"] for p in pairs} == set(agreement.AGREEMENT_PHENOMENA)
    for pair in pairs:
        good, bad = pair["good"].rstrip(".").split(" "), pair["bad"].rstrip(".").split(" ")
        assert len(good) == len(bad)
        differ = [i for i, (g, b) in enumerate(zip(good, bad)) if g != b]
        assert len(differ) == 1, pair
        g, b = good[differ[0]], bad[differ[0]]
        assert verbs[g] == verbs[b] and g != b, pair  # the same verb in the other number
        assert pair["good"].endswith(".") and pair["good"][0].isupper()


def test_agreement_numbers_follow_the_subject():
    for pair in wnb.minimal_pairs("agreement", n=40, phenomena=["prepositional_phrase", "object_relative_clause"]):
        verb = pair["good"].rstrip(".").split(" ")[-1]
        singular_subject = pair["condition"].startswith("singular subject")
        assert (verb in [s for s, _ in agreement.INTRANSITIVE]) == singular_subject, pair


def test_generator_is_deterministic_per_seed_and_counts_per_phenomenon():
    a = wnb.minimal_pairs("agreement", n=20, seed=0)
    assert a == wnb.minimal_pairs("agreement", n=20, seed=0)
    assert a != wnb.minimal_pairs("agreement", n=20, seed=1)
    counts = {}
    for p in a:
        counts[p["phenomenon"]] = counts.get(p["phenomenon"], 0) + 1
    assert counts == {ph: 20 for ph in agreement.AGREEMENT_PHENOMENA}
    assert len({(p["good"], p["bad"]) for p in a}) == len(a)  # no duplicates


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(n=-3), dict(n=145, phenomena=["simple"]),
                                    dict(phenomena=["passive"]), dict(phenomena=[])])
def test_bad_generator_arguments(kwargs):
    with pytest.raises(wnb.WnbError):
        wnb.minimal_pairs("agreement", **kwargs)


def test_unknown_source():
    with pytest.raises(wnb.WnbError, match="agreement"):
        wnb.minimal_pairs("no-such-benchmark")


# ---------------------------------------------------------------- JSONL and BLiMP

def test_jsonl_loads_the_users_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"good": "The cat is.", "bad": "The cat are.", "phenomenon": "a"},
            {"sentence_good": "She is.", "sentence_bad": "She are.", "phenomenon": "b"},
            {"good": "The cats are.", "bad": "The cats is.", "phenomenon": "a"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pairs = wnb.minimal_pairs(str(path), n=None)
    assert [p["phenomenon"] for p in pairs] == ["a", "a", "b"]
    assert pairs[2]["good"] == "She is."
    assert len(wnb.minimal_pairs(str(path), n=1)) == 2
    assert [p["phenomenon"] for p in wnb.minimal_pairs(path, phenomena="b")] == ["b"]


@pytest.mark.parametrize("text, match", [
    ("", "no minimal pairs"), ("\n  \n", "no minimal pairs"),
    ('{"good": "a b", "bad": "a c"}\n', "line 1.*phenomenon"),
    ('{"good": "a b", "bad": "a c", "phenomenon": "x"}\nnot json\n', "line 2.*JSON"),
    ('["a", "b"]\n', "line 1"), ('{"good": "a", "bad": "a", "phenomenon": "x"}\n', "same"),
    ('{"good": "", "bad": "a", "phenomenon": "x"}\n', "good"),
])
def test_bad_jsonl(tmp_path, text, match):
    path = tmp_path / "pairs.jsonl"
    path.write_text(text)
    with pytest.raises(wnb.WnbError, match=match):
        wnb.minimal_pairs(str(path))


def test_blimp_without_network_is_a_clear_error_at_once(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(mp, "network_available", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(wnb.WnbError, match="network"):
        wnb.minimal_pairs("blimp")
    assert time.perf_counter() - start < 2


def test_blimp_offline_for_real(monkeypatch):
    if mp.network_available(timeout=2):
        pytest.skip("the Hugging Face hub is reachable from here")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(wnb.WnbError, match="blimp|BLiMP"):
        wnb.minimal_pairs("blimp", n=10)
    assert time.perf_counter() - start < 10


def test_check_pairs():
    with pytest.raises(wnb.WnbError, match="no minimal pairs"):
        mp.check_pairs([])
    with pytest.raises(wnb.WnbError, match="pair 1"):
        mp.check_pairs([{"good": "a", "bad": "b", "phenomenon": "x"}, {"good": "a"}])
    with pytest.raises(wnb.WnbError):
        mp.check_pairs({"good": "a", "bad": "b", "phenomenon": "x"})


# ---------------------------------------------------------------- scoring

def _reference_logprob(model, ids: list[int], first: int) -> float:
    """Independent: plain transformers forward of one sentence, sum of log p of tokens from ``first``."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[t - 1, ids[t]] for t in range(first, len(ids))))


def test_scores_equal_an_independent_sum_of_token_logprobs(word_lm):
    pairs = wnb.minimal_pairs("agreement", n=6, seed=3)
    tok = word_lm.tokenizer
    texts = [p["good"] for p in pairs] + [p["bad"] for p in pairs]
    ours = pair_scoring.sentence_logprobs(word_lm, texts, batch_size=5, progress=False)
    bos = tok.convert_tokens_to_ids("<s>")
    ref = [_reference_logprob(word_lm.model, [bos] + tok(t, add_special_tokens=False).input_ids, 1) for t in texts]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)

    table = wnb.minimal_pair_accuracy(word_lm, pairs, batch_size=7, progress=False)
    assert list(table["phenomenon"]) == list(agreement.AGREEMENT_PHENOMENA)
    assert (table["n"] == 6).all()
    ref_good, ref_bad = np.array(ref[:len(pairs)]), np.array(ref[len(pairs):])
    for row in table.itertuples():
        mine = [i for i, p in enumerate(pairs) if p["phenomenon"] == row.phenomenon]
        assert row.accuracy == pytest.approx(np.mean(ref_good[mine] > ref_bad[mine]))
        assert row.margin == pytest.approx(np.mean(ref_good[mine] - ref_bad[mine]), abs=1e-4)


def test_batch_size_does_not_change_scores(word_lm):
    texts = [p["good"] for p in wnb.minimal_pairs("agreement", n=5)]
    a = pair_scoring.sentence_logprobs(word_lm, texts, batch_size=1, progress=False)
    b = pair_scoring.sentence_logprobs(word_lm, texts, batch_size=64, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_first_token_conditioning_rule():
    ids = lambda tok, name: [tok.convert_tokens_to_ids(name)]
    plain = word_tokenizer()
    assert pair_scoring.prefix_ids(plain) == ids(plain, "<s>")                       # BOS
    chat = word_tokenizer(chat_template="{{ '<s>' + messages[0]['content'] }}")
    assert pair_scoring.prefix_ids(chat) == ids(chat, "</s>")                        # BOS is a chat marker: EOS
    prepending = word_tokenizer(chat_template="{{ '<s>' }}", prepend_bos=True)
    assert pair_scoring.prefix_ids(prepending) == ids(prepending, "<s>")             # the tokenizer puts it itself
    assert pair_scoring.prefix_ids(word_tokenizer(bos=False)) == ids(plain, "</s>")  # no BOS: EOS
    assert pair_scoring.prefix_ids(word_tokenizer(bos=False, eos=False)) == []       # nothing
    assert pair_scoring.prefix_ids(plain, prefix="the cat") == plain("the cat", add_special_tokens=False).input_ids
    assert pair_scoring.prefix_ids(plain, prefix="") == []                           # nothing: the authors' rule
    with pytest.raises(wnb.WnbError, match="no tokens"):
        pair_scoring.prefix_ids(plain, prefix="  ")


def test_without_bos_or_eos_the_first_token_is_not_scored():
    lm = tiny_word_llama(word_tokenizer(bos=False, eos=False))
    texts = ["The author laughs .", "The authors laugh ."]
    ours = pair_scoring.sentence_logprobs(lm, texts, progress=False)
    ref = [_reference_logprob(lm.model, lm.tokenizer(t, add_special_tokens=False).input_ids, 1) for t in texts]
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_scoring_needs_a_tokenizer(tiny_llama):
    with pytest.raises(wnb.WnbError, match="tokenizer"):
        wnb.minimal_pair_accuracy(tiny_llama, wnb.minimal_pairs(n=2), progress=False)




def test_blimp_rows_become_pairs_per_paradigm(monkeypatch):
    """BLiMP through `datasets`, with the hub replaced by two local paradigms of BLiMP's own columns (the
    real download needs a network): n pairs per paradigm, seeded; the phenomenon is the paradigm's
    linguistics term; phenomena filter by term or paradigm name."""
    import datasets

    def paradigm(uid, term, count):
        return datasets.Dataset.from_list([
            {"sentence_good": f"{uid} good {i}.", "sentence_bad": f"{uid} bad {i}.", "field": "syntax",
             "linguistics_term": term, "UID": uid, "pairID": str(i)} for i in range(count)])

    served = {"anaphor_number_agreement": paradigm("anaphor_number_agreement", "anaphor_agreement", 9),
              "regular_plural_subject_verb_agreement_1": paradigm("regular_plural_subject_verb_agreement_1",
                                                                  "subject_verb_agreement", 7)}
    asked = []
    monkeypatch.setattr(mp, "network_available", lambda *a, **k: True)
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda name: asked.append(name) or list(served))
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: served[config])
    pairs = wnb.minimal_pairs("blimp", n=4, seed=3)
    assert asked == ["nyu-mll/blimp"] and len(pairs) == 8
    assert [p["phenomenon"] for p in pairs] == ["anaphor_agreement"] * 4 + ["subject_verb_agreement"] * 4
    for p in pairs:
        uid, _, i = p["good"].rstrip(".").partition(" good ")
        assert p["paradigm"] == uid and p["bad"] == f"{uid} bad {i}."  # good and bad from the same row
    assert wnb.minimal_pairs("blimp", n=4, seed=3) == pairs  # deterministic per seed
    assert wnb.minimal_pairs("blimp", n=4, seed=4) != pairs
    assert len(wnb.minimal_pairs("blimp", n=None)) == 16
    only = wnb.minimal_pairs("blimp", n=2, phenomena=["subject_verb_agreement"])
    assert {p["paradigm"] for p in only} == {"regular_plural_subject_verb_agreement_1"} and len(only) == 2
    assert len(wnb.minimal_pairs("blimp", n=2, phenomena="anaphor_number_agreement")) == 2
    with pytest.raises(wnb.WnbError, match="no BLiMP pairs match"):
        wnb.minimal_pairs("blimp", phenomena=["island_effects"])
