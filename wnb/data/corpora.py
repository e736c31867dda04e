"""Corpora as text: the bundled one is the standard library's ``pydoc_data.topics`` (English prose about
Python, on every Python install); ``"wikitext2"`` is the paper's corpus (needs ``datasets`` and a
network the first time; its ``train``, ``validation`` and ``test`` splits); any other string is read as
the path of a UTF-8 text file. :func:`network_available` tells, in seconds rather than after ``datasets``'
retries, whether the Hugging Face hub can be reached."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from wnb.errors import WnbError

CORPORA = ("bundled", "wikitext2")
SPLITS = ("train", "validation", "test")  # WikiText-2's; the other corpora have one text


def network_available(url: str | None = None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub (``$HF_ENDPOINT`` or huggingface.co) opens."""
    parsed = urlparse(url or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_mode() -> bool:
    """Whether ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` ask for cached copies only."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def is_wikitext(name) -> bool:
    return name in ("wikitext2", "wikitext-2")


def check_split(name, split: str = "train") -> str:
    """``split`` if ``name`` has it: WikiText-2 has :data:`SPLITS`, every other corpus only its one text
    (``"train"``)."""
    if split not in SPLITS:
        raise WnbError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if split != "train" and not is_wikitext(name):
        raise WnbError(f"the {split} split exists for wikitext2 only; the corpus {name!r} is one text "
                       "(give another corpus or file for the held-out text instead)")
    return split


def held_out_source(corpus: str, eval_corpus: str | None = None, eval_split: str | None = None) -> tuple[str, str] | None:
    """``(corpus, split)`` of a held-out text of its own beside the calibration ``corpus``: ``eval_corpus``
    (default: ``corpus``) in ``eval_split`` (default: WikiText-2's validation split, the follow-up's; the one
    text of any other corpus); None when neither is given (held-out windows are then drawn from ``corpus``,
    disjoint from the calibration ones). Refuses a split the corpus lacks and the calibration text itself."""
    if eval_corpus is None and eval_split is None:
        return None
    eval_corpus = eval_corpus or corpus
    split = eval_split or ("validation" if is_wikitext(eval_corpus) else "train")
    check_split(eval_corpus, split)
    same = eval_corpus == corpus or (is_wikitext(eval_corpus) and is_wikitext(corpus))
    if same and split == "train":
        raise WnbError(f"the held-out text would be the calibration text ({eval_corpus}, {split}); choose another "
                       "corpus or split, or none to draw held-out windows from it disjoint from the calibration ones")
    return eval_corpus, split


def load_corpus(name: str = "bundled", split: str = "train") -> str:
    """Return a corpus as one string. ``split`` applies to WikiText-2 (``train``/``validation``/``test``);
    without a network (and no ``HF_HUB_OFFLINE=1`` for a cached copy) WikiText-2 is refused at once."""
    check_split(name, split)
    if name in (None, "bundled", "pydoc"):
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k].strip() for k in sorted(topics))
    if is_wikitext(name):
        try:
            from datasets import load_dataset
        except ImportError as exc:
            raise WnbError("the WikiText-2 corpus needs the `datasets` package: pip install datasets") from exc
        if not offline_mode() and not network_available():
            raise WnbError(f"WikiText-2 ({split}) is downloaded through `datasets` and needs a network connection the "
                           "first time, but the Hugging Face hub cannot be reached from here; the bundled corpus works "
                           "offline (--corpus bundled, load_corpus()); with a cached copy, set HF_HUB_OFFLINE=1")
        try:
            rows = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
        except Exception as exc:
            raise WnbError(f"could not load WikiText-2 ({split}) through `datasets`: {exc}; it needs a network "
                           "connection the first time. The bundled corpus works offline: load_corpus()") from exc
        return "\n\n".join(rows["text"])

    path = Path(name).expanduser()
    if not path.is_file():
        raise WnbError(f"unknown corpus {name!r}: use 'bundled', 'wikitext2' or the path of a text file")
    return decode_text(path.read_bytes(), f"the corpus file {path}")


def decode_text(raw: bytes, what: str, max_bytes: int | None = None) -> str:
    """``raw`` as UTF-8 text; refuse binary data (NUL bytes or many undecodable bytes) and, given
    ``max_bytes``, more than that."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise WnbError(f"{what} has {len(raw) / 2**20:.1f} MiB; at most {max_bytes / 2**20:.0f} MiB of text is accepted")
    if b"\x00" in raw[: 1 << 20]:
        raise WnbError(f"{what} is not text (it holds NUL bytes); give a UTF-8 text file")
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if bad > max(10, len(text) // 1000):
        raise WnbError(f"{what} is not UTF-8 text ({bad:,} undecodable bytes); give a UTF-8 text file")
    if not text.strip():
        raise WnbError(f"{what} is empty")
    return text
