"""wnb's agreement constructions: subject–verb agreement minimal pairs generated offline from templates
with a small built-in vocabulary (simple, across a prepositional phrase, across a subject or an object
relative clause, in a sentential complement, across short VP coordination); the two sentences of a pair
differ in one word only, the verb that must agree."""
from __future__ import annotations

import random
from itertools import product

from wnb.errors import WnbError

# (singular, plural) forms. Nouns serve as subjects and as attractors (never the same noun in a pair).
NOUNS = (("author", "authors"), ("pilot", "pilots"), ("surgeon", "surgeons"), ("farmer", "farmers"),
          ("manager", "managers"), ("customer", "customers"), ("officer", "officers"),
          ("teacher", "teachers"), ("senator", "senators"), ("dancer", "dancers"), ("lawyer", "lawyers"),
          ("doctor", "doctors"))


INTRANSITIVE = (("laughs", "laugh"), ("smiles", "smile"), ("swims", "swim"), ("waits", "wait"),
                 ("sings", "sing"), ("talks", "talk"))


TRANSITIVE = (("likes", "like"), ("admires", "admire"), ("hates", "hate"), ("loves", "love"),
               ("knows", "know"))


PREPOSITIONS = ("next to", "behind", "near", "in front of", "across from")
SAYING = ("said", "knew", "thought", "believed", "assumed")  # past tense: no agreement of their own
NUMBERS = ("singular", "plural")
AGREEMENT_PHENOMENA = ("simple", "prepositional_phrase", "subject_relative_clause", "object_relative_clause",
                       "sentential_complement", "vp_coordination")


def _verb(pair, number: int, grammatical: bool) -> str:
    return pair[number if grammatical else 1 - number]


def _agreement_space(phenomenon: str):
    """The axes of one template and a function from one point of them to (good, bad, condition)."""
    nouns = range(len(NOUNS))
    num = range(2)
    if phenomenon == "simple":
        axes = (nouns, num, range(len(INTRANSITIVE)))

        def build(s, sn, v):
            stem = f"The {NOUNS[s][sn]}"
            return ([f"{stem} {_verb(INTRANSITIVE[v], sn, g)}." for g in (True, False)], f"{NUMBERS[sn]} subject")
    elif phenomenon == "prepositional_phrase":
        axes = (nouns, num, nouns, num, range(len(PREPOSITIONS)), range(len(INTRANSITIVE)))

        def build(s, sn, a, an, p, v):
            if s == a:
                return None
            stem = f"The {NOUNS[s][sn]} {PREPOSITIONS[p]} the {NOUNS[a][an]}"
            return ([f"{stem} {_verb(INTRANSITIVE[v], sn, g)}." for g in (True, False)],
                    f"{NUMBERS[sn]} subject, {NUMBERS[an]} attractor")
    elif phenomenon == "subject_relative_clause":
        axes = (nouns, num, nouns, num, range(len(TRANSITIVE)), range(len(INTRANSITIVE)))

        def build(s, sn, a, an, t, v):
            if s == a:
                return None
            stem = f"The {NOUNS[s][sn]} that {_verb(TRANSITIVE[t], sn, True)} the {NOUNS[a][an]}"
            return ([f"{stem} {_verb(INTRANSITIVE[v], sn, g)}." for g in (True, False)],
                    f"{NUMBERS[sn]} subject, {NUMBERS[an]} attractor")
    elif phenomenon == "object_relative_clause":
        axes = (nouns, num, nouns, num, range(len(TRANSITIVE)), range(len(INTRANSITIVE)))

        def build(s, sn, a, an, t, v):
            if s == a:
                return None
            stem = f"The {NOUNS[s][sn]} that the {NOUNS[a][an]} {_verb(TRANSITIVE[t], an, True)}"
            return ([f"{stem} {_verb(INTRANSITIVE[v], sn, g)}." for g in (True, False)],
                    f"{NUMBERS[sn]} subject, {NUMBERS[an]} attractor")
    elif phenomenon == "sentential_complement":
        axes = (nouns, num, nouns, num, range(len(SAYING)), range(len(INTRANSITIVE)))

        def build(m, mn, s, sn, k, v):
            if s == m:
                return None
            stem = f"The {NOUNS[m][mn]} {SAYING[k]} the {NOUNS[s][sn]}"
            return ([f"{stem} {_verb(INTRANSITIVE[v], sn, g)}." for g in (True, False)],
                    f"{NUMBERS[sn]} subject, {NUMBERS[mn]} main-clause subject")
    elif phenomenon == "vp_coordination":
        axes = (nouns, num, range(len(INTRANSITIVE)), range(len(INTRANSITIVE)))

        def build(s, sn, v1, v2):
            if v1 == v2:
                return None
            stem = f"The {NOUNS[s][sn]} {_verb(INTRANSITIVE[v1], sn, True)} and"
            return ([f"{stem} {_verb(INTRANSITIVE[v2], sn, g)}." for g in (True, False)], f"{NUMBERS[sn]} subject")
    else:
        raise WnbError(f"unknown agreement phenomenon {phenomenon!r}; choose from {', '.join(AGREEMENT_PHENOMENA)}")
    return [len(a) for a in axes], build


def agreement_pairs(n: int | None, seed: int, phenomena) -> list[dict]:
    pairs = []
    for index, phenomenon in enumerate(phenomena):
        sizes, build = _agreement_space(phenomenon)
        points = []
        for point in product(*(range(s) for s in sizes)):
            built = build(*point)
            if built is not None:
                points.append(built)
        if n is not None and n > len(points):
            raise WnbError(f"the {phenomenon!r} template makes {len(points)} distinct pairs; ask for n <= {len(points)}")
        rng = random.Random(seed * 1009 + index)
        chosen = rng.sample(range(len(points)), len(points) if n is None else n)
        for i in chosen:
            (good, bad), condition = points[i]
            pairs.append({"good": good, "bad": bad, "phenomenon": phenomenon, "condition": condition})
    return pairs
