"""The spaCy path of the token classes: character spans of model tokens, the alignment of each token to the word
it overlaps most (checked against offsets and tags written out by hand, with spaCy ``Doc``s built with given
tags and with a duck-typed stand-in when spaCy is missing), the tagger choice, and the surprisal tables it feeds."""
from __future__ import annotations

import re
from collections import namedtuple

import pytest
import torch
from helpers import tiny_word_llama

import wnb
from wnb.errors import WnbError
from wnb.experiments import surprisal, tagging

Word = namedtuple("Word", "idx text pos_ dep_")

# "He didn't say that theory's end." as a BPE tokenizer might cut it, and as spaCy would: "didn't" is
# "did" + "n't" for spaCy but "didn" + "'t" for the model; "theory" is one word but two tokens.
TOKENS = ["He", " didn", "'t", " say", " that", " the", "ory", "'s", " end", "."]
WORDS = ["He", "did", "n't", "say", "that", "theory", "'s", "end", "."]
SPACES = [True, False, True, True, True, False, True, False, False]
POS = ["PRON", "AUX", "PART", "VERB", "DET", "NOUN", "PART", "NOUN", "PUNCT"]
DEPS = ["nsubj", "aux", "neg", "ROOT", "det", "poss", "case", "dobj", "punct"]
HEADS = [3, 3, 3, 3, 5, 7, 5, 3, 3]
# by hand: the word each token overlaps most ("didn" shares 3 characters with "did", 1 with "n't")
EXPECTED = [("PRON", "nsubj"), ("AUX", "aux"), ("PART", "neg"), ("VERB", "ROOT"), ("DET", "det"),
            ("NOUN", "poss"), ("NOUN", "poss"), ("PART", "case"), ("NOUN", "dobj"), ("PUNCT", "punct")]


def _stand_in(words, spaces, pos, deps):
    out, at = [], 0
    for w, space, p, d in zip(words, spaces, pos, deps):
        out.append(Word(at, w, p, d))
        at += len(w) + space
    return out


def test_token_spans_leave_out_whitespace():
    assert tagging.token_spans(["He", " didn", "'t", "  ", " x ", ""]) == [(0, 2), (3, 7), (7, 9), (11, 11),
                                                                          (12, 13), (14, 14)]


def test_alignment_with_a_stand_in():
    doc = _stand_in(WORDS, SPACES, POS, DEPS)
    assert "".join(TOKENS) == "".join(w + " " * s for w, s in zip(WORDS, SPACES))
    assert tagging.align_tags(TOKENS, doc) == EXPECTED
    assert tagging.classes_of(EXPECTED) == ["pronoun", "auxiliary", "particle", "content", "determiner",
                                            "content", "content", "particle", "content", "punctuation"]
    # special and whitespace tokens overlap no word
    assert tagging.align_tags(["", "He", "\n"], _stand_in(["He"], [False], ["PRON"], ["ROOT"])) == \
        [("", ""), ("PRON", "ROOT"), ("", "")]


def test_alignment_with_a_spacy_doc():
    spacy = pytest.importorskip("spacy")
    from spacy.tokens import Doc

    doc = Doc(spacy.vocab.Vocab(), words=WORDS, spaces=SPACES, pos=POS, deps=DEPS, heads=HEADS)
    assert doc.text == "".join(TOKENS)
    assert tagging.align_tags(TOKENS, doc) == EXPECTED


def test_every_upos_has_a_class():
    upos = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
            "SCONJ", "SYM", "VERB", "X"]  # Universal Dependencies v2
    assert set(upos) <= set(tagging.UPOS_CLASSES)
    assert set(tagging.UPOS_CLASSES.values()) <= set(surprisal.CLASSES)


class GivenTags:
    """A tagger that tags each word (letters, or one other character) from a table: a stand-in for a spaCy
    pipeline, with a pipeline's ``meta``."""

    meta = {"lang": "en", "name": "given_tags", "version": "0.1"}
    table = {"the": "DET", "The": "DET", "is": "AUX", "in": "ADP", "that": "SCONJ", "and": "CCONJ", ".": "PUNCT",
             ",": "PUNCT", "1990": "NUM", "she": "PRON"}

    def __call__(self, text):
        return [Word(m.start(), m.group(), self.table.get(m.group(), "NOUN"), "dep")
                for m in re.finditer(r"\w+|[^\w\s]", text)]


def test_tagger_choice(monkeypatch):
    assert tagging.resolve_tagger("list") == (None, "word list")
    nlp = GivenTags()
    assert tagging.resolve_tagger(nlp) == (nlp, "spacy:en_given_tags 0.1")
    monkeypatch.setattr(tagging, "english_pipeline", lambda name=None: None)
    assert tagging.resolve_tagger("auto") == (None, "word list")   # no pipeline installed: the list
    with pytest.raises(WnbError, match="no spaCy English pipeline"):
        tagging.resolve_tagger("spacy")
    with pytest.raises(WnbError, match="tagger must be"):
        tagging.resolve_tagger(3)


def test_english_pipeline_without_one(monkeypatch):
    spacy = pytest.importorskip("spacy")
    monkeypatch.setattr(spacy.util, "get_installed_models", lambda: ["de_core_news_sm"])
    assert tagging.english_pipeline() is None
    with pytest.raises(WnbError, match="not installed"):
        tagging.english_pipeline("en_no_such_pipeline")


def test_token_tags_and_surprisal_with_a_tagger():
    lm = tiny_word_llama()
    ids = lm.tokenizer("the cat is in 1990 .", add_special_tokens=False).input_ids
    tags = surprisal.token_tags(lm, ids, tagger=GivenTags())
    assert list(tags["upos"]) == ["DET", "NOUN", "AUX", "ADP", "NUM", "PUNCT"]
    assert list(tags["token_class"]) == ["determiner", "content", "auxiliary", "preposition", "number",
                                         "punctuation"]
    assert tags.attrs["tagger"] == "spacy:en_given_tags 0.1"
    listed = surprisal.token_tags(lm, ids, tagger="list")
    assert listed.attrs["tagger"] == "word list" and "upos" not in listed
    assert wnb.token_classes(lm, ids, tagger=GivenTags()) == list(tags["token_class"])

    text = " ".join(p["good"] for p in wnb.minimal_pairs(n=4))
    windows = torch.tensor(lm.tokenizer(text, add_special_tokens=False).input_ids[:4 * 12]).view(4, 12)
    layer = wnb.first_ffn_layers(lm)[0]
    table = wnb.token_surprisal(lm, windows, {layer: [1, 2]}, progress=False, tagger=GivenTags())
    assert table.attrs["tagger"] == "spacy:en_given_tags 0.1"
    assert {"upos", "dep"} <= set(table.columns) and len(table) == 4 * 11
    expected = [tagging.UPOS_CLASSES[GivenTags.table.get(t.strip(), "NOUN")] for t in table["token"]]
    assert list(table["token_class"]) == expected   # every token here is one whole word
    assert wnb.surprisal_by_class(table).attrs["tagger"] == "spacy:en_given_tags 0.1"
    assert wnb.token_surprisal(lm, windows, {}, progress=False, tagger="list").attrs["tagger"] == "word list"
