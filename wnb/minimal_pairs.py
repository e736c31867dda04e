"""Minimal pairs: a grammatical and an ungrammatical sentence that differ minimally, and a model's
accuracy at preferring the grammatical one by sentence log-probability (summed, or averaged per token).

Sources (:func:`minimal_pairs`):

- ``"agreement"`` — wnb's agreement constructions: subject–verb agreement generated offline from six
  hand-made templates with a small built-in vocabulary (simple agreement, across a prepositional phrase,
  across a subject relative clause, across an object relative clause, in a sentential complement, and
  across short VP coordination). The two sentences of a pair differ in one word only, the verb that must
  agree, in its number.
- ``"tse"`` — targeted syntactic evaluation: the sixteen constructions of Marvin & Linzen (2018) for
  agreement, reflexives and negative polarity items, generated offline (:mod:`wnb.tse`).
- ``"knowledge"`` — two grammatical sentences that differ in a fact or a sum (:mod:`wnb.knowledge`),
  a non-grammatical control.
- ``"blimp"`` — BLiMP (Warstadt et al. 2020) through ``datasets`` (``nyu-mll/blimp``, needs a network
  the first time); the phenomenon of a pair is BLiMP's ``linguistics_term``.
- a path to a JSONL file, one ``{"good": ..., "bad": ..., "phenomenon": ...}`` object per line.

Scoring (:func:`sentence_logprobs`): a sentence's score is the sum of ``log p(token | previous tokens)``
over its scored tokens (``score="mean"``: that sum over their number, as the follow-up scores TSE); a
pair is right when the good sentence scores strictly higher. Both sentences get
the same prefix, so the first token is conditioned too: the token that starts a plain document for the
model (:func:`prefix_ids`):

1. the tokenizer's BOS token (Llama, Mistral, Gemma; GPT-2 and Pythia, whose BOS is ``<|endoftext|>``),
   unless it is a chat-turn marker: a BOS that appears in the tokenizer's chat template and that the
   tokenizer does not put before plain text itself. SmolLM2-Instruct's (the bundled model's) BOS is
   ``<|im_start|>``, which in its training is followed by a role name, not by prose: conditioned on
   it, the dense model gets only 74% of simple agreement pairs right, against 98% after ``<|endoftext|>``;
2. otherwise its EOS token, or else ``<|endoftext|>`` (the document separator of GPT-2-style
   pretraining: SmolLM2, Qwen2), whichever first is not a chat marker itself;
3. where there is none, nothing precedes the sentence and its first token is not scored, in both
   sentences alike.

``prefix=`` (a text, e.g. ``"<|im_start|>"`` or ``"\n"``) replaces the rule by that text; ``prefix=""``
puts nothing before the sentence and scores it from its second token, as the follow-up's code does for
tokenizers that add no BOS themselves (Pythia, Qwen, SmolLM2; :func:`tokenizer_prefix` gives the prefix
that reproduces it for any tokenizer). :func:`scoring_rule` says in words which rule a prefix gives.
"""
from __future__ import annotations

import json
import os
import random
import socket
from itertools import product
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from wnb.errors import WnbError
from wnb.model.state import holding

SOURCES = ("agreement", "tse", "knowledge", "blimp")
SCORES = ("sum", "mean")
BLIMP = "nyu-mll/blimp"
DOCUMENT_SEPARATOR = "<|endoftext|>"  # GPT-2, Pythia, Qwen2, SmolLM2: the token between pretraining documents

# ---------------------------------------------------------------- wnb's agreement constructions

# (singular, plural) forms. Nouns serve as subjects and as attractors (never the same noun in a pair).
_NOUNS = (("author", "authors"), ("pilot", "pilots"), ("surgeon", "surgeons"), ("farmer", "farmers"),
          ("manager", "managers"), ("customer", "customers"), ("officer", "officers"),
          ("teacher", "teachers"), ("senator", "senators"), ("dancer", "dancers"), ("lawyer", "lawyers"),
          ("doctor", "doctors"))
_INTRANSITIVE = (("laughs", "laugh"), ("smiles", "smile"), ("swims", "swim"), ("waits", "wait"),
                 ("sings", "sing"), ("talks", "talk"))
_TRANSITIVE = (("likes", "like"), ("admires", "admire"), ("hates", "hate"), ("loves", "love"),
               ("knows", "know"))
