"""Two-choice items that test knowledge, not grammar: both sentences are grammatical and differ only in
the answer word(s), e.g. "2 plus 3 is 5." against "2 plus 3 is 6.". They are the non-grammatical side
of the follow-up's double dissociation: ablating the Wasserstein neurons' negative side hurts grammar
more than the perplexity-matched control does, and the control hurts non-grammatical tasks more.

Generated offline from wnb's own small tables (:data:`PHENOMENA`); the bundled 135M-parameter model,
by summed log-probability, gets over 90% of capitals, opposites, sums and counts, about 60% of days,
months and colours (40 items of each, seed 0):

- ``arithmetic`` — sums and differences of single digits ("2 plus 3 is 5."); wrong answers one or two away;
- ``capitals`` — the capitals of ten large countries; wrong answers are the other capitals;
- ``days`` and ``months`` — the day (month) after or before another; wrong answers are the others,
  the named day (month) itself excepted;
- ``opposites`` — common adjectives and their opposites; wrong answers are the other adjectives;
- ``colours`` — the colour of familiar things; wrong answers are other colours;
- ``counts`` — how many days in a week, legs on a spider...; wrong answers are other numbers.

Each item is ``{"good", "bad", "phenomenon", "condition"}``, the shape of a minimal pair, so
:func:`wnb.minimal_pair_scores` scores it; :func:`wnb.experiments.minimal_pairs` offers it as ``"knowledge"``.
"""
from __future__ import annotations

import random
from numbers import Integral

from wnb.errors import WnbError

_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve")
_CAPITALS = (("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Japan", "Tokyo"), ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"),
             ("Greece", "Athens"), ("England", "London"))
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_OPPOSITES = (("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("wet", "dry"),
              ("rich", "poor"), ("full", "empty"), ("early", "late"), ("tall", "short"), ("light", "dark"))
_COLOURS = ("green", "white", "blue", "black", "red", "yellow", "orange", "brown", "purple", "pink")
_COLOURED = (("Grass is", "green"), ("Fresh snow is", "white"), ("On a clear day the sky is", "blue"),
             ("Coal is", "black"), ("Blood is", "red"), ("Ripe bananas are", "yellow"), ("Carrots are", "orange"),
             ("Milk is", "white"), ("Ripe tomatoes are", "red"), ("Lemons are", "yellow"),
             ("Chocolate is", "brown"), ("Ripe oranges are", "orange"))
_COUNTED = (("A week has", 7, "days"), ("A year has", 12, "months"), ("A triangle has", 3, "sides"),
            ("A square has", 4, "sides"), ("A spider has", 8, "legs"), ("A dog has", 4, "legs"),
            ("A hand has", 5, "fingers"), ("A bicycle has", 2, "wheels"), ("A car has", 4, "wheels"),
            ("A bird has", 2, "wings"))
_COUNT_CHOICES = (2, 3, 4, 5, 6, 7, 8, 10, 12)

PHENOMENA = ("arithmetic", "capitals", "days", "months", "opposites", "colours", "counts")


def _arithmetic():
    """Single digits: with the numbers in words ("Two plus three is five.") the bundled SmolLM2-135M
    prefers the right answer less often than chance; in digits it gets about nine in ten."""
    for a in range(1, 10):
        for b in range(1, 10):
            for op, answer in (("plus", a + b), ("minus", a - b)):
                if not 0 <= answer <= 9 or (op == "minus" and b >= a):
                    continue
                for wrong in (answer - 2, answer - 1, answer + 1, answer + 2):
                    if 0 <= wrong <= 9:
                        yield f"{a} {op} {b} is {answer}.", f"{a} {op} {b} is {wrong}.", \
                            "addition" if op == "plus" else "subtraction"


def _capitals():
    for country, capital in _CAPITALS:
        for _, wrong in _CAPITALS:
            if wrong != capital:
                yield f"The capital of {country} is {capital}.", f"The capital of {country} is {wrong}.", country


def _sequence(names, unit):
    for i, name in enumerate(names):
        for step, where in ((1, "after"), (-1, "before")):
            answer = names[(i + step) % len(names)]
            stem = f"The {unit} {where} {name} is"
            for wrong in names:
                if wrong not in (answer, name):
                    yield f"{stem} {answer}.", f"{stem} {wrong}.", where


def _opposites():
    words = [w for pair in _OPPOSITES for w in pair]
    for first, second in _OPPOSITES:
        for word, answer in ((first, second), (second, first)):
            for wrong in words:
                if wrong not in (word, answer):
                    yield f"The opposite of {word} is {answer}.", f"The opposite of {word} is {wrong}.", word


def _colours():
    for stem, answer in _COLOURED:
        for wrong in _COLOURS:
            if wrong != answer:
                yield f"{stem} {answer}.", f"{stem} {wrong}.", stem.split()[-2].lower()


def _counts():
    for stem, answer, noun in _COUNTED:
        for wrong in _COUNT_CHOICES:
            if wrong != answer:
                yield f"{stem} {_WORDS[answer]} {noun}.", f"{stem} {_WORDS[wrong]} {noun}.", noun


_MAKERS = {"arithmetic": _arithmetic, "capitals": _capitals, "days": lambda: _sequence(_DAYS, "day"),
           "months": lambda: _sequence(_MONTHS, "month"), "opposites": _opposites, "colours": _colours,
           "counts": _counts}


def knowledge_pairs(n: int | None = None, seed: int = 0, phenomena=None) -> list[dict]:
    """Knowledge items (module docstring): all of each phenomenon (``n=None``), or ``n`` drawn per
    phenomenon with ``seed`` (all of one that has fewer). ``phenomena`` keeps only those of
    :data:`PHENOMENA`. The same arguments always give the same items, in :data:`PHENOMENA` order."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, Integral) or n < 1):
        raise WnbError(f"n must be a positive number of items per phenomenon, or None for all (got {n!r})")
    names = list(PHENOMENA) if phenomena is None else [phenomena] if isinstance(phenomena, str) else list(phenomena)
    unknown = [p for p in names if p not in _MAKERS]
    if unknown or not names:
        raise WnbError(f"unknown knowledge phenomena {unknown or names}; choose from {', '.join(PHENOMENA)}")
    out = []
    for name in dict.fromkeys(names):
        items = [{"good": good, "bad": bad, "phenomenon": name, "condition": condition}
                 for good, bad, condition in _MAKERS[name]()]
        if n is not None and n < len(items):
            items = [items[i] for i in random.Random(f"knowledge:{seed}:{name}").sample(range(len(items)), n)]
        out += items
    return out
