"""Knowledge items (both sentences grammatical, one of them true): which words differ, which sentence is
true by hand-written facts, counts and seeding; and a sanity check that the bundled model knows most."""
from __future__ import annotations

import re

import pytest
from helpers.knowledge import CAPITAL, NUMBER, WEEK, YEAR

import wnb
from wnb.experiments import knowledge as kp


def _differing(pair) -> list[int]:
    good, bad = pair["good"].split(" "), pair["bad"].split(" ")
    assert len(good) == len(bad), pair
    return [i for i, (g, b) in enumerate(zip(good, bad)) if g != b]


def _true(sentence: str, phenomenon: str) -> bool:
    """Whether a sentence states a fact, by hand-written rules and tables independent of the module."""
    if phenomenon == "arithmetic":
        a, op, b, c = re.fullmatch(r"(\d) (plus|minus) (\d) is (\d)\.", sentence).groups()
        return int(c) == (int(a) + int(b) if op == "plus" else int(a) - int(b))
    if phenomenon == "capitals":
        country, city = re.fullmatch(r"The capital of (\w+) is (\w+)\.", sentence).groups()
        return CAPITAL[country] == city
    if phenomenon in ("days", "months"):
        names = WEEK if phenomenon == "days" else YEAR
        where, anchor, answer = re.fullmatch(r"The (?:day|month) (after|before) (\w+) is (\w+)\.", sentence).groups()
        step = 1 if where == "after" else -1
        return names[(names.index(anchor) + step) % len(names)] == answer
    if phenomenon == "counts":
        thing, number, noun = re.fullmatch(r"A (\w+) has (\w+) (\w+)\.", sentence).groups()
        facts = {"week": 7, "year": 12, "triangle": 3, "square": 4, "spider": 8, "dog": 4, "hand": 5, "bicycle": 2,
                 "car": 4, "bird": 2}
        return facts[thing] == NUMBER[number]
    raise AssertionError(phenomenon)


def test_items_differ_only_in_the_answer_and_the_good_one_is_true():
    items = kp.knowledge_pairs()
    assert [p for p in dict.fromkeys(i["phenomenon"] for i in items)] == list(kp.PHENOMENA)
    for item in items:
        assert item["good"] != item["bad"] and item["good"].endswith(".") and item["bad"].endswith(".")
        at = _differing(item)
        words = item["good"].split(" ")
        assert at == [len(words) - (2 if item["phenomenon"] == "counts" else 1)], item
        if item["phenomenon"] in ("arithmetic", "capitals", "days", "months", "counts"):
            assert _true(item["good"], item["phenomenon"]) and not _true(item["bad"], item["phenomenon"]), item
    assert len({(i["good"], i["bad"]) for i in items}) == len(items)


def test_hand_written_items_are_generated():
    expected = [("3 plus 4 is 7.", "3 plus 4 is 8."), ("9 minus 6 is 3.", "9 minus 6 is 1."),
                ("The capital of France is Paris.", "The capital of France is Rome."),
                ("The day after Sunday is Monday.", "The day after Sunday is Friday."),
                ("The month before January is December.", "The month before January is June."),
                ("The opposite of cold is hot.", "The opposite of cold is sad."),
                ("Grass is green.", "Grass is red."), ("A week has seven days.", "A week has five days.")]
    generated = {(i["good"], i["bad"]) for i in kp.knowledge_pairs()}
    assert set(expected) <= generated
    # a true sentence is never offered as the wrong answer, and the named day is not a choice
    assert ("The opposite of cold is hot.", "The opposite of cold is cold.") not in generated
    assert not any(b == "The day after Monday is Monday." for _, b in generated)


def test_seeded_counts_per_phenomenon_and_the_minimal_pairs_source():
    a = kp.knowledge_pairs(n=20, seed=0)
    assert a == kp.knowledge_pairs(n=20, seed=0) and a != kp.knowledge_pairs(n=20, seed=1)
    counts = {p: sum(i["phenomenon"] == p for i in a) for p in kp.PHENOMENA}
    assert counts == {p: 20 for p in kp.PHENOMENA}
    everything = kp.knowledge_pairs()
    assert sum(i["phenomenon"] == "capitals" for i in everything) == 10 * 9
    assert len(kp.knowledge_pairs(n=500, phenomena="capitals")) == 90  # all when there are fewer
    assert wnb.minimal_pairs("knowledge", n=20, seed=0) == a
    assert wnb.minimal_pairs("knowledge", n=5, phenomena=["days"]) == kp.knowledge_pairs(5, 0, ["days"])
    with pytest.raises(wnb.WnbError, match="capitals"):
        wnb.minimal_pairs("knowledge", phenomena=["history"])
    with pytest.raises(wnb.WnbError, match="positive"):
        kp.knowledge_pairs(n=0)


