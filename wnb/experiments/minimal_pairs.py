"""Minimal pairs: a grammatical and an ungrammatical sentence that differ minimally, and a model's
accuracy at preferring the grammatical one by sentence log-probability (summed, or averaged per token).

Sources (:func:`minimal_pairs`):

- ``"agreement"`` — wnb's agreement constructions: subject–verb agreement generated offline from six
  hand-made templates with a small built-in vocabulary (simple agreement, across a prepositional phrase,
  across a subject relative clause, across an object relative clause, in a sentential complement, and
  across short VP coordination). The two sentences of a pair differ in one word only, the verb that must
  agree, in its number.
- ``"tse"`` — targeted syntactic evaluation: the sixteen constructions of Marvin & Linzen (2018) for
  agreement, reflexives and negative polarity items, generated offline (:mod:`wnb.experiments.tse`).
- ``"knowledge"`` — two grammatical sentences that differ in a fact or a sum (:mod:`wnb.experiments.knowledge`),
  a non-grammatical control.
- ``"blimp"`` — BLiMP (Warstadt et al. 2020) through ``datasets`` (``nyu-mll/blimp``, needs a network
  the first time); the phenomenon of a pair is BLiMP's ``linguistics_term``.
- a path to a JSONL file, one ``{"good": ..., "bad": ..., "phenomenon": ...}`` object per line.

Scoring: :mod:`wnb.experiments.pair_scoring`.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from wnb.data.corpora import network_available, offline_mode
from wnb.errors import WnbError
from wnb.experiments.agreement import AGREEMENT_PHENOMENA, agreement_pairs
from wnb.experiments.knowledge import knowledge_pairs
from wnb.experiments.tse import tse_pairs

SOURCES = ("agreement", "tse", "knowledge", "blimp")
BLIMP = "nyu-mll/blimp"

# ---------------------------------------------------------------- wnb's agreement constructions


# ---------------------------------------------------------------- loading

def minimal_pairs(name: str = "agreement", n: int | None = 100, seed: int = 0, phenomena=None) -> list[dict]:
    """Minimal pairs as a list of ``{"good", "bad", "phenomenon"}`` dicts (``"agreement"`` pairs also
    carry a ``"condition"``: the numbers of the subject and of the attractor noun; ``"tse"`` pairs a
    ``"construction"`` and a ``"condition"``; BLiMP pairs a ``"paradigm"``).

    ``name``: ``"agreement"`` (wnb's agreement constructions, offline), ``"tse"`` (Marvin & Linzen's
    constructions, offline), ``"knowledge"`` (facts and sums, offline), ``"blimp"`` (needs ``datasets``
    and a network the first time) or the path of a JSONL file. ``n`` pairs per phenomenon (TSE: per
    construction; BLiMP: per paradigm, ``None`` taking all 1,000 of each of its 67), drawn with ``seed``
    (``None``: all); ``phenomena`` keeps only those phenomena (TSE: constructions or phenomena; BLiMP:
    linguistics terms or paradigm names). The same arguments always give the same pairs.
    """
    if n is not None and (not isinstance(n, (int, np.integer)) or n < 1):
        raise WnbError(f"n must be a positive number of pairs per phenomenon, or None for all (got {n!r})")
    if phenomena is not None:
        phenomena = [phenomena] if isinstance(phenomena, str) else list(phenomena)
        if not phenomena:
            raise WnbError("phenomena is empty; pass None for all")
    if name == "agreement":
        unknown = [p for p in phenomena or () if p not in AGREEMENT_PHENOMENA]
        if unknown:
            raise WnbError(f"unknown agreement phenomena {unknown}; choose from {', '.join(AGREEMENT_PHENOMENA)}")
        return agreement_pairs(n, seed, phenomena or AGREEMENT_PHENOMENA)
    if name == "tse":

        return tse_pairs(n, seed, phenomena)
    if name == "knowledge":

        return knowledge_pairs(n, seed, phenomena)
    if name == "blimp":
        return _blimp(n, seed, phenomena)
    path = Path(str(name)).expanduser()
    if path.is_file():
        return _sample(_read_jsonl(path), n, seed, phenomena, str(path))
    raise WnbError(f"unknown minimal pairs {name!r}: use 'agreement', 'tse' or 'knowledge' (offline), 'blimp' "
                   "(needs a network) or the path of a JSONL file of {\"good\", \"bad\", \"phenomenon\"} rows")


def _read_jsonl(path: Path) -> list[dict]:
    pairs = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise WnbError(f"{path}, line {number}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise WnbError(f"{path}, line {number}: each line must be a JSON object with good, bad, phenomenon")
            row = {"good": row.get("good", row.get("sentence_good")), "bad": row.get("bad", row.get("sentence_bad")),
                   "phenomenon": row.get("phenomenon", row.get("linguistics_term"))}
            try:
                pairs.append(_check_pair(row))
            except WnbError as exc:
                raise WnbError(f"{path}, line {number}: {exc}") from None
    if not pairs:
        raise WnbError(f"{path} holds no minimal pairs; write one JSON object per line: "
                       '{"good": "The author laughs.", "bad": "The author laugh.", "phenomenon": "agreement"}')
    return pairs


def _sample(pairs: list[dict], n, seed: int, phenomena, where: str) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for pair in pairs:
        groups.setdefault(pair["phenomenon"], []).append(pair)
    if phenomena is not None:
        missing = [p for p in phenomena if p not in groups]
        if missing:
            raise WnbError(f"{where} has no pairs of {missing}; it has {', '.join(groups)}")
        groups = {p: groups[p] for p in phenomena}
    out = []
    for index, (phenomenon, group) in enumerate(groups.items()):
        if n is not None and n < len(group):
            keep = sorted(random.Random(seed * 1009 + index).sample(range(len(group)), n))
            group = [group[i] for i in keep]
        out += group
    return out


def _blimp(n, seed: int, phenomena) -> list[dict]:
    hint = "use minimal_pairs('tse') or minimal_pairs('agreement') offline, or a JSONL file of your own pairs"
    try:
        import datasets
    except ImportError as exc:
        raise WnbError(f"BLiMP needs the `datasets` package (pip install datasets); {hint}") from exc
    # Without a network datasets retries for ~20 s per call before failing: look first. In offline
    # mode (HF_HUB_OFFLINE=1) a cached copy is read without the network.
    if not offline_mode() and not network_available():
        raise WnbError(f"BLiMP is downloaded through `datasets` ({BLIMP}) and needs a network connection the "
                       f"first time, but the Hugging Face hub cannot be reached from here; {hint} (with a cached "
                       "copy, set HF_HUB_OFFLINE=1)")
    try:
        configs = datasets.get_dataset_config_names(BLIMP)
        rows = []
        for config in tqdm(configs, desc="BLiMP", leave=False):
            ds = datasets.load_dataset(BLIMP, config, split="train")
            term = ds[0]["linguistics_term"] if len(ds) else config
            if phenomena is not None and term not in phenomena and config not in phenomena:
                continue
            if n is not None and n < len(ds):
                ds = ds.select(sorted(random.Random(f"{seed}:{config}").sample(range(len(ds)), n)))
            rows += [{"good": good, "bad": bad, "phenomenon": term, "paradigm": config}
                     for good, bad in zip(ds["sentence_good"], ds["sentence_bad"])]
    except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, HTTP errors...
        raise WnbError(f"could not load BLiMP ({BLIMP}) through `datasets`: {str(exc).splitlines()[0]}; {hint}") from exc
    if not rows:
        raise WnbError(f"no BLiMP pairs match phenomena={phenomena}")
    return rows


def _check_pair(pair) -> dict:
    if not isinstance(pair, dict):
        raise WnbError(f"a minimal pair must be a dict with good, bad, phenomenon (got {type(pair).__name__})")
    for key in ("good", "bad", "phenomenon"):
        value = pair.get(key)
        if not isinstance(value, str) or not value.strip():
            raise WnbError(f"a minimal pair needs a non-empty text {key!r} (got {value!r})")
    if pair["good"] == pair["bad"]:
        raise WnbError(f"the good and bad sentences of a pair are the same: {pair['good']!r}")
    return pair


def check_pairs(pairs) -> list[dict]:
    """Validate minimal pairs (a list of dicts, or a name/path for :func:`minimal_pairs`)."""
    if isinstance(pairs, (str, Path)):
        return minimal_pairs(str(pairs))
    if pairs is None or isinstance(pairs, dict):
        raise WnbError("pairs must be a list of {good, bad, phenomenon} dicts or a name for wnb.experiments.minimal_pairs")
    pairs = list(pairs)
    if not pairs:
        raise WnbError("no minimal pairs given")
    for i, pair in enumerate(pairs):
        try:
            _check_pair(pair)
        except WnbError as exc:
            raise WnbError(f"pair {i}: {exc}") from None
    return pairs


# ---------------------------------------------------------------- scoring


