"""Evaluation: perplexity on held-out windows, per-neuron errors of pruned layers, sweeps over methods
and sparsities, and the neuron-subset ablation (paper Fig. 3)."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wnb.data.windows import check_windows
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
    from wnb.core.checks import check_int
    from wnb.model.lm import require_local

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
    from wnb.errors import WnbError

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
    from wnb.errors import WnbError

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

def _check_pair(dense: torch.Tensor, approx: torch.Tensor, same_tokens: bool = True) -> None:
    from wnb.errors import WnbError

    if dense.dim() != 2 or approx.dim() != 2 or dense.shape[1] != approx.shape[1] or \
            (same_tokens and dense.shape[0] != approx.shape[0]):
        need = "the same shape [tokens, n_neurons]" if same_tokens else "[tokens, n_neurons] with the same n_neurons"
        raise WnbError(f"dense and approximate outputs must have {need}; got {tuple(dense.shape)} and "
                       f"{tuple(approx.shape)}")
    if dense.shape[0] == 0 or approx.shape[0] == 0:
        raise WnbError("no tokens to compare")


def layer_outputs(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``inputs @ weight.T + bias`` in float32 on the inputs' device (weight ``[out, in]``)."""
    y = inputs.float() @ weight.to(inputs.device, torch.float32).T
    if bias is not None:
        y += bias.detach().to(inputs.device, torch.float32)
    return y


