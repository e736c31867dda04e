"""Targeted syntactic evaluation (Marvin & Linzen's constructions) from wnb's own vocabulary: which words
differ, which sentence is the grammatical one, counts and seeding. Expectations are written from English
morphology (in this vocabulary plural nouns and singular verbs end in "s") and by hand."""
from __future__ import annotations

import pytest

import wnb
from wnb.experiments import tse

AGREEMENT_AT_END = ("simple_agreement", "sentential_complement", "short_vp_coordination",
                    "across_prepositional_phrase", "across_subject_relative_clause", "across_object_relative_clause",
                    "across_object_relative_clause_no_that")
WITHIN = ("within_object_relative_clause", "within_object_relative_clause_no_that")
REFLEXIVES = ("simple_reflexive", "reflexive_sentential_complement", "reflexive_across_relative_clause")
NPIS = ("simple_npi", "npi_across_relative_clause", "npi_relative_clause_distractor")


def _words(sentence: str) -> list[str]:
    assert sentence.endswith(".") and sentence[0].isupper() and "  " not in sentence, sentence
    return sentence[:-1].split(" ")


def _expected_positions(construction: str, good: list[str]) -> list[int]:
    """The word positions where the two sentences must differ, read off the good sentence."""
    if construction in AGREEMENT_AT_END or construction in REFLEXIVES:
        return [len(good) - 1]
    if construction == "long_vp_coordination":
        return [good.index("and") + 1]
    if construction in WITHIN:
        return [len(good) - 2]
    if construction == "npi_relative_clause_distractor":
        return [0, good.index("that") + 1]
    assert construction in ("simple_npi", "npi_across_relative_clause")
    return [0]


def _plural(noun: str) -> bool:
    return noun.endswith("s")


def _licensed(construction: str, good: list[str], bad: list[str], at: list[int]) -> bool:
    """Whether the good sentence is the one the construction licenses, by hand-written rules."""
    g, b = good[at[0]], bad[at[0]]
    if construction in REFLEXIVES:
        antecedent = good[-3] if construction == "reflexive_sentential_complement" else good[1]
        singular = {"himself", "herself"}
        return (g == "themselves" and b in singular) if _plural(antecedent) else (g in singular and b == "themselves")
    if construction in NPIS:
        ok = good[0] == "No" and bad[0] == "The"
        if construction == "npi_relative_clause_distractor":
            ok = ok and good[at[1]] == "the" and bad[at[1]] == "no"
        return ok and _plural(good[1])
    if construction in WITHIN:
        subject = good[at[0] - 1]  # the relative clause's own subject, right before its verb
    elif construction in ("sentential_complement",):
        subject = good[-2]
    else:
        subject = good[1]
    singular_verb, plural_verb = (g, b) if g.endswith("s") else (b, g)
    assert singular_verb.endswith("s") and not plural_verb.endswith("s")
    assert singular_verb in (plural_verb + "s", plural_verb + "es"), (g, b)  # the same verb, other number
    return (g == plural_verb) == _plural(subject)


@pytest.mark.parametrize("construction", tse.CONSTRUCTIONS)
def test_pairs_differ_in_the_expected_words_and_the_good_one_is_licensed(construction):
    pairs = tse.tse_pairs(constructions=construction)
    assert pairs and {p["construction"] for p in pairs} == {construction}
    for pair in pairs:
        good, bad = _words(pair["good"]), _words(pair["bad"])
        assert len(good) == len(bad), pair
        at = _expected_positions(construction, good)
        assert [i for i, (x, y) in enumerate(zip(good, bad)) if x != y] == at, pair
        assert _licensed(construction, good, bad, at), pair
    assert len({(p["good"], p["bad"]) for p in pairs}) == len(pairs)


def test_hand_written_pairs_are_generated():
    expected = {
        "simple_agreement": ("The baker sleeps.", "The baker sleep."),
        "sentential_complement": ("The nurses said the baker sleeps.", "The nurses said the baker sleep."),
        "short_vp_coordination": ("The bakers sleep and work.", "The bakers sleep and works."),
        "long_vp_coordination": ("The baker reads the newspaper every single morning and plays the piano at night.",
                                 "The baker reads the newspaper every single morning and play the piano at night."),
        "across_prepositional_phrase": ("The baker near the nurses sleeps.", "The baker near the nurses sleep."),
        "across_subject_relative_clause": ("The bakers that help the nurse sleep.",
                                           "The bakers that help the nurse sleeps."),
        "across_object_relative_clause": ("The bakers that the nurse trusts sleep.",
                                          "The bakers that the nurse trusts sleeps."),
        "across_object_relative_clause_no_that": ("The baker the nurses trust sleeps.",
                                                  "The baker the nurses trust sleep."),
        "within_object_relative_clause": ("The baker that the nurses trust sleeps.",
                                          "The baker that the nurses trusts sleeps."),
        "within_object_relative_clause_no_that": ("The bakers the nurse trusts sleep.",
                                                  "The bakers the nurse trust sleep."),
        "simple_reflexive": ("The nurses hurt themselves.", "The nurses hurt herself."),
        "reflexive_sentential_complement": ("The nurses said the baker hurt himself.",
                                            "The nurses said the baker hurt themselves."),
        "reflexive_across_relative_clause": ("The baker that the nurses trust hurt himself.",
                                             "The baker that the nurses trust hurt themselves."),
        "simple_npi": ("No bakers have ever been late.", "The bakers have ever been late."),
        "npi_across_relative_clause": ("No bakers that the nurses trust have ever been late.",
                                       "The bakers that the nurses trust have ever been late."),
        "npi_relative_clause_distractor": ("No bakers that the nurses trust have ever been late.",
                                           "The bakers that no nurses trust have ever been late."),
    }
    assert set(expected) == set(tse.CONSTRUCTIONS)
    for construction, pair in expected.items():
        assert pair in {(p["good"], p["bad"]) for p in tse.tse_pairs(constructions=construction)}, construction


