"""Held-out next-token NLL: per token, per window, the perplexity ``exp(mean NLL)`` and its percentile
bootstrap interval over windows."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wnb.core.checks import check_int
from wnb.data.windows import check_windows
from wnb.errors import WnbError
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


def bootstrap_interval(nll, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the perplexity from per-window NLLs (:func:`window_nll`): the
    windows are resampled with replacement ``n_boot`` times (seeded). With one window it is a point."""

    nll = torch.as_tensor(nll, dtype=torch.float64).flatten()
    if nll.numel() == 0:
        raise WnbError("no windows to bootstrap")
    gen = torch.Generator().manual_seed(int(seed))
    picks = torch.randint(nll.numel(), (n_boot, nll.numel()), generator=gen)
    ppl = nll[picks].mean(1).exp()
    tail = (1 - level) / 2
    low, high = torch.quantile(ppl, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high


def interval_of(nll, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """``{"perplexity", "ppl_low", "ppl_high"}`` from NLLs per window ``[n_windows]`` or per token
    ``[n_windows, tokens]`` (:func:`token_nll`; averaged per window first): :func:`bootstrap_interval`."""

    nll = torch.as_tensor(nll, dtype=torch.float64)
    if nll.numel() == 0 or nll.dim() not in (1, 2):
        raise WnbError(f"nll must be non-empty, [n_windows] or [n_windows, tokens] (got shape {tuple(nll.shape)})")
    per_window = nll.mean(1) if nll.dim() == 2 else nll
    low, high = bootstrap_interval(per_window, n_boot, level, seed)
    return {"perplexity": math.exp(float(per_window.mean())), "ppl_low": low, "ppl_high": high}


def perplexity_interval(lm, windows, batch_size: int = 8, progress: bool = True, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict:
    """``{"perplexity", "ppl_low", "ppl_high"}``: the perplexity and its 95% bootstrap interval over windows."""
    return interval_of(window_nll(lm, windows, batch_size, progress), n_boot, level, seed)


# ---------------------------------------------------------------- per-neuron comparison



# ---------------------------------------------------------------- sweeps


