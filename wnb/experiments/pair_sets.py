"""Several sets of minimal pairs in one study, each named for what it is and scored by its own rule, and
the first-token rule said in words.

- :data:`SET_NAMES`: what each source of :func:`wnb.experiments.minimal_pairs.minimal_pairs` is;
- :data:`SET_SCORES`: how the follow-up scores each set (TSE by *mean* log-probability per token, BLiMP
  and the others by the summed log-probability); ``score=`` overrides it for all;
- :data:`FIRST_TOKEN`: what comes before each sentence — wnb's rule (the token that starts a plain
  document, :mod:`wnb.experiments.pair_scoring`) or the authors' (only the special tokens the tokenizer
  adds itself: none for Pythia, Qwen and SmolLM2, whose first word then goes unscored);
- :func:`pair_sets` loads several sets at once (a pair's ``set`` says which; with more than one set, each
  phenomenon is prefixed ``<set>/`` so that the study's per-phenomenon columns stay apart);
- :func:`score_pair_sets` scores each set by its rule and says which rules were used (``attrs``).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from wnb.errors import WnbError
from wnb.experiments.minimal_pairs import SOURCES, check_pairs, minimal_pairs
from wnb.experiments.pair_scoring import (
    SCORES,
    minimal_pair_scores,
    scoring_rule,
    tokenizer_prefix,
)

SET_NAMES = {
    "agreement": "wnb's agreement constructions (six hand-made subject-verb agreement templates, wnb's vocabulary)",
    "tse": "targeted syntactic evaluation: Marvin & Linzen's (2018) 16 constructions, wnb's generator and vocabulary",
    "knowledge": "wnb's knowledge pairs (facts and sums: a non-grammatical control)",
    "blimp": "BLiMP (Warstadt et al. 2020: 67 paradigms, downloaded)",
}
SET_SCORES = {"tse": "mean"}  # the follow-up's utils/tse.py; every other set by the summed log-probability
FIRST_TOKEN = {
    "wnb": "wnb's rule: each sentence after the token that starts a plain document, first word scored",
    "authors": "the authors' rule: only the tokenizer's own special tokens before the sentence (none: its first "
               "word unscored)",
}
UNNAMED = "pairs"  # the set of pairs given as a list


def set_of(name) -> str:
    """A set's short name: the source, or a JSONL file's stem."""
    return name if name in SOURCES else Path(str(name)).stem


def set_label(name) -> str:
    """What a set is, in words (a JSONL file: its path)."""
    return SET_NAMES.get(name, f"minimal pairs from {name}")


def first_token_prefix(tokenizer, rule: str = "wnb") -> str | None:
    """The ``prefix`` of :func:`wnb.minimal_pair_scores` that applies ``rule`` (:data:`FIRST_TOKEN`)."""
    if rule not in FIRST_TOKEN:
        raise WnbError(f"unknown first-token rule {rule!r}; choose from "
                       + "; ".join(f"{k} ({v})" for k, v in FIRST_TOKEN.items()))
    return None if rule == "wnb" else tokenizer_prefix(tokenizer)


def pair_sets(names, n=100, seed: int = 0) -> list[dict]:
    """The pairs of every set in ``names`` (sources or JSONL paths, :func:`minimal_pairs`), ``n`` per
    phenomenon of each (None: all; a mapping gives each set's, by name, default 100), each pair with its
    ``set``; with several sets each phenomenon reads ``<set>/<phenomenon>``."""
    names = [names] if isinstance(names, (str, Path)) else list(names)
    if not names:
        raise WnbError("no minimal-pair sets named; choose from " + ", ".join(SOURCES) + " or a JSONL path")
    if len(set(map(str, names))) != len(names):
        raise WnbError(f"a minimal-pair set is named twice: {names}")
    out = []
    for name in names:
        short = set_of(name)
        count = n.get(str(name), 100) if isinstance(n, dict) else n
        for pair in minimal_pairs(str(name), n=count, seed=seed):
            phenomenon = pair["phenomenon"] if len(names) == 1 else f"{short}/{pair['phenomenon']}"
            out.append({**pair, "phenomenon": phenomenon, "set": short})
    return out


def check_score(score: str | None) -> str | None:
    if score is not None and score not in SCORES:
        raise WnbError(f"score must be 'sum' (total log-prob), 'mean' (per scored token) or None (each set's own "
                       f"rule: {', '.join(f'{k} {v}' for k, v in SET_SCORES.items())}, the others sum); got {score!r}")
    return score


def score_pair_sets(lm, pairs, score: str | None = None, prefix: str | None = None, batch_size: int = 32,
                    progress: bool = True) -> pd.DataFrame:
    """:func:`wnb.minimal_pair_scores` of every set of ``pairs`` (by their ``set``; pairs without one form a
    single set) scored by ``score`` or, with None, each set's :data:`SET_SCORES` rule (sum otherwise), in
    the pairs' order, with a ``set`` column; ``attrs``: ``score`` (``"tse: mean, blimp: sum"`` or one rule)
    and ``scoring_rule`` (:func:`wnb.scoring_rule` of ``prefix``)."""
    pairs = check_pairs(pairs)
    check_score(score)
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        groups.setdefault(pair.get("set", UNNAMED), []).append(i)
    parts, rules = [], {}
    for name, index in groups.items():
        rules[name] = score or SET_SCORES.get(name, "sum")
        part = minimal_pair_scores(lm, [pairs[i] for i in index], batch_size=batch_size, prefix=prefix,
                                   progress=progress, score=rules[name])
        parts.append(part.assign(set=name).set_index(pd.Index(index)))
    table = pd.concat(parts).sort_index().reset_index(drop=True)
    table.attrs.update(score=score_words(rules), scoring_rule=scoring_rule(lm.tokenizer, prefix))
    return table


def score_words(rules: dict) -> str:
    """``{set: rule}`` in words: the one rule when all sets share it, else ``"tse: mean, agreement: sum"``."""
    if len(set(rules.values())) == 1:
        return next(iter(rules.values()))
    return ", ".join(f"{name}: {rule}" for name, rule in rules.items())
