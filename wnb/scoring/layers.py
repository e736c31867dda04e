"""The one many-layer scorer: per neuron of many layers, the fields asked for (WD, mean, variance, the
share of its tails at the first position), exact from captured outputs (layers captured in as many
passes as the memory budget needs, each stopping after its deepest layer) or streaming (one pass, memory
per neuron, WD within 1e-3), with the first positions of every window left out on request. The command's
``score``, the app's overview and the sign study's ranking all read it."""
from __future__ import annotations

import pandas as pd
import torch

from wnb.core.memory import available_memory
from wnb.data.positions import check_skip, drop_positions, position_tail_share
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, ffn_layers, layer_weight
from wnb.scoring.streaming import stream_scores
from wnb.scoring.tables import output_moments, overview_table
from wnb.scoring.wasserstein import wasserstein_to_gaussian
from wnb.tracing.capture import capture, estimate_bytes, split_by_memory

FIELDS = ("wd", "mean", "variance", "pos0_tail_share")
WD_METHODS = ("auto", "exact", "streaming")
STREAMING_FIELDS = ("wd", "mean", "variance")


def default_budget() -> int:
    """Bytes of outputs one capture pass may hold: 30% of the memory available now."""
    return int(0.3 * available_memory())


def exact_bytes(lm, layers, n_tokens: int) -> int:
    """What exact scoring of the widest of ``layers`` holds at once: its outputs, a sorted copy and float64
    pieces."""
    widest = max(layers, key=lambda n: layer_weight(lm, n).shape[0])
    return 3 * estimate_bytes(lm, [widest], n_tokens, inputs=False)


def choose_method(lm, layers, n_tokens: int, wd: str = "auto", max_bytes: int | None = None) -> str:
    """``"exact"`` or ``"streaming"``: ``wd`` itself, or for ``"auto"`` exact whenever one layer's scoring
    fits ``max_bytes``."""
    if wd not in WD_METHODS:
        raise WnbError(f"wd must be one of {', '.join(WD_METHODS)} (got {wd!r})")
    if wd != "auto":
        return wd
    limit = default_budget() if max_bytes is None else int(max_bytes)
    return "exact" if exact_bytes(lm, layers, n_tokens) <= limit else "streaming"


def score_layers(lm, windows, layers=None, fields=("wd",), wd: str = "exact", max_tokens: int | None = None,
                 max_bytes: int | None = None, skip_first: int = 0, batch_size: int = 8, n_bins: int = 512,
                 progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """``{layer: {field: [n_neurons] tensor}}`` for every layer of ``layers`` (default: every FFN layer), in
    forward order, over the first ``max_tokens`` tokens of ``windows`` (default: all).

    ``fields`` from :data:`FIELDS`. ``wd``: ``"exact"`` captures the outputs, in groups of layers whose
    outputs fit ``max_bytes`` (default :func:`default_budget`); ``"streaming"`` scores in one pass with
    memory per neuron (:class:`wnb.StreamingWD`, ``n_bins`` per neuron; no first-position share, no
    ``skip_first``); ``"auto"`` is exact when one layer's scoring fits. ``skip_first`` leaves that many
    positions of every window out of every statistic."""
    unknown = [f for f in fields if f not in FIELDS]
    if unknown or not fields:
        raise WnbError(f"fields must be some of {', '.join(FIELDS)} (got {list(fields)!r})")
    layers = check_layers(lm, ffn_layers(lm) if layers is None else layers)
    windows = check_windows(windows, lm)
    seq_len, skip_first = check_skip(windows.shape[1], skip_first)
    n_tokens = windows.numel() if max_tokens is None else min(int(max_tokens), windows.numel())
    method = choose_method(lm, layers, n_tokens, wd, max_bytes)
    if method == "streaming":
        return _streamed(lm, windows, layers, fields, max_tokens, skip_first, batch_size, n_bins, progress)
    limit = default_budget() if max_bytes is None else int(max_bytes)
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for group in split_by_memory(lm, layers, n_tokens, limit):
        acts = capture(lm, group, windows, max_tokens=max_tokens, batch_size=batch_size, inputs=False,
                       progress=progress)
        for name in group:
            y = drop_positions(acts.pop(name).outputs, seq_len, skip_first)
            stats[name] = _fields(y, seq_len - skip_first, fields)
    return {name: stats[name] for name in layers}


def _fields(y: torch.Tensor, seq_len: int, fields) -> dict[str, torch.Tensor]:
    out = {}
    if "wd" in fields:
        out["wd"] = wasserstein_to_gaussian(y)
    if "mean" in fields or "variance" in fields:
        variance, mean = output_moments(y)
        out.update({k: v for k, v in (("mean", mean), ("variance", variance)) if k in fields})
    if "pos0_tail_share" in fields:
        out["pos0_tail_share"] = position_tail_share(y, seq_len)
    return out


def _streamed(lm, windows, layers, fields, max_tokens, skip_first, batch_size, n_bins, progress):
    if skip_first or any(f not in STREAMING_FIELDS for f in fields):
        raise WnbError(f"streaming scores give {', '.join(STREAMING_FIELDS)} over every position; use exact "
                       "scores for the first-position share or skip_first")
    accs = stream_scores(lm, windows, layers, max_tokens=max_tokens, batch_size=batch_size, n_bins=n_bins,
                         progress=progress)
    values = {"wd": lambda a: a.wasserstein(), "mean": lambda a: a.mean, "variance": lambda a: a.variance}
    return {name: {f: values[f](accs[name]) for f in fields} for name in layers}


def layer_statistics(lm, windows, layers=None, max_tokens: int | None = 2048, batch_size: int = 8,
                     progress: bool = True, skip_first: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Per FFN layer (or ``layers``): ``{"wd": [d], "pos0_tail_share": [d]}`` (WD, and the share of each
    neuron's tails at the first position kept, see :func:`wnb.position_tail_share`), exact;
    :func:`score_layers` with those fields."""
    return score_layers(lm, windows, layers, ("wd", "pos0_tail_share"), max_tokens=max_tokens, skip_first=skip_first,
                        batch_size=batch_size, progress=progress)


def layer_scores(lm, windows, layers=None, max_tokens: int | None = 2048, batch_size: int = 8,
                 progress: bool = True, skip_first: int = 0) -> dict[str, torch.Tensor]:
    """Exact WD of every neuron of every FFN layer (or ``layers``): :func:`score_layers`' ``"wd"``."""
    stats = score_layers(lm, windows, layers, ("wd",), max_tokens=max_tokens, skip_first=skip_first,
                         batch_size=batch_size, progress=progress)
    return {name: s["wd"] for name, s in stats.items()}


def overview(lm, windows, layers=None, fraction: float = 0.03, max_tokens: int | None = 2048,
             batch_size: int = 8, progress: bool = True, skip_first: int = 0) -> pd.DataFrame:
    """Whole-model overview: :func:`layer_statistics` of every FFN layer summarized by :func:`overview_table`
    (with the first-position ``sinks`` columns); ``skip_first`` drops positions from every window."""
    stats = layer_statistics(lm, windows, layers, max_tokens=max_tokens, batch_size=batch_size, progress=progress,
                             skip_first=skip_first)
    return overview_table(lm, {n: s["wd"] for n, s in stats.items()}, fraction,
                          pos0_shares={n: s["pos0_tail_share"] for n, s in stats.items()})
