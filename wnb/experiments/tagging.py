"""Part-of-speech tags for model tokens from a spaCy English pipeline, as the follow-up tags them (Kong et
al., ICLR 2026: spaCy UPOS and dependency of the word each token overlaps most, by character offsets).

spaCy and its English pipelines are optional (``pip install 'wnb[tagging]'`` and ``python -m spacy download
en_core_web_sm``); :mod:`wnb.experiments.surprisal` uses them when one is installed and its closed word list
otherwise, and says which.

- :func:`token_spans`: the character span of each token in the text the tokens decode to (a token's
  surrounding whitespace left out), from the texts :func:`wnb.experiments.surprisal.token_texts` gives.
- :func:`align_tags`: for each token, the UPOS and dependency label of the spaCy word its span overlaps
  most (the first such word on a tie); a token that overlaps none (an empty or special token) gets
  ``("", "")``.
- :data:`UPOS_CLASSES`: the universal POS tags mapped onto wnb's token classes.
- :func:`english_pipeline`: an installed spaCy English pipeline (loaded once), or None.
"""
from __future__ import annotations

from wnb.errors import WnbError

# Universal POS (UD v2) onto wnb's classes: the closed classes one to one (CCONJ and SCONJ are both
# "conjunction"), the open classes NOUN, PROPN, VERB, ADJ, INTJ "content" and ADV "adverb".
UPOS_CLASSES = {
    "DET": "determiner", "ADP": "preposition", "PRON": "pronoun", "AUX": "auxiliary", "PART": "particle",
    "CCONJ": "conjunction", "SCONJ": "conjunction", "ADV": "adverb", "NOUN": "content", "PROPN": "content",
    "VERB": "content", "ADJ": "content", "INTJ": "content", "NUM": "number", "PUNCT": "punctuation",
    "SYM": "punctuation", "X": "other", "SPACE": "other", "": "other",
}
# The English pipelines spaCy publishes, preferred in this order when several are installed.
PIPELINES = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf")
INSTALL_TAGGING = "pip install 'wnb[tagging]' && python -m spacy download en_core_web_sm"
_loaded: dict[str, object] = {}


def token_spans(texts) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of each token in ``"".join(texts)``, its leading and trailing
    whitespace left out (``" cat"`` at offset 3 is ``(4, 7)``); a token of whitespace only (or empty) gets
    the empty span ``(end, end)`` at its end."""
    spans, at = [], 0
    for text in texts:
        stripped = text.strip()
        start = at + (len(text) - len(text.lstrip())) if stripped else at + len(text)
        spans.append((start, start + len(stripped)))
        at += len(text)
    return spans


def align_tags(texts, doc) -> list[tuple[str, str]]:
    """``(upos, dep)`` of each token of ``texts`` from a spaCy ``Doc`` of ``"".join(texts)`` (any sequence of
    objects with ``idx``, ``text``, ``pos_`` and ``dep_`` will do): the word whose characters overlap the
    token's span (:func:`token_spans`) most, the first one on a tie; ``("", "")`` when none overlaps it (an
    empty, whitespace or special token)."""
    words = [(int(w.idx), int(w.idx) + len(w.text), str(w.pos_), str(w.dep_)) for w in doc]
    out, first = [], 0
    for start, end in token_spans(texts):
        while first < len(words) and words[first][1] <= start:  # words wholly before this token
            first += 1
        best, overlap = ("", ""), 0
        for w_start, w_end, pos, dep in words[first:]:
            if w_start >= end:
                break
            shared = min(end, w_end) - max(start, w_start)
            if shared > overlap:
                best, overlap = (pos, dep), shared
        out.append(best)
    return out


def classes_of(tags) -> list[str]:
    """wnb's token class of each ``(upos, dep)`` (:data:`UPOS_CLASSES`; an unknown tag is ``"other"``)."""
    return [UPOS_CLASSES.get(pos, "other") for pos, _ in tags]


def english_pipeline(name: str | None = None):
    """A loaded spaCy English pipeline: ``name``, or the first installed of :data:`PIPELINES` (then any
    other installed pipeline whose name starts with ``en_``); None when spaCy or every English pipeline
    is missing (and ``name`` is None). Loaded once per process."""
    try:
        import spacy
    except ImportError:
        if name is None:
            return None
        raise WnbError(f"tagging with spaCy needs the spacy package, which is not installed ({INSTALL_TAGGING})") \
            from None
    if name is None:
        installed = list(spacy.util.get_installed_models())
        english = [p for p in PIPELINES if p in installed] + sorted(p for p in installed
                                                                    if p.startswith("en_") and p not in PIPELINES)
        if not english:
            return None
        name = english[0]
    if name not in _loaded:
        try:
            _loaded[name] = spacy.load(name)
        except OSError as exc:
            raise WnbError(f"the spaCy pipeline {name!r} is not installed ({str(exc).splitlines()[0]}); "
                           f"python -m spacy download {name}") from None
    return _loaded[name]


def pipeline_label(nlp) -> str:
    """``"spacy:<pipeline name> <version>"`` (or ``"spacy:<type>"`` for another callable tagger)."""
    meta = getattr(nlp, "meta", None) or {}
    if meta.get("name"):
        return f"spacy:{meta.get('lang', 'en')}_{meta['name']} {meta.get('version', '')}".strip()
    return f"spacy:{type(nlp).__name__}"


TAGGERS = ("auto", "spacy", "list")
LIST_LABEL = "word list"


def resolve_tagger(tagger="auto"):
    """``(nlp, label)`` for a tagger choice: ``"auto"`` an installed English pipeline
    (:func:`english_pipeline`) or, without one, the word list (``nlp`` None); ``"spacy"`` that pipeline
    or a WnbError saying how to install one; ``"list"`` the word list; a pipeline name (``"en_core_web_md"``);
    or a loaded pipeline, or any callable from a text to a ``Doc``. ``label`` says which
    (:func:`pipeline_label`, or :data:`LIST_LABEL`)."""
    if callable(tagger):
        return tagger, pipeline_label(tagger)
    if not isinstance(tagger, str) or not tagger:
        raise WnbError(f"tagger must be one of {', '.join(TAGGERS)}, a spaCy pipeline name or a loaded pipeline "
                       f"(got {tagger!r})")
    if tagger == "list":
        return None, LIST_LABEL
    nlp = english_pipeline(None if tagger in ("auto", "spacy") else tagger)
    if nlp is None:
        if tagger == "spacy":
            raise WnbError(f"no spaCy English pipeline is installed ({INSTALL_TAGGING}); tagger='list' uses wnb's "
                           "closed word list")
        return None, LIST_LABEL
    return nlp, pipeline_label(nlp)