_PREPOSITIONS = ("next to", "behind", "near", "in front of", "across from")
_SAYING = ("said", "knew", "thought", "believed", "assumed")  # past tense: no agreement of their own
_NUMBERS = ("singular", "plural")

AGREEMENT_PHENOMENA = ("simple", "prepositional_phrase", "subject_relative_clause", "object_relative_clause",
                       "sentential_complement", "vp_coordination")


def _verb(pair, number: int, grammatical: bool) -> str:
    return pair[number if grammatical else 1 - number]


def _agreement_space(phenomenon: str):
    """The axes of one template and a function from one point of them to (good, bad, condition)."""
    nouns = range(len(_NOUNS))
    num = range(2)
    if phenomenon == "simple":
        axes = (nouns, num, range(len(_INTRANSITIVE)))

        def build(s, sn, v):
            stem = f"The {_NOUNS[s][sn]}"
            return ([f"{stem} {_verb(_INTRANSITIVE[v], sn, g)}." for g in (True, False)], f"{_NUMBERS[sn]} subject")
    elif phenomenon == "prepositional_phrase":
        axes = (nouns, num, nouns, num, range(len(_PREPOSITIONS)), range(len(_INTRANSITIVE)))

        def build(s, sn, a, an, p, v):
            if s == a:
                return None
            stem = f"The {_NOUNS[s][sn]} {_PREPOSITIONS[p]} the {_NOUNS[a][an]}"
            return ([f"{stem} {_verb(_INTRANSITIVE[v], sn, g)}." for g in (True, False)],
                    f"{_NUMBERS[sn]} subject, {_NUMBERS[an]} attractor")
    elif phenomenon == "subject_relative_clause":
        axes = (nouns, num, nouns, num, range(len(_TRANSITIVE)), range(len(_INTRANSITIVE)))

        def build(s, sn, a, an, t, v):
            if s == a:
                return None
            stem = f"The {_NOUNS[s][sn]} that {_verb(_TRANSITIVE[t], sn, True)} the {_NOUNS[a][an]}"
            return ([f"{stem} {_verb(_INTRANSITIVE[v], sn, g)}." for g in (True, False)],
                    f"{_NUMBERS[sn]} subject, {_NUMBERS[an]} attractor")
    elif phenomenon == "object_relative_clause":
        axes = (nouns, num, nouns, num, range(len(_TRANSITIVE)), range(len(_INTRANSITIVE)))

        def build(s, sn, a, an, t, v):
            if s == a:
                return None
            stem = f"The {_NOUNS[s][sn]} that the {_NOUNS[a][an]} {_verb(_TRANSITIVE[t], an, True)}"
            return ([f"{stem} {_verb(_INTRANSITIVE[v], sn, g)}." for g in (True, False)],
                    f"{_NUMBERS[sn]} subject, {_NUMBERS[an]} attractor")
    elif phenomenon == "sentential_complement":
        axes = (nouns, num, nouns, num, range(len(_SAYING)), range(len(_INTRANSITIVE)))

        def build(m, mn, s, sn, k, v):
            if s == m:
                return None
            stem = f"The {_NOUNS[m][mn]} {_SAYING[k]} the {_NOUNS[s][sn]}"
            return ([f"{stem} {_verb(_INTRANSITIVE[v], sn, g)}." for g in (True, False)],
                    f"{_NUMBERS[sn]} subject, {_NUMBERS[mn]} main-clause subject")
    elif phenomenon == "vp_coordination":
        axes = (nouns, num, range(len(_INTRANSITIVE)), range(len(_INTRANSITIVE)))

        def build(s, sn, v1, v2):
            if v1 == v2:
                return None
            stem = f"The {_NOUNS[s][sn]} {_verb(_INTRANSITIVE[v1], sn, True)} and"
            return ([f"{stem} {_verb(_INTRANSITIVE[v2], sn, g)}." for g in (True, False)], f"{_NUMBERS[sn]} subject")
    else:
        raise WnbError(f"unknown agreement phenomenon {phenomenon!r}; choose from {', '.join(AGREEMENT_PHENOMENA)}")
    return [len(a) for a in axes], build


def _agreement(n: int | None, seed: int, phenomena) -> list[dict]:
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
        return _agreement(n, seed, phenomena or AGREEMENT_PHENOMENA)
    if name == "tse":
        from wnb.tse import tse_pairs

        return tse_pairs(n, seed, phenomena)
    if name == "knowledge":
        from wnb.knowledge import knowledge_pairs

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