def test_counts_per_construction():
    n_nouns, n_verbs, n_trans = len(tse._NOUNS), len(tse._INTRANSITIVE), len(tse._TRANSITIVE)
    other = n_nouns - 1  # a second noun, never the first one
    rc = n_nouns * 2 * other * 2 * n_trans * n_verbs
    refl = len(tse._REFLEXIVE_VERBS) * len(tse._SINGULAR_REFLEXIVES)
    npi = len(tse._NPI_PREDICATES)
    expected = {
        "simple_agreement": n_nouns * 2 * n_verbs,
        "sentential_complement": n_nouns * 2 * other * 2 * len(tse._SAYING) * n_verbs,
        "short_vp_coordination": n_nouns * 2 * n_verbs * (n_verbs - 1),
        "long_vp_coordination": n_nouns * 2 * len(tse._LONG_VP) * len(tse._SECOND_VP),
        "across_prepositional_phrase": n_nouns * 2 * other * 2 * len(tse._PREPOSITIONS) * n_verbs,
        "across_subject_relative_clause": rc, "across_object_relative_clause": rc,
        "across_object_relative_clause_no_that": rc, "within_object_relative_clause": rc,
        "within_object_relative_clause_no_that": rc,
        "simple_reflexive": n_nouns * 2 * refl,
        "reflexive_sentential_complement": n_nouns * 2 * other * 2 * len(tse._SAYING) * refl,
        "reflexive_across_relative_clause": n_nouns * 2 * other * 2 * n_trans * refl,
        "simple_npi": n_nouns * npi,
        "npi_across_relative_clause": n_nouns * other * 2 * n_trans * npi,
        "npi_relative_clause_distractor": n_nouns * other * 2 * n_trans * npi,
    }
    assert expected["simple_agreement"] == 144 and expected["simple_npi"] == 120  # the tables as written
    counts: dict[str, int] = {}
    for pair in tse.tse_pairs():
        counts[pair["construction"]] = counts.get(pair["construction"], 0) + 1
    assert counts == expected
    phenomena = {p["construction"]: p["phenomenon"] for p in tse.tse_pairs(n=1)}
    assert [c for c in tse.CONSTRUCTIONS if phenomena[c] == "reflexive_anaphora"] == list(REFLEXIVES)
    assert [c for c in tse.CONSTRUCTIONS if phenomena[c] == "negative_polarity_items"] == list(NPIS)
    assert sum(phenomena[c] == "subject_verb_agreement" for c in tse.CONSTRUCTIONS) == 10


def test_sampling_is_seeded_per_construction():
    a = tse.tse_pairs(n=12, seed=0)
    assert a == tse.tse_pairs(n=12, seed=0)
    assert a != tse.tse_pairs(n=12, seed=1)
    assert len(a) == 12 * len(tse.CONSTRUCTIONS)
    assert len({(p["good"], p["bad"]) for p in a}) == len(a)
    everything = {(p["good"], p["bad"]) for p in tse.tse_pairs()}
    assert {(p["good"], p["bad"]) for p in a} <= everything
    # a construction's draw does not depend on the others asked for; a smaller n is a prefix of a larger
    alone = tse.tse_pairs(n=12, seed=0, constructions="simple_npi")
    assert alone == [p for p in a if p["construction"] == "simple_npi"]
    assert tse.tse_pairs(n=5, seed=0, constructions="simple_npi") == alone[:5]
    # more than a construction has: all of it
    assert len(tse.tse_pairs(n=10_000, constructions="simple_agreement")) == 144


def test_phenomena_select_their_constructions_and_minimal_pairs_offers_tse():
    pairs = wnb.minimal_pairs("tse", n=3, seed=2, phenomena=["negative_polarity_items", "simple_reflexive"])
    assert [p["construction"] for p in pairs] == ["simple_reflexive"] * 3 + [c for c in NPIS for _ in range(3)]
    assert pairs == tse.tse_pairs(3, 2, ["simple_reflexive", "negative_polarity_items"])
    assert len(wnb.minimal_pairs("tse")) == 100 * len(tse.CONSTRUCTIONS)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "positive"), (dict(n=-1), "positive"), (dict(n=2.5), "positive"),
    (dict(constructions=["relative_clause"]), "across_object_relative_clause"), (dict(constructions=[]), "empty"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(wnb.WnbError, match=match):
        tse.tse_pairs(**kwargs)


def test_the_agreement_source_is_not_called_marvin_and_linzens():

    from wnb.experiments import minimal_pairs as mp
    agreement = mp.__doc__.split('``"tse"``')[0]
    assert "wnb's agreement constructions" in agreement and "Marvin" not in agreement
