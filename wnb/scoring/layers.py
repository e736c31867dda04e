"""The one many-layer scorer: per neuron of many layers, the fields asked for (WD, mean, variance, the
share of its tails at the first position, WD on each half of the windows, where its tails sit), exact
from captured outputs (layers captured in as many passes as the memory budget needs, each stopping after
its deepest layer) or streaming (one pass, memory per neuron, WD within 1e-3), with the first positions
of every window left out on request. The command's ``score``, the app's overview and the sign study's
ranking all read it."""
from __future__ import annotations

import pandas as pd
import torch

from wnb.core.memory import available_memory
from wnb.data.positions import check_skip, drop_positions, kept_rows, position_tail_share
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, ffn_layers, layer_weight
from wnb.scoring.streaming import StreamingWD
from wnb.scoring.tables import output_moments, overview_table
from wnb.scoring.wasserstein import wasserstein_to_gaussian
from wnb.tracing.capture import capture, estimate_bytes, split_by_memory

FIELDS = ("wd", "mean", "variance", "pos0_tail_share")  # one number per neuron: the tables' columns
STREAMING_FIELDS = ("wd", "mean", "variance")
SAMPLE_FIELDS = ("wd_halves", "low_tail", "high_tail")  # both methods, on request
"""``wd_halves``: ``[2, n]``, WD over the first and over the second half of the windows (disjoint tokens);
``low_tail`` / ``high_tail``: ``[k, n]`` long, where each neuron's :func:`tail_count` lowest / highest outputs
sit, as flat indices into ``windows.flatten()`` (so ``% seq_len`` is the position and the ids there the
tokens)."""
WD_METHODS = ("auto", "exact", "streaming")
TAIL_SHARE, TAIL_MIN, TAIL_MAX = 0.01, 8, 256  # a tail: 1% of the tokens, at least 8 and at most 256 of them


