"""Token windows: a text tokenized (in pieces when it is long) and cut into non-overlapping windows, with
disjoint calibration and held-out sets drawn by seed; and the one check of windows wherever they enter
(integer ids inside the vocabulary, no longer than the model's context)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from wnb.core.checks import check_int
from wnb.errors import WnbError
from wnb.model.lm import LM


def tokenize(lm, text: str, progress: bool = True) -> torch.Tensor:
    """The whole text as one 1-D LongTensor of token ids.

    A text longer than ``CHUNK_CHARS`` is tokenized in pieces cut at line breaks (or, inside a very long
    line, at spaces), with a progress bar: one huge line would otherwise take minutes with no sign of
    life. Shorter texts (the bundled corpus) are tokenized whole, as before.
    """
    if lm.tokenizer is None:
        raise WnbError(f"{lm.name} has no tokenizer; pass token windows directly")
    pieces = [text] if len(text) <= CHUNK_CHARS else _pieces(text, CHUNK_CHARS)

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


def held_out_windows(lm, text: str, seq_len: int = 256, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """Held-out windows from a text of their own (e.g. WikiText-2 validation): every non-overlapping
    ``seq_len`` window of it in order (``n=None``, as the follow-up measures perplexity), or ``n`` of them
    drawn with ``seed`` (kept in text order). ``[n, seq_len]`` LongTensor."""
    seq_len = check_int(seq_len, "seq_len", minimum=2)
    context = context_length(lm)
    if context is not None and seq_len > context:
        raise WnbError(f"seq_len {seq_len} is longer than {lm.name}'s context of {context} tokens; "
                       f"use at most {context}")
    ids = tokenize(lm, text)
    available = ids.numel() // seq_len
    if available == 0 or (n is not None and check_int(n, "n") > available):
        raise WnbError(f"the held-out text has {ids.numel():,} tokens = {available} windows of {seq_len}, but "
                       f"{n if n is not None else 'at least one'} were asked for")
    windows = ids[: available * seq_len].view(available, seq_len)
    if n is None:
        return windows.clone()
    order = torch.randperm(available, generator=torch.Generator().manual_seed(check_int(seed, "seed", 0)))
    return windows[order[:n].sort().values].clone()


def calibration_and_held_out(lm, text: str, seq_len: int, n_calib: int, n_eval: int | None, seed: int = 0,
                             eval_text: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration and held-out windows: disjoint seeded draws from ``text`` (:func:`token_windows`), or, with a
    held-out text of its own (``eval_text``, e.g. WikiText-2 validation), the held-out ones from it
    (:func:`held_out_windows`: every window when ``n_eval`` is None, else ``n_eval`` drawn with ``seed``). The
    calibration windows are the same either way."""
    if eval_text is None:
        if n_eval is None:
            raise WnbError("n_eval=None (every window) needs a held-out text of its own (eval_text=)")
        return token_windows(lm, text, seq_len, n_calib, n_eval, seed)
    return (token_windows(lm, text, seq_len, n_calib, 0, seed)[0],
            held_out_windows(lm, eval_text, seq_len, n_eval, seed))


def check_windows(windows, lm: LM | None = None, min_len: int = 1) -> torch.Tensor:
    """Accept ``[n, seq_len]`` (or one ``[seq_len]``) integer token ids; refuse empty input, windows shorter
    than ``min_len`` and, given the model, windows longer than its context (:func:`wnb.data.windows.context_length`)
    and ids outside its vocabulary."""
    if windows is None:
        raise WnbError("token windows are missing: pass [n_windows, seq_len] token ids (see wnb.token_windows)")
    if not isinstance(windows, torch.Tensor):
        try:
            windows = torch.as_tensor(windows)
        except (TypeError, ValueError, RuntimeError):
            raise WnbError("token windows must be a [n_windows, seq_len] tensor of integer token ids") from None
    if windows.dim() == 1:
        windows = windows[None]
    if windows.dim() != 2 or windows.numel() == 0:
        raise WnbError(f"token windows must be a non-empty [n_windows, seq_len] tensor (got shape {tuple(windows.shape)})")
    if windows.dtype.is_floating_point or windows.dtype.is_complex or windows.dtype == torch.bool:
        raise WnbError(f"token windows must hold integer token ids, not {windows.dtype}")
    if windows.shape[1] < min_len:
        raise WnbError(f"token windows must have at least {min_len} tokens each (got {windows.shape[1]})")
    if lm is not None:
        context = context_length(lm)
        if context is not None and windows.shape[1] > context:
            raise WnbError(f"token windows of {windows.shape[1]:,} tokens are longer than {lm.name}'s context of "
                           f"{context:,} tokens; use windows of at most {context:,} (wnb.token_windows(seq_len=...))")
    windows = windows.long()
    vocab = vocab_size(lm) if lm is not None else None
    if vocab is not None:
        low, high = int(windows.min()), int(windows.max())
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise WnbError(f"token id {bad} is outside the vocabulary of {lm.name} (ids 0 to {vocab - 1})")
    return windows


def vocab_size(lm: LM) -> int | None:
    """Rows of the input embedding (the ids the model accepts), None where it has none."""
    embedding = lm.model.get_input_embeddings() if hasattr(lm.model, "get_input_embeddings") else None
    return getattr(embedding, "num_embeddings", None)
