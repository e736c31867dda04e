"""Corpora as text: the bundled one is the standard library's ``pydoc_data.topics`` (English prose about
Python, on every Python install); ``"wikitext2"`` is the paper's corpus (needs ``datasets`` and a
network); any other string is read as the path of a UTF-8 text file."""
from __future__ import annotations

from pathlib import Path

from wnb.errors import WnbError

CORPORA = ("bundled", "wikitext2")


def load_corpus(name: str = "bundled", split: str = "train") -> str:
    """Return a corpus as one string. ``split`` applies to WikiText-2 (``train``/``validation``/``test``)."""
    if name in (None, "bundled", "pydoc"):
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k].strip() for k in sorted(topics))
    if name in ("wikitext2", "wikitext-2"):
        try:
            from datasets import load_dataset
        except ImportError as exc:
            raise WnbError("the WikiText-2 corpus needs the `datasets` package: pip install datasets") from exc
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
