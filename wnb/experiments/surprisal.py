"""Per-token surprisal: next-token NLL of every held-out token, dense vs an intervention, by token class.

The follow-up paper (Kong et al., ICLR 2026) tags tokens with spaCy: the universal POS tag (UPOS) and the
dependency label of the word each token overlaps most, by character offsets. wnb does the same when a
spaCy English pipeline is installed (:mod:`wnb.experiments.tagging`, ``pip install 'wnb[tagging]'``) and
otherwise falls back to a **closed English word list shipped here** (:data:`FUNCTION_WORDS`,
:data:`ADVERBS`) and the token's characters; ``tagger=`` chooses, and every table says which was used
(``attrs["tagger"]``). The classes follow Universal Dependencies, so the two agree where the list knows
the word: determiner (DET), preposition (ADP), pronoun (PRON, possessives included), auxiliary (AUX),
particle (PART: infinitival "to", "not", possessive "'s"), conjunction (CCONJ and SCONJ), adverb (ADV),
content (NOUN, PROPN, VERB, ADJ, INTJ), punctuation (PUNCT, SYM), number (NUM), other.

How the list maps a (subword) token to a class:

1. Its text (:func:`token_texts`: what it adds to the decoded text, with its leading space) with
   surrounding whitespace stripped and lower-cased (``" The"`` → ``"the"``).
2. Empty (a space or newline token), a special token, or an undecodable byte piece → ``"other"``.
3. Only digits (with ``.`` ``,`` between them) → ``"number"``; only punctuation or symbols →
   ``"punctuation"``.
4. A word of the list → its class (alone, ``"that"`` is a conjunction, ``"to"`` and ``"'s"`` particles).
5. Anything else with a letter → ``"content"`` (adverbs the list does not name included).

With context (:func:`token_classes`), a token that is a piece of a longer word — it starts with a
letter and the previous token ends with one (no space between), or the next token continues it — is
``"content"`` even if its text is on the list (``"the"`` of ``"the" + "ory"``), and three ambiguous words
are resolved by their neighbours, approximately:

- ``"that"`` before a content word and not after one is a determiner ("that book"), before an
  auxiliary, punctuation or nothing a pronoun ("that is"), otherwise a conjunction ("said that the",
  and the relativizer of "the book that fell", which UD calls a pronoun);
- ``"to"`` before a determiner, pronoun, number or capitalized word is a preposition ("to the", "to
  London"), otherwise the infinitive's particle ("to go"; "to school" is misread so);
- ``"'s"`` after a pronoun, "that", "here" or a wh-adverb is an auxiliary ("it's", "that's", "where's"),
  otherwise the possessive particle.

Every class belongs to one of the groups function, content, punctuation, number, other
(:data:`CLASS_GROUPS`; adverbs are content, an open class in UD).
"""
from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd
import torch

from wnb.compression.clamp import check_neurons, check_side, sign_ablated
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.experiments.tagging import align_tags, classes_of, resolve_tagger
from wnb.tracing.nll import token_nll

# The closed word list (lower case). Contractions appear as the pieces BPE tokenizers cut them into.
FUNCTION_WORDS: dict[str, tuple[str, ...]] = {
    "determiner": (
        "a", "an", "the", "this", "these", "those", "whose", "each", "every", "either", "neither", "some",
        "any", "no", "all", "both", "few", "many", "much", "more", "most", "several", "such", "whichever",
        "another", "other", "enough", "less", "least", "fewer",
    ),
    "preposition": (
        "about", "above", "across", "after", "against", "along", "amid", "among", "around", "as", "at",
        "before", "behind", "below", "beneath", "beside", "besides", "between", "beyond", "by", "despite",
        "down", "during", "except", "for", "from", "in", "inside", "into", "like", "near", "of", "off",
        "on", "onto", "out", "outside", "over", "past", "per", "since", "than", "through", "throughout",
        "till", "toward", "towards", "under", "underneath", "until", "unto", "up", "upon", "via",
        "with", "within", "without",
    ),
    "pronoun": (
        "i", "me", "mine", "myself", "you", "yours", "yourself", "yourselves", "he", "him", "himself",
        "she", "her", "hers", "herself", "it", "itself", "we", "us", "ours", "ourselves", "they", "them",
        "theirs", "themselves", "who", "whom", "whoever", "someone", "somebody", "something", "anyone",
        "anybody", "anything", "everyone", "everybody", "everything", "nobody", "nothing", "none",
        "oneself", "there", "my", "your", "his", "its", "our", "their", "which", "what", "whatever",
    ),
    "auxiliary": (
        "be", "am", "is", "are", "was", "were", "been", "being", "have", "has", "had", "having", "do",
        "does", "did", "will", "would", "shall", "should", "can", "could", "may",
        "might", "must", "ought", "'re", "'m", "'ve", "'ll", "'d", "don",
        "doesn", "didn", "isn", "aren", "wasn", "weren", "haven", "hasn", "hadn", "couldn", "shouldn",
        "wouldn", "mustn",
    ),
    "particle": ("to", "not", "n't", "'t", "'s"),
    "conjunction": (
        "and", "or", "but", "nor", "that", "if", "because", "although", "though", "while", "whereas",
        "unless", "whether", "when", "whenever", "where", "wherever", "once", "lest",
    ),
}
# Adverbs the list knows (closed-class and frequent ones); other adverbs are "content" on the list's path.
ADVERBS = ("so", "then", "also", "however", "therefore", "thus", "hence", "yet", "very", "too", "just", "only",
           "even", "still", "already", "never", "always", "often", "ever", "here", "now", "again", "almost",
           "quite", "rather", "perhaps", "indeed", "sometimes", "soon", "later", "maybe", "instead")
