"""Targeted syntactic evaluation: minimal pairs in the constructions of Marvin & Linzen (2018,
"Targeted syntactic evaluation of language models"), generated offline from wnb's own small vocabulary.

Three phenomena, sixteen constructions (:data:`CONSTRUCTIONS`, with an example of each):

- ``subject_verb_agreement`` — the verb agrees in number with its subject: in a simple sentence, in a
  sentential complement, in short and long VP coordination (the second verb), across a prepositional
  phrase, across a subject relative clause, across an object relative clause with and without "that"
  (the main verb), and within an object relative clause with and without "that" (the verb of the
  relative clause agrees with its own subject, not with the head noun);
- ``reflexive_anaphora`` — "himself"/"herself" after a singular antecedent, "themselves" after a plural
  one: simple, in a sentential complement (bound by the nearer subject, not the main clause's), across an
  object relative clause;
- ``negative_polarity_items`` — "ever" licensed by "No" at the head of the subject, not by "The": simple,
  across an object relative clause, and across one whose own subject carries the "no" (a distractor that
  does not license "ever": the good sentence has "No ... the", the bad one "The ... no").

Every pair is ``{"good", "bad", "phenomenon", "construction", "condition"}``; the two sentences differ
only in the agreeing or licensing word(s): the verb's number, the reflexive's number, the determiner.
``condition`` gives the numbers involved (subject, attractor or main-clause subject). In this vocabulary
plural nouns and singular present-tense verbs end in "s" and their other forms do not, which the tests
rely on.
"""
from __future__ import annotations

import random
from itertools import product
from numbers import Integral

from wnb.errors import WnbError

# (singular, plural) nouns: subjects, attractors and antecedents (never the same noun twice in a sentence)
_NOUNS = (("baker", "bakers"), ("nurse", "nurses"), ("singer", "singers"), ("painter", "painters"),
          ("student", "students"), ("driver", "drivers"), ("writer", "writers"), ("soldier", "soldiers"),
          ("banker", "bankers"), ("chef", "chefs"), ("judge", "judges"), ("actor", "actors"))
# (singular, plural) present-tense verbs
_INTRANSITIVE = (("sleeps", "sleep"), ("arrives", "arrive"), ("works", "work"), ("listens", "listen"),
                 ("agrees", "agree"), ("leaves", "leave"))
_TRANSITIVE = (("trusts", "trust"), ("helps", "help"), ("visits", "visit"), ("ignores", "ignore"),
               ("calls", "call"))
_PREPOSITIONS = ("near", "behind", "beside", "with", "next to")
_SAYING = ("said", "thought", "claimed", "believed", "suspected")  # past tense: no agreement of their own
# long VP coordination: a long first VP, then the second (agreeing) verb with its complement
_LONG_VP = ((("reads", "read"), "the newspaper every single morning"),
            (("writes", "write"), "long letters to old friends"),
            (("drinks", "drink"), "two cups of coffee before work"),
            (("walks", "walk"), "to the station in the rain"),
            (("spends", "spend"), "most weekends at the lake"))
_SECOND_VP = ((("enjoys", "enjoy"), "quiet evenings at home"), (("plays", "play"), "the piano at night"),
              (("watches", "watch"), "old films on television"), (("cooks", "cook"), "dinner for the family"))
_REFLEXIVE_VERBS = ("hurt", "blamed", "praised", "doubted", "taught")  # past tense
_SINGULAR_REFLEXIVES = ("himself", "herself")
_PLURAL_REFLEXIVE = "themselves"
_NPI_PREDICATES = ("been late", "won a prize", "told a lie", "seen a ghost", "lost a game", "missed a train",
                   "broken a rule", "been abroad", "climbed a mountain", "owned a car")
_NUMBERS = ("singular", "plural")

PHENOMENA = ("subject_verb_agreement", "reflexive_anaphora", "negative_polarity_items")

_N, _NUM = range(len(_NOUNS)), range(2)
_V, _T = range(len(_INTRANSITIVE)), range(len(_TRANSITIVE))


def _pair(stem: str, forms, number: int, tail: str = "") -> tuple[str, str]:
    """``stem`` + the form of ``forms`` that matches ``number`` (good) or the other one (bad) + ``tail``."""
    return tuple(f"{stem} {forms[number if ok else 1 - number]}{tail}." for ok in (True, False))


def _reflexives(number: int, gender: int) -> tuple[str, str]:
    singular, plural = _SINGULAR_REFLEXIVES[gender], _PLURAL_REFLEXIVE
    return (singular, plural) if number == 0 else (plural, singular)


def _cond(subject: int, other: int | None = None, role: str = "attractor") -> str:
    return f"{_NUMBERS[subject]} subject" + ("" if other is None else f", {_NUMBERS[other]} {role}")


def _the(noun: int, number: int) -> str:
    return f"the {_NOUNS[noun][number]}"