def network_available(url: str | None = None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub (``$HF_ENDPOINT`` or huggingface.co) opens."""
    parsed = urlparse(url or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_mode() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _blimp(n, seed: int, phenomena) -> list[dict]:
    hint = "use minimal_pairs('tse') or minimal_pairs('agreement') offline, or a JSONL file of your own pairs"
    try:
        import datasets
    except ImportError as exc:
        raise WnbError(f"BLiMP needs the `datasets` package (pip install datasets); {hint}") from exc
    # Without a network datasets retries for ~20 s per call before failing: look first. In offline
    # mode (HF_HUB_OFFLINE=1) a cached copy is read without the network.
    if not _offline_mode() and not network_available():
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
        raise WnbError("pairs must be a list of {good, bad, phenomenon} dicts or a name for wnb.minimal_pairs")
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

def prefix_ids(tokenizer, prefix: str | None = None) -> list[int]:
    """The token ids put before every sentence (module docstring): ``prefix`` tokenized (``""``: none),
    else the token that starts a plain document for this tokenizer, or ``[]``."""
    if prefix == "":
        return []
    if prefix is not None:
        ids = tokenizer(prefix, add_special_tokens=False).input_ids
        if not ids:
            raise WnbError(f"the prefix {prefix!r} has no tokens")
        return list(ids)
    template = getattr(tokenizer, "chat_template", None)
    template = template if isinstance(template, str) else ""
    bos = getattr(tokenizer, "bos_token", None)
    if bos is not None and tokenizer.bos_token_id is not None:
        prepended = tokenizer("a", add_special_tokens=True).input_ids[:1] == [tokenizer.bos_token_id]
        if prepended or bos not in template:
            return [int(tokenizer.bos_token_id)]
    candidates = [(getattr(tokenizer, "eos_token", None), getattr(tokenizer, "eos_token_id", None))]
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if DOCUMENT_SEPARATOR in vocab:
        candidates.append((DOCUMENT_SEPARATOR, vocab[DOCUMENT_SEPARATOR]))
    for text, value in candidates:
        if text is not None and value is not None and text not in template:
            return [int(value)]
    return []


def tokenizer_prefix(tokenizer) -> str | None:
    """The ``prefix`` that scores a sentence after exactly the special tokens the tokenizer puts before
    text itself (``add_special_tokens=True``), as the follow-up's code does: ``""`` where it puts none
    (Pythia, Qwen, SmolLM2: the first token goes unscored), ``None`` where wnb's own rule gives the same
    (a BOS: Llama, Mistral), else the text of those tokens."""
    plain = list(tokenizer("a", add_special_tokens=False).input_ids)
    full = list(tokenizer("a", add_special_tokens=True).input_ids)
    start = next((k for k in range(len(full)) if full[k:k + len(plain)] == plain), 0)
    head = full[:start]
    if not head:
        return ""
    return None if head == prefix_ids(tokenizer) else tokenizer.decode(head)


def scoring_rule(tokenizer, prefix: str | None = None) -> str:
    """What comes before each sentence with this ``prefix``, in words for a table: ``"after <|endoftext|>"``
    (wnb's rule, naming the token), ``"after '\\n'"`` (a prefix given), or ``"from the second token"``
    (nothing before: ``prefix=""``, or no document token at all)."""
    ids = prefix_ids(tokenizer, prefix)
    if not ids:
        return "from the second token"
    return f"after {tokenizer.convert_ids_to_tokens(ids[0])}" if prefix is None else f"after {prefix!r}"


def _check_score(score: str) -> str:
    if score not in SCORES:
        raise WnbError(f"score must be 'sum' (total log-prob) or 'mean' (per scored token), not {score!r}")
    return score


@torch.no_grad()
def sentence_logprobs(lm, sentences, batch_size: int = 32, prefix: str | None = None,
                      progress: bool = True, score: str = "sum") -> np.ndarray:
    """Log-probability (nats, float64) of each sentence under ``lm``: the sum over its scored tokens,
    or with ``score="mean"`` that sum over their number (module docstring: how the first token is
    conditioned). Sentences of equal token length are batched together, so no padding or attention
    mask is involved."""
    from wnb.model.lm import require_local

    require_local(lm, "minimal-pair scoring")
    tok = lm.tokenizer
    if tok is None:
        raise WnbError(f"{lm.name} has no tokenizer, which scoring sentences needs")
    if batch_size < 1:
        raise WnbError(f"batch_size must be at least 1 (got {batch_size})")
    _check_score(score)
    sentences = list(sentences)
    head = prefix_ids(tok, prefix)
    skip = len(head) if head else 1  # tokens not scored: the prefix, or the unconditioned first token
    encoded = [head + list(tok(s, add_special_tokens=False).input_ids) for s in sentences]
    for s, ids in zip(sentences, encoded):
        if len(ids) <= skip:
            raise WnbError(f"the sentence {s!r} has no token to score")
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    batches = [group[s:s + batch_size] for _, group in sorted(by_length.items())
               for s in range(0, len(group), batch_size)]
    scores = np.empty(len(encoded), dtype=np.float64)
    for batch in tqdm(batches, desc="minimal pairs", disable=not progress, leave=False):
        ids = torch.tensor([encoded[i] for i in batch], device=lm.device)
        with holding(lm, "minimal-pair scoring"):
            logits = lm.model(input_ids=ids).logits[:, skip - 1:-1].float()
        target = ids[:, skip:, None]
        logp = logits.gather(-1, target)[..., 0] - torch.logsumexp(logits, dim=-1)
        total = logp.double().sum(1).cpu().numpy()
        scores[batch] = total / logp.shape[1] if score == "mean" else total
    return scores


def minimal_pair_scores(lm, pairs, batch_size: int = 32, prefix: str | None = None,
                        progress: bool = True, score: str = "sum") -> pd.DataFrame:
    """One row per pair: ``phenomenon, good, bad, good_logprob, bad_logprob, margin, correct``, and
    ``construction``, ``condition`` or ``paradigm`` where every pair has it. The log-probs are sums or
    means per token (``score``); ``attrs["score"]`` and ``attrs["scoring_rule"]`` (:func:`scoring_rule`)
    say how they were scored."""
    pairs = check_pairs(pairs)
    texts = [p["good"] for p in pairs] + [p["bad"] for p in pairs]
    scores = sentence_logprobs(lm, texts, batch_size=batch_size, prefix=prefix, progress=progress, score=score)
    good, bad = scores[:len(pairs)], scores[len(pairs):]
    table = pd.DataFrame({"phenomenon": [p["phenomenon"] for p in pairs], "good": [p["good"] for p in pairs],
                          "bad": [p["bad"] for p in pairs], "good_logprob": good, "bad_logprob": bad,
                          "margin": good - bad, "correct": good > bad})
    for key in ("construction", "condition", "paradigm"):
        if all(key in p for p in pairs):
            table.insert(table.columns.get_loc("good"), key, [p[key] for p in pairs])
    table.attrs.update(score=score, scoring_rule=scoring_rule(lm.tokenizer, prefix))
    return table


def pair_accuracy(scores: pd.DataFrame, by: str = "phenomenon") -> pd.DataFrame:
    """Per ``by`` (a column: phenomenon, construction...; first-seen order) of a :func:`minimal_pair_scores`
    table: ``accuracy, n, margin``; its ``attrs`` are kept."""
    if by not in scores.columns:
        raise WnbError(f"the scores have no column {by!r}; they have {', '.join(scores.columns)}")
    grouped = scores.groupby(by, sort=False)
    table = pd.DataFrame({"accuracy": grouped["correct"].mean(), "n": grouped.size(),
                          "margin": grouped["margin"].mean()}).reset_index()
    table.attrs.update(scores.attrs)
    return table


def minimal_pair_accuracy(lm, pairs, batch_size: int = 32, prefix: str | None = None,
                          progress: bool = True, score: str = "sum", by: str = "phenomenon") -> pd.DataFrame:
    """Accuracy of ``lm`` on minimal pairs per phenomenon (or per another column ``by``, e.g.
    ``"construction"`` for TSE): ``phenomenon, accuracy, n, margin`` (mean log-prob of good minus bad).
    A pair is right when its good sentence has the higher log-prob, summed or per token (``score``)."""
    scores = minimal_pair_scores(lm, pairs, batch_size=batch_size, prefix=prefix, progress=progress, score=score)
    return pair_accuracy(scores, by=by)