FUNCTION_CLASSES = tuple(FUNCTION_WORDS)
CLASSES = FUNCTION_CLASSES + ("adverb", "content", "punctuation", "number", "other")
CLASS_GROUPS = {**{c: "function" for c in FUNCTION_CLASSES}, "adverb": "content", "content": "content",
                "punctuation": "punctuation", "number": "number", "other": "other"}

_WORD_CLASS: dict[str, str] = {w: "adverb" for w in ADVERBS}
for _cls, _words in FUNCTION_WORDS.items():
    for _w in _words:
        _WORD_CLASS.setdefault(_w, _cls)
_BEFORE_PREPOSITION = ("determiner", "pronoun", "number")  # "to" before these is a preposition
_BEFORE_CONTRACTION = ("that", "here", "where", "when", "how", "why")  # "'s" after these (and pronouns) is "is"/"has"


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "PS"


def token_class(text: str) -> str:
    """The class of one token from its text alone (rules 1–5 of the module docstring)."""
    word = text.strip().lower()
    if not word or "\ufffd" in word:
        return "other"
    if word.replace(",", "").replace(".", "").isdigit() and word[0].isdigit():
        return "number"
    if all(_is_punct(ch) for ch in word):
        return "punctuation"
    word = word.replace("\u2019", "'")
    if word in _WORD_CLASS:
        return _WORD_CLASS[word]
    if any(ch.isalpha() for ch in word):
        return "content"
    return "other"


def token_texts(lm, ids) -> list[str]:
    """The text each token of a 1-D id sequence adds in context (``"<id 5>"`` without a tokenizer).

    Token i's text is what decoding ``[ids[i-1], ids[i]]`` adds to decoding ``ids[i-1]`` alone, so a
    word-initial SentencePiece token (``"▁cat"``, which decodes alone as ``"cat"``) keeps its leading
    space and a WordPiece continuation (``"##ory"``) has none; the first token and tokens after a
    special token are decoded alone; special tokens are ``""``.
    """
    ids = [int(i) for i in ids]
    tok = lm.tokenizer
    if tok is None:
        return [f"<id {i}>" for i in ids]
    special = set(getattr(tok, "all_special_ids", []) or [])
    alone: dict[int, str] = {}
    pairs: dict[tuple[int, int], str] = {}

    def single(i: int) -> str:
        if i not in alone:
            alone[i] = "" if i in special else tok.decode([i])
        return alone[i]

    out = []
    for k, i in enumerate(ids):
        prev = ids[k - 1] if k else None
        if i in special or prev is None or prev in special:
            out.append(single(i))
            continue
        if (prev, i) not in pairs:
            head, both = single(prev), tok.decode([prev, i])
            pairs[(prev, i)] = both[len(head):] if both.startswith(head) else single(i)
        out.append(pairs[(prev, i)])
    return out


def token_classes(lm, ids, tagger="auto") -> list[str]:
    """The class of each token of a 1-D id sequence: with a spaCy English pipeline when ``tagger`` finds one
    (:func:`wnb.experiments.tagging.resolve_tagger`: ``"auto"``, ``"spacy"``, ``"list"``, a pipeline name or a
    loaded pipeline), else with the word list and its context rules (module docstring). :func:`token_tags`
    also gives the UPOS and dependency labels and says which tagger was used."""
    return token_tags(lm, ids, tagger)["token_class"].tolist()


