"""The one many-layer scorer: per neuron of many layers, the fields asked for (WD, mean, variance, the
share of its tails at the first position, WD on each half of the windows, where its tails sit), read by the
one-pass reader (:mod:`wnb.scoring.reader`: one
forward for all the layers, stopping after the deepest), exact from the kept outputs or streaming (memory per
neuron, WD within 1e-3), with the first positions of every window left out on request. The command's
``score``, the app's overview and the sign study's ranking all read it."""
from __future__ import annotations

import pandas as pd
import torch

from wnb.core.memory import available_memory, group_by_bytes
from wnb.data.positions import check_skip
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, ffn_layers, layer_weight
from wnb.scoring.read_plan import WD_METHODS, plan_pass
from wnb.scoring.reader import read_layers
from wnb.scoring.samples import SAMPLE_FIELDS, half_split, samples_bytes
from wnb.scoring.sketch import sketch_bytes
from wnb.scoring.tables import overview_table

FIELDS = ("wd", "mean", "variance", "pos0_tail_share")  # one number per neuron: the tables' columns


def default_budget() -> int:
    """Bytes a scoring pass may hold beside the model by default: 30% of the memory available now."""
    return int(0.3 * available_memory())


def exact_groups(lm, layers, n_tokens: int, seq_len: int, skip_first: int, room: int, n_bins: int) -> list:
    """``layers`` (forward order) in groups whose kept outputs and sketches fit ``room`` bytes, one reading
    pass each (a layer that does not fit alone is a group of its own, which the pass then refuses)."""
    windows = -(-n_tokens // seq_len)
    rows = windows * (seq_len - skip_first)

    def need(name: str) -> int:
        d = layer_weight(lm, name).shape[0]
        return rows * d * 4 + sketch_bytes(d, seq_len, n_bins, True, skip_first, windows)

    return group_by_bytes(layers, need, room)


def score_layers(lm, windows, layers=None, fields=("wd",), wd: str = "exact", max_tokens: int | None = None,
                 max_bytes: int | None = None, skip_first: int = 0, batch_size: int = 8, n_bins: int = 256,
                 progress: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """``{layer: {field: [n_neurons] tensor}}`` for every layer of ``layers`` (default: every FFN layer), in
    forward order, over the first ``max_tokens`` tokens of ``windows`` (default: all).

    ``fields`` from :data:`FIELDS` and :data:`wnb.scoring.samples.SAMPLE_FIELDS` (``wd_halves`` needs two
    windows; exact when the outputs are kept, else from a sketch per half). One reading pass (:func:`wnb.scoring.reader.read_layers`) reads every layer
    at once, holding at most ``max_bytes`` beside the model (default :func:`default_budget`). ``wd``:
    ``"exact"`` keeps the outputs for exact WD and first-position share, in as many passes as ``max_bytes``
    needs (groups of layers whose outputs fit beside one batch, :func:`exact_groups`; a layer that does not
    fit alone is still read, refused only beyond 60% of the memory available); ``"streaming"`` keeps ``n_bins`` bins per neuron instead
    (:class:`wnb.scoring.sketch.NeuronSketch`: WD within 1e-3, the first-position share from the bins);
    ``"auto"`` is one pass, exact when every layer's outputs fit, streaming otherwise. ``skip_first`` leaves
    that many positions of every window out of every statistic. ``batch_size``: windows per forward."""
    unknown = [f for f in fields if f not in FIELDS + SAMPLE_FIELDS]
    if unknown or not fields:
        raise WnbError(f"fields must be some of {', '.join(FIELDS + SAMPLE_FIELDS)} (got {list(fields)!r})")
    if wd not in WD_METHODS:
        raise WnbError(f"wd must be one of {', '.join(WD_METHODS)} (got {wd!r})")
    layers = check_layers(lm, ffn_layers(lm) if layers is None else layers)
    windows = check_windows(windows, lm)
    seq_len, skip_first = check_skip(windows.shape[1], skip_first)
    n_tokens = windows.numel() if max_tokens is None else min(int(max_tokens), windows.numel())
    samples = tuple(f for f in fields if f in SAMPLE_FIELDS)
    if "wd_halves" in samples:
        half_split(n_tokens, seq_len)  # refused before any work when there are not two windows
    extra = None
    if samples and wd != "exact":
        def extra(d):
            return samples_bytes(samples, d, n_tokens, seq_len, skip_first, n_bins, True, exact=False)
    limit = default_budget() if max_bytes is None else int(max_bytes)
    groups, pass_limit = [layers], limit
    if wd == "exact":  # room for the kept outputs: the limit less one batch (planned for the widest layer)
        widest = max(layers, key=lambda n: layer_weight(lm, n).shape[0])
        batch = plan_pass(lm, windows, [widest], skip_first=skip_first, max_tokens=n_tokens, wd="streaming",
                          n_bins=n_bins, batch_size=batch_size).batch_bytes
        groups = exact_groups(lm, layers, n_tokens, seq_len, skip_first, limit - batch, n_bins)
        pass_limit = None  # a layer alone is read even beyond max_bytes, up to the plan's own default
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for group in groups:
        plan = plan_pass(lm, windows, group, skip_first=skip_first, max_tokens=n_tokens, wd=wd, n_bins=n_bins,
                         max_bytes=pass_limit, batch_size=batch_size, feed_bytes=extra)
        read, _, _ = read_layers(lm, windows, plan, progress=progress, samples=samples)
        stats.update({name: {f: read[name][f] for f in fields} for name in group})
    return {name: stats[name] for name in layers}


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
