"""Per-token surprisal: the token classifier, per-token NLL against wnb.perplexity, and the dense vs
ablated tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_word_llama

import wnb
import wnb.tracing
import wnb.tracing.nll
from wnb.experiments import surprisal


@pytest.mark.parametrize("text, cls", [
    (" the", "determiner"), ("The", "determiner"), (" THAT", "conjunction"), (" of", "preposition"),
    (" into", "preposition"), (" she", "pronoun"), (" them", "pronoun"), (" its", "pronoun"), (" is", "auxiliary"),
    (" could", "auxiliary"), ("n't", "particle"), ("'s", "particle"), ("\u2019re", "auxiliary"), (" to", "particle"),
    (" not", "particle"), (" so", "adverb"), (" However", "adverb"), (" then", "adverb"), (" quickly", "content"),
    (" and", "conjunction"), (" because", "conjunction"), (" cat", "content"), (" Python", "content"),
    ("ory", "content"), (",", "punctuation"), (" (", "punctuation"), ("...", "punctuation"),
    (" +=", "punctuation"), (" 1990", "number"), ("3.14", "number"), ("1,000", "number"),
    ("\n", "other"), ("  ", "other"), ("", "other"), ("\ufffd", "other"), (" x2", "content"),
])
def test_token_class(text, cls):
    assert wnb.token_class(text) == cls
    group = "function" if cls in surprisal.FUNCTION_CLASSES else "content" if cls == "adverb" else cls
    assert surprisal.CLASS_GROUPS[cls] == group


def test_word_list_is_closed_and_lower_case():
    words = [w for ws in wnb.FUNCTION_WORDS.values() for w in ws]
    assert all(w == w.lower() and w.strip() == w for w in words)
    assert set(wnb.FUNCTION_WORDS) == {"determiner", "preposition", "pronoun", "auxiliary", "particle", "conjunction"}
    assert all(w == w.lower() for w in surprisal.ADVERBS) and not set(surprisal.ADVERBS) & set(words)


def test_pieces_of_longer_words_are_content():
    cls = surprisal._classes_in_context
    assert cls([" the", "ory"]) == ["content", "content"]          # "theory"
    assert cls([" in", "side", " the"]) == ["content", "content", "determiner"]
    assert cls([" the", " cat", "'s"]) == ["determiner", "content", "particle"]   # possessive
    assert cls(["don", "'t", " go"]) == ["auxiliary", "particle", "content"]
    assert cls([" to", ","]) == ["particle", "punctuation"]


@pytest.mark.parametrize("texts, i, cls", [
    ([" said", " that", " the", " cat"], 1, "conjunction"),      # complementizer (UD SCONJ)
    (["That", " cat", " is"], 0, "determiner"),
    ([" in", " that", " book"], 1, "determiner"),
    ([" that", " is", " all"], 0, "pronoun"),
    ([" like", " that", "."], 1, "pronoun"),
    ([" the", " book", " that", " fell"], 2, "conjunction"),    # relativizer: UD says pronoun; the list cannot tell
    ([" went", " to", " the", " park"], 1, "preposition"),
    ([" to", " him"], 0, "preposition"),
    ([" to", " 1990"], 0, "preposition"),
    ([" flew", " to", " London"], 1, "preposition"),
    ([" want", " to", " go"], 1, "particle"),                  # infinitive
    ([" it", "'s", " cold"], 1, "auxiliary"),
    ([" that", "\u2019s", " it"], 1, "auxiliary"),
    ([" the", " cat", "'s", " toy"], 2, "particle"),
    ([" so", " big"], 0, "adverb"),
    ([" al", "so"], 1, "content"),                             # a piece of a word stays content
])
def test_ambiguous_words_by_their_neighbours(texts, i, cls):
    assert surprisal._classes_in_context(texts)[i] == cls


def test_token_texts_keep_word_boundaries():
    lm = tiny_word_llama()
    ids = lm.tokenizer("the cat is in 1990 .", add_special_tokens=False).input_ids
    assert surprisal.token_texts(lm, ids) == ["the", " cat", " is", " in", " 1990", "."]


def test_token_classes_decode_with_the_tokenizer():
    lm = tiny_word_llama()
    ids = lm.tokenizer("the cat is in 1990 .", add_special_tokens=False).input_ids
    assert wnb.token_classes(lm, ids) == ["determiner", "content", "auxiliary", "preposition", "number",
                                          "punctuation"]
    bos = lm.tokenizer.convert_tokens_to_ids("<s>")
    assert wnb.token_classes(lm, [bos])[0] == "other"  # special tokens


@pytest.fixture(scope="module")
def word_lm():
    return tiny_word_llama()


@pytest.fixture(scope="module")
def word_windows(word_lm):
    text = " ".join(p["good"] for p in wnb.minimal_pairs(n=10))
    ids = word_lm.tokenizer(text, add_special_tokens=False).input_ids
    return torch.tensor(ids[:8 * 20]).view(8, 20)


def test_token_nll_matches_perplexity(tiny, tiny_windows):
    nll = wnb.token_nll(tiny, tiny_windows, batch_size=4, progress=False)
    assert nll.shape == (tiny_windows.shape[0], tiny_windows.shape[1] - 1)
    ppl = wnb.perplexity(tiny, tiny_windows, progress=False)
    assert float(torch.exp(nll.double().mean())) == pytest.approx(ppl, rel=1e-5)
    with torch.no_grad():
        logits = tiny.model(tiny_windows[:1]).logits[0]
    t = 5
    expect = -torch.log_softmax(logits[t], -1)[tiny_windows[0, t + 1]]
    assert nll[0, t].item() == pytest.approx(expect.item(), abs=1e-5)


def test_intervals_from_token_nll():
    """wnb.core.inference.perplexity_of on per-token NLLs: exp of the mean, and the percentile bootstrap over
    windows recomputed here from numpy's seeded draws of window indices (one resample after the other)."""
    from wnb.core.inference import perplexity_of

    nll = torch.rand(10, 30, generator=torch.Generator().manual_seed(0)) * 4
    row = perplexity_of(nll, seed=3)
    assert row["perplexity"] == pytest.approx(float(torch.exp(nll.double().mean())))
    picks = np.random.default_rng(3).integers(0, 10, size=(1000, 10))
    draws = np.exp(nll.double().mean(1).numpy()[picks].mean(1))
    assert (row["ppl_low"], row["ppl_high"]) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    assert row["ppl_low"] < row["perplexity"] < row["ppl_high"] and row == perplexity_of(nll, seed=3)
    one = perplexity_of(nll[:1])
    assert one["ppl_low"] == one["ppl_high"] == pytest.approx(one["perplexity"])  # one window: a point
    with pytest.raises(wnb.WnbError):
        perplexity_of(torch.empty(0, 3))