def _object_rc(s, sn, a, an, t, that=True) -> str:
    """'The baker that the nurses trust' (or without 'that'): the head noun and its relative clause."""
    return f"The {_NOUNS[s][sn]}{' that' if that else ''} {_the(a, an)} {_TRANSITIVE[t][an]}"


# ---------------------------------------------------------------- subject-verb agreement

def _simple(s, sn, v):
    return _pair(f"The {_NOUNS[s][sn]}", _INTRANSITIVE[v], sn), _cond(sn)


def _complement(m, mn, s, sn, k, v):
    if m == s:
        return None
    return (_pair(f"The {_NOUNS[m][mn]} {_SAYING[k]} {_the(s, sn)}", _INTRANSITIVE[v], sn),
            _cond(sn, mn, "main-clause subject"))


def _short_vp(s, sn, v1, v2):
    if v1 == v2:
        return None
    return _pair(f"The {_NOUNS[s][sn]} {_INTRANSITIVE[v1][sn]} and", _INTRANSITIVE[v2], sn), _cond(sn)


def _long_vp(s, sn, first, second):
    (verbs, rest), (second_verbs, tail) = _LONG_VP[first], _SECOND_VP[second]
    return _pair(f"The {_NOUNS[s][sn]} {verbs[sn]} {rest} and", second_verbs, sn, f" {tail}"), _cond(sn)


def _across_pp(s, sn, a, an, p, v):
    if s == a:
        return None
    return _pair(f"The {_NOUNS[s][sn]} {_PREPOSITIONS[p]} {_the(a, an)}", _INTRANSITIVE[v], sn), _cond(sn, an)


def _across_subject_rc(s, sn, a, an, t, v):
    if s == a:
        return None
    stem = f"The {_NOUNS[s][sn]} that {_TRANSITIVE[t][sn]} {_the(a, an)}"
    return _pair(stem, _INTRANSITIVE[v], sn), _cond(sn, an)


def _across_object_rc(that):
    def build(s, sn, a, an, t, v):
        if s == a:
            return None
        return _pair(_object_rc(s, sn, a, an, t, that), _INTRANSITIVE[v], sn), _cond(sn, an)
    return build


def _within_object_rc(that):
    def build(s, sn, a, an, t, v):
        if s == a:
            return None
        stem = f"The {_NOUNS[s][sn]}{' that' if that else ''} {_the(a, an)}"
        return (_pair(stem, _TRANSITIVE[t], an, f" {_INTRANSITIVE[v][sn]}"),
                f"{_NUMBERS[an]} relative-clause subject, {_NUMBERS[sn]} head noun")
    return build


# ---------------------------------------------------------------- reflexive anaphora

def _reflexive(s, sn, r, g):
    return _pair(f"The {_NOUNS[s][sn]} {_REFLEXIVE_VERBS[r]}", _reflexives(sn, g), 0), _cond(sn)


def _reflexive_complement(m, mn, s, sn, k, r, g):
    if m == s:
        return None
    stem = f"The {_NOUNS[m][mn]} {_SAYING[k]} {_the(s, sn)} {_REFLEXIVE_VERBS[r]}"
    return _pair(stem, _reflexives(sn, g), 0), _cond(sn, mn, "main-clause subject")


def _reflexive_across_rc(s, sn, a, an, t, r, g):
    if s == a:
        return None
    stem = f"{_object_rc(s, sn, a, an, t)} {_REFLEXIVE_VERBS[r]}"
    return _pair(stem, _reflexives(sn, g), 0), _cond(sn, an)


# ---------------------------------------------------------------- negative polarity items

def _npi(s, q):
    rest = f"{_NOUNS[s][1]} have ever {_NPI_PREDICATES[q]}."
    return (f"No {rest}", f"The {rest}"), "licensor no vs the"


def _npi_across_rc(distractor):
    def build(s, a, an, t, q):
        if s == a:
            return None
        rc = f"{_NOUNS[a][an]} {_TRANSITIVE[t][an]} have ever {_NPI_PREDICATES[q]}."
        good = f"No {_NOUNS[s][1]} that the {rc}"
        bad = f"The {_NOUNS[s][1]} that {'no' if distractor else 'the'} {rc}"
        where = "no inside the relative clause" if distractor else "no licensor"
        return (good, bad), f"{_NUMBERS[an]} relative-clause subject, {where}"
    return build


_R, _G, _K = range(len(_REFLEXIVE_VERBS)), range(len(_SINGULAR_REFLEXIVES)), range(len(_SAYING))
_RC_AXES = (_N, _NUM, _N, _NUM, _T, _V)