def token_tags(lm, ids, tagger="auto") -> pd.DataFrame:
    """One row per token of a 1-D id sequence: ``token`` (:func:`token_texts`), ``token_class``, ``group``
    and, with spaCy, ``upos`` and ``dep`` (those of the word the token overlaps most). ``attrs["tagger"]``
    names the tagger (``"word list"`` or ``"spacy:<pipeline> <version>"``; a model without a tokenizer gets
    ``"none"`` and every token ``"other"``)."""
    nlp, label = resolve_tagger(tagger)
    texts = token_texts(lm, ids)
    if lm.tokenizer is None:
        nlp, label = None, "none"
    table = pd.DataFrame({"token": texts})
    if lm.tokenizer is None:
        table["token_class"] = ["other"] * len(texts)
    elif nlp is None:
        table["token_class"] = _classes_in_context(texts)
    else:
        tags = align_tags(texts, nlp("".join(texts)))
        table["token_class"] = classes_of(tags)
        table["upos"], table["dep"] = [t[0] for t in tags], [t[1] for t in tags]
    table.insert(2, "group", table["token_class"].map(CLASS_GROUPS))
    table.attrs["tagger"] = label
    return table


def _classes_in_context(texts: list[str]) -> list[str]:
    """The list's class of each token with the context rules of the module docstring."""
    alone = [token_class(t) for t in texts]
    words = [i for i, t in enumerate(texts) if t.strip()]  # tokens with text, to find a word's neighbours
    before = {j: words[k - 1] if k else None for k, j in enumerate(words)}
    after = {j: words[k + 1] if k + 1 < len(words) else None for k, j in enumerate(words)}
    classes = []
    for i, text in enumerate(texts):
        cls = alone[i]
        if cls in FUNCTION_CLASSES or cls == "adverb":
            prev = texts[i - 1] if i else ""
            nxt = texts[i + 1] if i + 1 < len(texts) else ""
            joined_left = bool(text) and text[0].isalpha() and bool(prev) and prev[-1].isalpha()
            joined_right = bool(nxt) and nxt[0].isalpha() and text[-1:].isalpha()
            if joined_left or joined_right:
                cls = "content"
            else:
                p, n = before.get(i), after.get(i)
                cls = _resolved(text.strip().lower().replace("\u2019", "'"), cls, None if p is None else alone[p],
                                "" if p is None else texts[p].strip().lower(), None if n is None else alone[n],
                                "" if n is None else texts[n].strip())
        classes.append(cls)
    return classes


def _resolved(word: str, cls: str, prev: str | None, prev_text: str, nxt: str | None, next_text: str) -> str:
    """The class of an ambiguous word (that, to, 's) from its neighbours' classes (None: no neighbour) and
    texts."""
    if word == "that":
        if nxt == "content" and prev not in ("content", "adverb"):
            return "determiner"
        if nxt in (None, "auxiliary", "punctuation", "particle"):
            return "pronoun"
        return "conjunction"
    if word == "to":
        if nxt in _BEFORE_PREPOSITION or (nxt == "content" and next_text[:1].isupper()):
            return "preposition"
        return "particle"
    if word == "'s":
        return "auxiliary" if prev == "pronoun" or prev_text in _BEFORE_CONTRACTION else "particle"
    return cls


# ---------------------------------------------------------------- dense vs ablated

