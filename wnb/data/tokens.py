"""Token ids as text: decoding one token or a window of context around flat token indices (window-major:
``window · seq_len + position``) for the tables people read."""
from __future__ import annotations

import pandas as pd
import torch

from wnb.core.checks import check_int


def tokenizer_of(tokenizer):
    return getattr(tokenizer, "tokenizer", tokenizer) if not hasattr(tokenizer, "decode") else tokenizer


def decode(tokenizer, ids) -> str:
    """Text of token ids: ``tokenizer.decode`` (no clean-up of spaces), or ``[id]`` per token without one."""
    ids = [int(i) for i in ids]
    tokenizer = tokenizer_of(tokenizer)
    if tokenizer is None:
        return "".join(f"[{i}]" for i in ids)
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False) if ids else ""


def decode_contexts(tokenizer, windows: torch.Tensor, flat, width: int = 8) -> pd.DataFrame:
    """``window, position, token_id, token, left, right`` for flat token indices of ``windows [n, seq_len]``:
    ``token`` is the decoded token, ``left`` / ``right`` the decoded ``width`` tokens before / after it in its
    window (fewer at the window's edges)."""
    width = check_int(width, "width", minimum=0)
    seq_len = windows.shape[1]
    flat = torch.as_tensor(flat).long().flatten().tolist()
    rows = []
    for f in flat:
        w, p = divmod(f, seq_len)
        ids = windows[w].tolist()
        rows.append({"window": w, "position": p, "token_id": ids[p], "token": decode(tokenizer, ids[p:p + 1]),
                     "left": decode(tokenizer, ids[max(0, p - width):p]),
                     "right": decode(tokenizer, ids[p + 1:p + 1 + width])})
    return pd.DataFrame(rows, columns=["window", "position", "token_id", "token", "left", "right"])
