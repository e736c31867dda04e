"""Held-out next-token NLL: per token, per window, the perplexity ``exp(mean NLL)`` and its percentile
bootstrap interval over windows."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wnb.core.checks import check_int
from wnb.core.inference import perplexity_of
from wnb.data.windows import check_windows
from wnb.model.lm import require_local
from wnb.model.state import holding


def perplexity(lm, windows, batch_size: int = 8, progress: bool = True) -> float:
    """``exp(mean next-token NLL)`` over non-overlapping windows (every window predicts seq_len − 1 tokens)."""
    return math.exp(float(window_nll(lm, windows, batch_size, progress).mean()))


@torch.no_grad()
def token_nll(lm, windows, batch_size: int = 8, progress: bool = True, desc: str = "token NLL") -> torch.Tensor:
    """Next-token NLL of every token of every window: ``[n_windows, seq_len − 1]`` float32 on the CPU.

    Entry ``[w, t]`` is ``−log p(windows[w, t + 1] | windows[w, :t + 1])``; ``exp(mean)`` is
    :func:`wnb.perplexity` of the same windows (up to float summation order).
    """

    require_local(lm, "perplexity")
    windows = check_windows(windows, lm, min_len=2)  # every window predicts its tokens after the first
    batch_size = check_int(batch_size, "batch_size")
    out = torch.empty(windows.shape[0], windows.shape[1] - 1, dtype=torch.float32)
    for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        ids = windows[start:start + batch_size].to(lm.device)
        with holding(lm, "a perplexity pass"):
            logits = lm.model(ids).logits
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
        out[start:start + ids.shape[0]] = nll.cpu()
    return out


def window_nll(lm, windows, batch_size: int = 8, progress: bool = True) -> torch.Tensor:
    """Mean next-token NLL of each window, ``[n_windows]`` float64 (all windows have the same length, so
    their mean is the mean over every predicted token)."""
    return token_nll(lm, windows, batch_size, progress, desc="perplexity").double().mean(1)


def perplexity_interval(lm, windows, batch_size: int = 8, progress: bool = True, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict:
    """``{"perplexity", "ppl_low", "ppl_high"}``: the perplexity and its 95% bootstrap interval over windows
    (:func:`wnb.core.inference.perplexity_of`)."""
    return perplexity_of(window_nll(lm, windows, batch_size, progress), n_boot, level, seed)
