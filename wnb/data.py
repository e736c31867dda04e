"""Corpora and token windows.

The bundled corpus is the standard library's ``pydoc_data.topics`` (English prose about Python, on
every Python install); ``"wikitext2"`` is the paper's corpus (needs ``datasets`` and a network); any
other string is read as the path of a text file.
"""
from __future__ import annotations

from pathlib import Path

import torch

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
    from wnb.sources import decode_text

    path = Path(name).expanduser()
    if not path.is_file():
        raise WnbError(f"unknown corpus {name!r}: use 'bundled', 'wikitext2' or the path of a text file")
    return decode_text(path.read_bytes(), f"the corpus file {path}")


def tokenize(lm, text: str, progress: bool = True) -> torch.Tensor:
    """The whole text as one 1-D LongTensor of token ids.

    A text longer than ``CHUNK_CHARS`` is tokenized in pieces cut at line breaks (or, inside a very long
    line, at spaces), with a progress bar: one huge line would otherwise take minutes with no sign of
    life. Shorter texts (the bundled corpus) are tokenized whole, as before.
    """
    if lm.tokenizer is None:
        raise WnbError(f"{lm.name} has no tokenizer; pass token windows directly")
    pieces = [text] if len(text) <= CHUNK_CHARS else _pieces(text, CHUNK_CHARS)
    from tqdm.auto import tqdm

    ids = [lm.tokenizer(piece, return_tensors="pt", add_special_tokens=False, verbose=False).input_ids[0]
           for piece in tqdm(pieces, desc=f"tokenizing {len(text) / 1e6:.1f}M characters", leave=False,
                             disable=not progress or len(pieces) == 1)]
    return torch.cat(ids).long()


CHUNK_CHARS = 1 << 20


def _pieces(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters, each ending at a line break or a space when
    one is near (the separator stays with the piece before it)."""
    pieces, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n", start + size // 2, end)
            cut = cut if cut >= 0 else text.rfind(" ", start + size // 2, end)
            end = cut + 1 if cut >= 0 else end
        pieces.append(text[start:end])
        start = end
    return pieces


def context_length(lm) -> int | None:
    """The longest input the model was built for (its config's position limit), None if it names none."""
    config = getattr(lm.model, "config", None)
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def token_windows(lm, text: str, seq_len: int = 256, n_calib: int = 32, n_eval: int = 32, seed: int = 0):
    """Cut the tokenized text into non-overlapping windows and draw disjoint calibration and held-out sets.

    Returns ``(calib [n_calib, seq_len], held_out [n_eval, seq_len])`` LongTensors, seeded.
    """
    from wnb.core.checks import check_int

    seq_len = check_int(seq_len, "seq_len", minimum=2)
    n_calib, n_eval, seed = check_int(n_calib, "n_calib", 0), check_int(n_eval, "n_eval", 0), check_int(seed, "seed", 0)
    context = context_length(lm)
    if context is not None and seq_len > context:
        raise WnbError(f"seq_len {seq_len} is longer than {lm.name}'s context of {context} tokens; "
                       f"use at most {context}")
    if n_calib + n_eval == 0:
        raise WnbError(f"n_calib and n_eval must be non-negative and not both zero (got {n_calib}, {n_eval})")
    ids = tokenize(lm, text)
    available = ids.numel() // seq_len
    if n_calib + n_eval > available:
        raise WnbError(f"the corpus has {ids.numel():,} tokens = {available} windows of {seq_len}, but "
                       f"{n_calib} calibration + {n_eval} held-out = {n_calib + n_eval} were asked for")
    windows = ids[: available * seq_len].view(available, seq_len)
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    return windows[order[:n_calib]].clone(), windows[order[n_calib:n_calib + n_eval]].clone()