# name: (phenomenon, axes, build(*point) -> ((good, bad), condition) or None)
_SPACES = {
    "simple_agreement": ("subject_verb_agreement", (_N, _NUM, _V), _simple),
    "sentential_complement": ("subject_verb_agreement", (_N, _NUM, _N, _NUM, _K, _V), _complement),
    "short_vp_coordination": ("subject_verb_agreement", (_N, _NUM, _V, _V), _short_vp),
    "long_vp_coordination": ("subject_verb_agreement", (_N, _NUM, range(len(_LONG_VP)), range(len(_SECOND_VP))),
                             _long_vp),
    "across_prepositional_phrase": ("subject_verb_agreement",
                                    (_N, _NUM, _N, _NUM, range(len(_PREPOSITIONS)), _V), _across_pp),
    "across_subject_relative_clause": ("subject_verb_agreement", _RC_AXES, _across_subject_rc),
    "across_object_relative_clause": ("subject_verb_agreement", _RC_AXES, _across_object_rc(True)),
    "across_object_relative_clause_no_that": ("subject_verb_agreement", _RC_AXES, _across_object_rc(False)),
    "within_object_relative_clause": ("subject_verb_agreement", _RC_AXES, _within_object_rc(True)),
    "within_object_relative_clause_no_that": ("subject_verb_agreement", _RC_AXES, _within_object_rc(False)),
    "simple_reflexive": ("reflexive_anaphora", (_N, _NUM, _R, _G), _reflexive),
    "reflexive_sentential_complement": ("reflexive_anaphora", (_N, _NUM, _N, _NUM, _K, _R, _G),
                                        _reflexive_complement),
    "reflexive_across_relative_clause": ("reflexive_anaphora", (_N, _NUM, _N, _NUM, _T, _R, _G),
                                         _reflexive_across_rc),
    "simple_npi": ("negative_polarity_items", (_N, range(len(_NPI_PREDICATES))), _npi),
    "npi_across_relative_clause": ("negative_polarity_items", (_N, _N, _NUM, _T, range(len(_NPI_PREDICATES))),
                                   _npi_across_rc(False)),
    "npi_relative_clause_distractor": ("negative_polarity_items",
                                       (_N, _N, _NUM, _T, range(len(_NPI_PREDICATES))), _npi_across_rc(True)),
}
CONSTRUCTIONS = tuple(_SPACES)


def _row(construction: str, built) -> dict:
    (good, bad), condition = built
    return {"good": good, "bad": bad, "phenomenon": _SPACES[construction][0], "construction": construction,
            "condition": condition}


def construction_pairs(construction: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Every pair of one construction in a fixed order (``n=None``), or ``n`` of them drawn with
    ``seed`` without building the others (all, in a seeded order, where it has no more than ``n``)."""
    if construction not in _SPACES:
        raise WnbError(f"unknown TSE construction {construction!r}; choose from {', '.join(CONSTRUCTIONS)} "
                       f"or a phenomenon ({', '.join(PHENOMENA)})")
    _, axes, build = _SPACES[construction]
    if n is None:
        return [_row(construction, b) for b in (build(*point) for point in product(*axes)) if b is not None]
    total = 1
    for axis in axes:
        total *= len(axis)
    rng = random.Random(f"tse:{seed}:{construction}")
    seen: set[int] = set()
    pairs = []
    while len(pairs) < n and len(seen) < total:  # draw points of the grid until n of them make a pair
        index = rng.randrange(total)
        if index in seen:
            continue
        seen.add(index)
        point = []
        for axis in reversed(axes):
            index, i = divmod(index, len(axis))
            point.append(axis[i])
        built = build(*reversed(point))
        if built is not None:
            pairs.append(_row(construction, built))
    return pairs


def _resolve(constructions) -> list[str]:
    if constructions is None:
        return list(CONSTRUCTIONS)
    names = [constructions] if isinstance(constructions, str) else list(constructions)
    if not names:
        raise WnbError("constructions is empty; pass None for all")
    out: list[str] = []
    for name in names:
        if name in PHENOMENA:
            out += [c for c in CONSTRUCTIONS if _SPACES[c][0] == name]
        elif name in _SPACES:
            out.append(name)
        else:
            construction_pairs(name)  # raises the error that lists the names
    return [c for c in CONSTRUCTIONS if c in out]


def tse_pairs(n: int | None = None, seed: int = 0, constructions=None) -> list[dict]:
    """Targeted-syntactic-evaluation minimal pairs (module docstring): every pair of each construction
    (``n=None``) or ``n`` drawn per construction with ``seed`` (all of a construction that has fewer;
    each construction's draw depends only on ``seed``, not on the others asked for).

    ``constructions``: names from :data:`CONSTRUCTIONS` or phenomena from :data:`PHENOMENA` (all of
    their constructions); ``None`` for all. The same arguments always give the same pairs, in
    :data:`CONSTRUCTIONS` order."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, Integral) or n < 1):
        raise WnbError(f"n must be a positive number of pairs per construction, or None for all (got {n!r})")
    return [pair for c in _resolve(constructions) for pair in construction_pairs(c, n, seed)]