def test_token_surprisal_tables(word_lm, word_windows):
    layer = wnb.first_ffn_layers(word_lm)[0]
    neurons = {layer: list(range(0, 64, 2))}
    table = wnb.token_surprisal(word_lm, word_windows, neurons, side="both", progress=False)
    n, t = word_windows.shape
    assert len(table) == n * (t - 1)
    assert list(table.columns) == ["window", "position", "token_id", "token", "token_class", "group",
                                   "dense_nll", "ablated_nll", "delta_nll"]
    dense = wnb.token_nll(word_lm, word_windows, progress=False)
    with wnb.sign_ablated(word_lm, neurons, side="both"):
        ablated = wnb.token_nll(word_lm, word_windows, progress=False)
    np.testing.assert_allclose(table["dense_nll"], dense.reshape(-1).double().numpy(), atol=1e-6)
    np.testing.assert_allclose(table["ablated_nll"], ablated.reshape(-1).double().numpy(), atol=1e-6)
    assert (table["delta_nll"] == table["ablated_nll"] - table["dense_nll"]).all()
    row = table.iloc[3]
    assert row["token_id"] == word_windows[0, 4] and row["position"] == 4
    assert row["token"] == " " + word_lm.tokenizer.decode([int(row["token_id"])])  # with its space in context
    assert set(table["token_class"]) <= {"determiner", "content", "punctuation", "conjunction", "preposition"}

    by_class = wnb.surprisal_by_class(table)
    assert by_class["n_tokens"].sum() == len(table)
    assert by_class["token_share"].sum() == pytest.approx(1)
    assert by_class["excess_share"].sum() == pytest.approx(1)
    det = table[table["token_class"] == "determiner"]
    got = by_class.set_index("token_class").loc["determiner"]
    assert got["delta_nll"] == pytest.approx(det["delta_nll"].mean())
    assert got["group"] == "function"
    by_group = wnb.surprisal_by_class(table, by="group")
    assert set(by_group["group"]) <= {"function", "content", "punctuation"}
    assert by_group["n_tokens"].sum() == len(table)

    top = wnb.top_surprisal_tokens(table, n=3, min_count=2)
    assert len(top) <= 3 and (top["count"] >= 2).all()
    assert list(top["delta_nll"]) == sorted(top["delta_nll"], reverse=True)
    best = top.iloc[0]
    assert best["delta_nll"] == pytest.approx(table.loc[table.token_id == best["token_id"], "delta_nll"].mean())

    none = wnb.token_surprisal(word_lm, word_windows, {}, progress=False, dense_nll=dense)
    assert (none["delta_nll"] == 0).all()


def test_token_surprisal_bad_input(word_lm, word_windows):
    with pytest.raises(wnb.WnbError, match="unknown side"):
        wnb.token_surprisal(word_lm, word_windows, {}, side="neg", progress=False)
    with pytest.raises(wnb.WnbError, match="not a linear layer"):
        wnb.token_surprisal(word_lm, word_windows, {"nope": [1]}, progress=False)
    with pytest.raises(wnb.WnbError, match="dense_nll"):
        wnb.token_surprisal(word_lm, word_windows, {}, dense_nll=torch.zeros(2, 2), progress=False)
    with pytest.raises(wnb.WnbError, match="by must be"):
        wnb.surprisal_by_class(wnb.token_surprisal(word_lm, word_windows, {}, progress=False), by="pos")


def test_tiny_model_without_tokenizer(tiny_llama, tiny_windows):
    table = wnb.token_surprisal(tiny_llama, tiny_windows, {"model.layers.0.mlp.gate_proj": [1, 2]}, progress=False)
    assert set(table["token_class"]) == {"other"} and table["token"].iloc[0].startswith("<id ")