def token_surprisal(lm, windows, neurons, side: str = "negative", batch_size: int = 8,
                    progress: bool = True, dense_nll: torch.Tensor | None = None,
                    ablated_nll: torch.Tensor | None = None, tagger="auto") -> pd.DataFrame:
    """Dense and sign-ablated NLL of every predicted token of ``windows``, one row per token.

    ``neurons`` and ``side`` are those of :func:`wnb.sign_ablated` (e.g. the Wasserstein neurons from
    :func:`wnb.select_wasserstein`). Columns: ``window, position`` (index of the predicted token in its
    window, from 1), ``token_id, token`` (its decoded text), ``token_class, group`` (see the module
    docstring; with a spaCy tagger also ``upos, dep``), ``dense_nll, ablated_nll, delta_nll`` (nats).
    ``tagger`` as in :func:`token_tags` (each window tagged on its own); ``attrs["tagger"]`` says which
    was used. ``dense_nll`` and ``ablated_nll`` (each ``[n_windows, seq_len − 1]`` from :func:`wnb.token_nll`)
    may be passed to skip those passes. Aggregate with :func:`surprisal_by_class` and :func:`top_surprisal_tokens`.
    """

    check_side(side)
    plan = check_neurons(lm, neurons)
    windows = check_windows(windows, lm)
    resolve_tagger(tagger)  # a bad choice fails before the passes
    shape = (windows.shape[0], windows.shape[1] - 1)
    for name, given in (("dense_nll", dense_nll), ("ablated_nll", ablated_nll)):
        if given is not None and tuple(given.shape) != shape:
            raise WnbError(f"{name} has shape {tuple(given.shape)} but the windows need {shape}")
    if dense_nll is None:
        dense_nll = token_nll(lm, windows, batch_size=batch_size, progress=progress)
    ablated = ablated_nll
    if ablated is None:
        with sign_ablated(lm, plan, side):
            ablated = token_nll(lm, windows, batch_size=batch_size, progress=progress)
    n, t = dense_nll.shape
    tags = [token_tags(lm, windows[w].tolist(), tagger).iloc[1:] for w in range(n)]
    table = pd.concat([pd.DataFrame({"window": np.repeat(np.arange(n), t), "position": np.tile(np.arange(1, t + 1), n),
                                     "token_id": windows[:, 1:].reshape(-1).numpy()}),
                       pd.concat(tags, ignore_index=True)], axis=1)
    table["dense_nll"] = dense_nll.reshape(-1).double().numpy()
    table["ablated_nll"] = ablated.reshape(-1).double().numpy()
    table["delta_nll"] = table["ablated_nll"] - table["dense_nll"]
    table.attrs["tagger"] = tags[0].attrs["tagger"]
    return table


def surprisal_by_class(table: pd.DataFrame, by: str = "token_class") -> pd.DataFrame:
    """Mean Δ NLL per token class (``by="token_class"``) or per group (``by="group"``) of a
    :func:`token_surprisal` table: ``n_tokens, token_share, dense_nll, ablated_nll, delta_nll, delta_sem``
    and ``excess_share`` — the class's part of the total Δ NLL (compare it with ``token_share``);
    ``attrs["tagger"]`` is the table's."""
    if by not in ("token_class", "group"):
        raise WnbError(f"by must be 'token_class' or 'group' (got {by!r})")
    if table.empty:
        raise WnbError("the surprisal table is empty")
    total = table["delta_nll"].sum()
    grouped = table.groupby(by, sort=False)
    out = pd.DataFrame({
        "n_tokens": grouped.size(),
        "dense_nll": grouped["dense_nll"].mean(), "ablated_nll": grouped["ablated_nll"].mean(),
        "delta_nll": grouped["delta_nll"].mean(),
        "delta_sem": grouped["delta_nll"].std(ddof=1) / np.sqrt(grouped.size()),
        "excess_share": grouped["delta_nll"].sum() / total if total != 0 else np.nan,
    })
    out.insert(1, "token_share", out["n_tokens"] / len(table))
    order = [c for c in (CLASSES if by == "token_class" else dict.fromkeys(CLASS_GROUPS.values())) if c in out.index]
    out = out.loc[order].reset_index()
    if by == "token_class":
        out.insert(1, "group", out["token_class"].map(CLASS_GROUPS))
    out.attrs["tagger"] = table.attrs.get("tagger", "unknown")
    return out


def top_surprisal_tokens(table: pd.DataFrame, n: int = 20, min_count: int = 5) -> pd.DataFrame:
    """The ``n`` token ids with the largest mean Δ NLL among those predicted at least ``min_count``
    times: ``token_id, token, token_class, count, dense_nll, ablated_nll, delta_nll``."""
    if n < 1 or min_count < 1:
        raise WnbError(f"n and min_count must be at least 1 (got {n}, {min_count})")
    grouped = table.groupby("token_id", sort=False)
    out = pd.DataFrame({
        "token": grouped["token"].first(), "token_class": grouped["token_class"].agg(lambda c: c.mode().iat[0]),
        "count": grouped.size(), "dense_nll": grouped["dense_nll"].mean(),
        "ablated_nll": grouped["ablated_nll"].mean(), "delta_nll": grouped["delta_nll"].mean(),
    })
    out = out[out["count"] >= min_count].sort_values("delta_nll", ascending=False, kind="stable")
    return out.head(n).reset_index()