def output_rmse(dense: torch.Tensor, approx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron RMSE of ``approx`` against ``dense`` outputs on the same tokens, and RMSE / std(dense).

    Both ``[n_neurons]`` float64; the relative error is NaN for constant dense neurons.
    """
    _check_pair(dense, approx)
    d = dense.double()
    rmse = (approx.double() - d).square().mean(0).sqrt()
    std = d.std(0, correction=0)
    rel = torch.where(std > 0, rmse / std, torch.full_like(rmse, float("nan")))
    return rmse.cpu(), rel.cpu()


def output_shift(dense: torch.Tensor, approx: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Per-neuron Wasserstein-1 distance between the dense and the approximate output distributions.

    ``∫ |F_dense − F_approx|`` of the raw (unstandardized) outputs; the two may have different token
    counts. Returns ``[n_neurons]`` float64.
    """
    _check_pair(dense, approx, same_tokens=False)
    n_a, n_b = dense.shape[0], approx.shape[0]
    result = torch.empty(dense.shape[1], dtype=torch.float64)
    for start in range(0, dense.shape[1], chunk):
        a = torch.sort(dense[:, start:start + chunk].double().T.contiguous(), dim=1).values
        b = torch.sort(approx[:, start:start + chunk].double().T.contiguous(), dim=1).values
        both = torch.sort(torch.cat([a, b], dim=1), dim=1).values
        at = both[:, :-1].contiguous()
        cdf_a = torch.searchsorted(a, at, right=True).double() / n_a
        cdf_b = torch.searchsorted(b, at, right=True).double() / n_b
        result[start:start + chunk] = ((cdf_a - cdf_b).abs() * both.diff(dim=1)).sum(1).cpu()
    return result


def neuron_errors(dense: torch.Tensor, approx: torch.Tensor):
    """One row per neuron: ``rmse``, ``rel_rmse`` (RMSE / dense std) and ``shift`` (W1 between the dense
    and approximate output distributions), for outputs ``[tokens, n_neurons]`` on the same held-out tokens."""
    import numpy as np
    import pandas as pd

    rmse, rel = output_rmse(dense, approx)
    return pd.DataFrame({"neuron": np.arange(dense.shape[1]), "rmse": rmse.numpy(), "rel_rmse": rel.numpy(),
                         "shift": output_shift(dense, approx).numpy()})


# ---------------------------------------------------------------- sweeps

def sweep(lm, calib, held_out, methods=("magnitude", "wanda", "sparsegpt"), sparsities=(0.5, 0.7, "2:4"),
          layers=None, dense: bool = True, batch_size: int = 8, progress: bool = True, on_run=None, **prune_kw):
    """Perplexity on ``held_out`` after whole-model pruning with every method at every sparsity.

    Returns a tidy DataFrame: ``method, sparsity, perplexity, ppl_low, ppl_high, prune_seconds,
    eval_seconds`` (plus a ``dense`` row first unless ``dense=False``). The model is dense again
    afterwards. ``on_run(index, total, label)`` is called before each run (e.g. :meth:`wnb.core.jobs.Job.begin`).
    Other keywords go to :func:`wnb.pruned`; with ``bits=`` (joint quantization) the pruned rows get a
    ``bits`` column (and ``group_size`` with groups).
    """
    import pandas as pd

    from wnb.prune import check_method, sparsity_label
    from wnb.quantize import check_quant, key_parts

    for method in methods:
        check_method(method)
    quant = key_parts(*check_quant(prune_kw.get("bits"), prune_kw.get("group_size")))
    labels = [sparsity_label(s) for s in sparsities]
    held_out = check_windows(held_out, lm, min_len=2)
    rows = []
    report = _runs(on_run, int(dense) + len(methods) * len(labels))
    if dense:
        report("dense")
        start = time.perf_counter()
        ppl = perplexity_interval(lm, held_out, batch_size=batch_size, progress=progress)
        rows.append({"method": "dense", "sparsity": "0%", **ppl, "prune_seconds": 0.0,
                     "eval_seconds": time.perf_counter() - start})
    for method in methods:
        for sparsity, label in zip(sparsities, labels):
            report(f"{method} {label}")
            rows.append(_pruned_perplexity(lm, calib, held_out, batch_size, progress,
                                           {"method": method, "sparsity": label, **quant},
                                           method=method, sparsity=sparsity, layers=layers, **prune_kw))
    return pd.DataFrame(rows)


def ablation(lm, calib, held_out, criteria=("wd", "random", "mean", "variance", "weight_norm"),
             fraction: float = 0.03, sparsity=0.9, method: str = "sparsegpt", layers=None, seed: int = 0,
             dense: bool = True, batch_size: int = 8, progress: bool = True, on_run=None, **prune_kw):
    """The paper's Fig. 3: prune ``fraction`` of the neurons of every FFN layer (or ``layers``) at
    ``sparsity``, choosing them by each criterion, and measure perplexity on ``held_out``.

    Returns a DataFrame ``criterion, fraction, sparsity, perplexity, prune_seconds, eval_seconds``.
    """
    import pandas as pd

    from wnb.errors import WnbError
    from wnb.prune import CRITERIA, sparsity_label

    for criterion in criteria:
        if criterion not in CRITERIA:
            raise WnbError(f"unknown neuron selection {criterion!r}; choose from {', '.join(CRITERIA)}")
    label = sparsity_label(sparsity)
    held_out = check_windows(held_out, lm, min_len=2)
    rows = []
    report = _runs(on_run, int(dense) + len(criteria))
    if dense:
        report("dense")
        start = time.perf_counter()
        ppl = perplexity_interval(lm, held_out, batch_size=batch_size, progress=progress)
        rows.append({"criterion": "dense", "fraction": 0.0, "sparsity": "0%", **ppl,
                     "prune_seconds": 0.0, "eval_seconds": time.perf_counter() - start})
    for criterion in criteria:
        report(f"{fraction:.0%} of the neurons by {criterion}, {label}")
        rows.append(_pruned_perplexity(lm, calib, held_out, batch_size, progress,
                                       {"criterion": criterion, "fraction": fraction, "sparsity": label},
                                       method=method, sparsity=sparsity, layers=layers, neurons=criterion,
                                       fraction=fraction, seed=seed, **prune_kw))
    return pd.DataFrame(rows)


def _runs(on_run, total: int):
    """A function ``report(label)`` that calls ``on_run(index, total, label)`` with the next index."""
    count = iter(range(total))
    return (lambda label: on_run(next(count), total, label)) if on_run is not None else (lambda label: None)


def _pruned_perplexity(lm, calib, held_out, batch_size, progress, row: dict, **prune_kw) -> dict:
    from wnb.prune import pruned

    start = time.perf_counter()
    with pruned(lm, calib=calib, batch_size=batch_size, progress=progress, **prune_kw):
        middle = time.perf_counter()
        ppl = perplexity_interval(lm, held_out, batch_size=batch_size, progress=progress)
    return {**row, **ppl, "prune_seconds": middle - start, "eval_seconds": time.perf_counter() - middle}
