"""Scoring minimal pairs.

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

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from wnb.errors import WnbError
from wnb.experiments.minimal_pairs import check_pairs
from wnb.model.lm import require_local
from wnb.model.state import holding

SCORES = ("sum", "mean")
DOCUMENT_SEPARATOR = "<|endoftext|>"  # GPT-2, Pythia, Qwen2, SmolLM2: the token between pretraining documents


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