def tail_count(n_tokens: int) -> int:
    """How many outputs make a neuron's tail over ``n_tokens`` tokens: 1% of them, at least 8 (all when
    fewer), at most 256."""
    return min(int(n_tokens), max(TAIL_MIN, min(TAIL_MAX, round(TAIL_SHARE * n_tokens))))


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

    ``fields`` from :data:`FIELDS` and :data:`SAMPLE_FIELDS`. ``wd``: ``"exact"`` captures the outputs, in groups of layers whose
    outputs fit ``max_bytes`` (default :func:`default_budget`); ``"streaming"`` scores in one pass with
    memory per neuron (:class:`wnb.StreamingWD`, ``n_bins`` per neuron, and the tails kept as running
    extremes; no first-position share); ``"auto"`` is exact when one layer's scoring fits. ``skip_first``
    leaves that many positions of every window out of every statistic. ``wd_halves`` needs two windows."""
    unknown = [f for f in fields if f not in FIELDS + SAMPLE_FIELDS]
    if unknown or not fields:
        raise WnbError(f"fields must be some of {', '.join(FIELDS + SAMPLE_FIELDS)} (got {list(fields)!r})")
    layers = check_layers(lm, ffn_layers(lm) if layers is None else layers)
    windows = check_windows(windows, lm)
    seq_len, skip_first = check_skip(windows.shape[1], skip_first)
    n_tokens = windows.numel() if max_tokens is None else min(int(max_tokens), windows.numel())
    split = _half_split(windows.shape[0], seq_len, n_tokens) if "wd_halves" in fields else None
    method = choose_method(lm, layers, n_tokens, wd, max_bytes)
    if method == "streaming":
        return _streamed(lm, windows, layers, fields, max_tokens, skip_first, batch_size, n_bins, progress, split)
    limit = default_budget() if max_bytes is None else int(max_bytes)
    rows = kept_rows(n_tokens, seq_len, skip_first)
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for group in split_by_memory(lm, layers, n_tokens, limit):
        acts = capture(lm, group, windows, max_tokens=max_tokens, batch_size=batch_size, inputs=False,
                       progress=progress)
        for name in group:
            y = drop_positions(acts.pop(name).outputs, seq_len, skip_first)
            stats[name] = _fields(y, seq_len - skip_first, fields, rows, split)
    return {name: stats[name] for name in layers}


def _half_split(n_windows: int, seq_len: int, n_tokens: int) -> int:
    """The first token of the second half of the windows (a window boundary)."""
    covered = -(-n_tokens // seq_len)
    if covered < 2:
        raise WnbError(f"WD on two halves of the windows needs at least 2 windows (got {covered})")
    return (covered // 2) * seq_len


def _fields(y: torch.Tensor, seq_len: int, fields, rows: torch.Tensor, split: int | None) -> dict[str, torch.Tensor]:
    """The ``fields`` of kept outputs ``y`` (row ``i`` is token ``rows[i]`` of the flattened windows)."""
    out = {}
    if "wd" in fields:
        out["wd"] = wasserstein_to_gaussian(y)
    if "mean" in fields or "variance" in fields:
        variance, mean = output_moments(y)
        out.update({k: v for k, v in (("mean", mean), ("variance", variance)) if k in fields})
    if "pos0_tail_share" in fields:
        out["pos0_tail_share"] = position_tail_share(y, seq_len)
    if "wd_halves" in fields:
        first = rows < split
        out["wd_halves"] = torch.stack([wasserstein_to_gaussian(y[first]), wasserstein_to_gaussian(y[~first])])
    for field, largest in (("low_tail", False), ("high_tail", True)):
        if field in fields:
            out[field] = rows[torch.topk(y, tail_count(y.shape[0]), dim=0, largest=largest).indices.cpu()]
    return out


class _Tails:
    """The ``k`` lowest (or highest) outputs per neuron seen so far and their rows, fed batch by batch."""

    def __init__(self, k: int, largest: bool):
        self.k, self.largest = k, largest
        self.values = self.rows = None

    def update(self, y: torch.Tensor, rows: torch.Tensor) -> None:
        rows = rows.to(y.device)[:, None].expand(-1, y.shape[1])
        if self.values is not None:
            y, rows = torch.cat([self.values, y]), torch.cat([self.rows, rows])
        top = torch.topk(y, min(self.k, y.shape[0]), dim=0, largest=self.largest)
        self.values, self.rows = top.values, rows.gather(0, top.indices)


def _streamed(lm, windows, layers, fields, max_tokens, skip_first, batch_size, n_bins, progress, split):
    """The fields in one capture pass that keeps no outputs: WD, moments and halves from
    :class:`wnb.StreamingWD` accumulators, tails as running extremes."""
    unknown = [f for f in fields if f not in STREAMING_FIELDS + SAMPLE_FIELDS]
    if unknown:
        raise WnbError(f"streaming scores give {', '.join(STREAMING_FIELDS + SAMPLE_FIELDS)}; use exact scores "
                       f"for {unknown}")
    seq_len = windows.shape[1]
    n_tokens = windows.numel() if max_tokens is None else min(int(max_tokens), windows.numel())
    k = tail_count(kept_rows(n_tokens, seq_len, skip_first).numel())
    parts = ["wd"] + (["first", "second"] if "wd_halves" in fields else [])
    accs = {name: {part: StreamingWD(n_bins) for part in parts} for name in layers}
    tails = {name: {f: _Tails(k, f == "high_tail") for f in ("low_tail", "high_tail") if f in fields} for name in layers}
    seen = [0]

    def feed(batch):
        rows = torch.arange(seen[0], seen[0] + next(iter(batch.values())).outputs.shape[0])
        seen[0] += rows.numel()  # every batch starts at a window boundary
        keep = rows % seq_len >= skip_first
        rows = rows[keep]
        for name, acts in batch.items():
            y = acts.outputs[keep.to(acts.outputs.device)]
            accs[name]["wd"].update(y)
            if split is not None:
                first = (rows < split).to(y.device)
                for part, chosen in (("first", first), ("second", ~first)):
                    if chosen.any():
                        accs[name][part].update(y[chosen])
            for tail in tails[name].values():
                tail.update(y, rows)

    capture(lm, layers, windows, max_tokens=max_tokens, batch_size=batch_size, inputs=False, progress=progress,
            on_batch=feed)
    values = {"wd": lambda a, t: a["wd"].wasserstein(), "mean": lambda a, t: a["wd"].mean,
              "variance": lambda a, t: a["wd"].variance,
              "wd_halves": lambda a, t: torch.stack([a["first"].wasserstein(), a["second"].wasserstein()]),
              "low_tail": lambda a, t: t["low_tail"].rows.cpu(), "high_tail": lambda a, t: t["high_tail"].rows.cpu()}
    return {name: {f: values[f](accs[name], tails[name]) for f in fields} for name in layers}


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
