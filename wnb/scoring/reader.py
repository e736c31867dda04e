"""One pass reads every neuron of many layers: the engine under :func:`wnb.scoring.layers.score_layers` and
:func:`wnb.read_model`.

A plain PyTorch forward hook on every requested layer feeds each batch's outputs, as the batch passes, to
that layer's :class:`wnb.scoring.sketch.NeuronSketch` (WD, the WD split at the mean and at raw zero, the share
below zero, moments, outputs by position, the first position's share of the tails) and, when given, to a
per-layer *feed* (what :mod:`wnb.reading` keeps: the contexts). The hook of the deepest requested layer then
stops the forward (the rest of the model never runs). Nothing per token is kept beyond one batch, except the
outputs themselves when the plan says exact WD (``wd="exact"``, or ``"auto"`` when they fit the memory
budget; then WD, mean, variance and the first-position share are computed exactly from them at the end,
everything else still from the sketch). Batches are whole windows, sized by the plan (:func:`wnb.scoring.read_plan.plan_pass`).

A feed is any object with ``k`` (how many extremes per side it keeps, for the first batch's candidate
bounds), ``update(y, start, t, t2, grid, moments, bounds)`` and ``finish(windows, layer, stats)``; see
:class:`wnb.reading.feed.ContextFeed`. ``callback(ReadProgress)`` is called before the first batch and after
every batch (tokens done and total, seconds left) and may raise to cancel; the hooks are removed and the
model is left as it was.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from wnb.core.eviction import size_text
from wnb.data.positions import position_tail_share
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import layer_weight, module
from wnb.model.state import holding
from wnb.scoring.read_plan import ReadPlan
from wnb.scoring.samples import LayerSamples
from wnb.scoring.sketch import NeuronSketch, Scratch
from wnb.scoring.tables import output_moments
from wnb.scoring.wasserstein import check_samples, wasserstein_to_gaussian
from wnb.tracing.capture import capture


@dataclass(frozen=True)
class ReadProgress:
    """Where a read stands, handed to ``callback`` before the first batch and after every batch."""

    tokens_done: int
    tokens_total: int
    elapsed_s: float
    seconds_left: float | None


class _Stop(Exception):
    """Raised by the deepest layer's hook: the rest of the forward is not needed."""


class _LayerReader:
    """Everything kept for one layer in a pass: its sketch, its feed, its outputs for exact WD."""

    def __init__(self, name: str, d: int, n_tokens: int, seq_len: int, n_bins: int, spread: bool, skip_first: int,
                 exact: bool, feed=None, samples=()):
        n_windows = math.ceil(n_tokens / seq_len)
        self.name, self.d, self.seq_len = name, d, seq_len
        self.sketch = NeuronSketch(d, seq_len, n_bins, spread, skip_first, n_windows)
        self.feed = feed
        self.samples = (LayerSamples(samples, d, n_tokens, seq_len, skip_first, n_bins, spread, exact)
                        if samples else None)
        self.kept = torch.empty(n_windows * (seq_len - skip_first), d) if exact else None
        self.filled = 0
        self.batch = -1

    def update(self, outputs: torch.Tensor, start: int, batch: int, scratch: Scratch) -> None:
        """Add a batch's outputs ``[windows, positions, d]`` (or flat ``[tokens, d]``) of flat tokens ``start …``."""
        if batch == self.batch:
            raise WnbError(f"{self.name} ran twice in one forward pass; the reader reads layers that run once")
        self.batch = batch
        y = outputs.detach().reshape(-1, self.d)
        if y.dtype != torch.float32:  # one conversion serves the sketch and the feed
            y = scratch.get("y32", y.shape, device=y.device).copy_(y)
        full = y.shape[0] // self.seq_len * self.seq_len
        for rows in (slice(0, full), slice(full, y.shape[0])):
            part = y[rows]
            if part.shape[0]:
                self._update(part.view(-1, min(self.seq_len, part.shape[0]), self.d), start + rows.start, scratch)

    def _update(self, y3: torch.Tensor, start: int, scratch: Scratch) -> None:
        sk, feed = self.sketch, self.feed
        visit = None
        if feed is not None:
            before = sk.moments() if sk.n_tokens else None
            flat = y3.reshape(-1, self.d)

            def visit(t, t2):
                first = sk.n_tokens == t.shape[0] * t.shape[1]  # its counts are this batch's alone
                feed.update(flat, start, t, t2, (sk.alpha, sk.beta), before or sk.moments(),
                            sk.tail_bounds(feed.k) if first else None)

        sk.update(y3, scratch, visit)
        if self.samples is not None:
            self.samples.update(y3, start, scratch)
        if self.kept is not None:
            rows = y3[:, sk.skip_first:].reshape(-1, self.d)
            self.kept[self.filled:self.filled + rows.shape[0]] = rows.to("cpu", torch.float32)
            self.filled += rows.shape[0]

    def finish(self, windows: torch.Tensor) -> tuple[dict, object]:
        """``(stats, what the feed gives or None)`` of this layer."""
        if self.sketch.n_tokens < 2:
            raise WnbError(f"{self.name} saw {self.sketch.n_tokens} token(s) in the forward pass; it needs at least 2 "
                           "(is it a layer the model runs?)")
        stats = self.sketch.results()
        if self.kept is not None:
            kept = self.kept[:self.filled]
            stats["wd"] = wasserstein_to_gaussian(kept)
            stats["variance"], stats["mean"] = output_moments(kept)
            stats["pos0_tail_share"] = position_tail_share(kept, self.seq_len - self.sketch.skip_first)
        if self.samples is not None:
            stats.update(self.samples.finish(None if self.kept is None else self.kept[:self.filled]))
        self.kept = None
        return stats, (self.feed.finish(windows, self.name, stats) if self.feed is not None else None)


def _batches(windows: torch.Tensor, n_tokens: int, batch_windows: int):
    """``(start token, ids)`` of whole windows, then the last window cut to ``n_tokens`` if it must be."""
    seq_len = windows.shape[1]
    full, rest = divmod(n_tokens, seq_len)
    for w in range(0, full, batch_windows):
        yield w * seq_len, windows[w:min(w + batch_windows, full)]
    if rest:
        yield full * seq_len, windows[full:full + 1, :rest]


def _forward_kwargs(model) -> dict:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def _run_local(lm, readers: dict, plan: ReadPlan, windows, scratch, step) -> None:
    """Plain forward hooks feed the readers; the deepest layer's hook stops the forward."""
    deepest = plan.layers[-1]
    where = {"start": 0, "batch": 0}

    def hook_for(name):
        reader = readers[name]

        def hook(mod, inputs, output):
            reader.update(output, where["start"], where["batch"], scratch)
            if name == deepest:
                raise _Stop
        return hook

    handles = [module(lm, name).register_forward_hook(hook_for(name)) for name in plan.layers]
    kwargs = _forward_kwargs(lm.model)
    try:
        for batch, (start, ids) in enumerate(_batches(windows, plan.n_tokens, plan.batch_windows)):
            where.update(start=start, batch=batch)
            try:
                lm.model(ids.to(lm.device), **kwargs)
            except _Stop:
                pass
            step(ids.numel())
    finally:
        for handle in handles:
            handle.remove()


def _run_remote(lm, readers: dict, plan: ReadPlan, windows, scratch, step) -> None:
    """A remote model (NDIF) runs through :func:`wnb.capture` batch by batch, nothing kept."""
    where = {"start": 0, "batch": 0}

    def feed(batch):
        n = 0
        for name, acts in batch.items():
            readers[name].update(acts.outputs, where["start"], where["batch"], scratch)
            n = acts.outputs.shape[0]
        where["start"] += n
        where["batch"] += 1
        step(n)

    capture(lm, list(plan.layers), windows, max_tokens=plan.n_tokens, batch_size=plan.batch_windows, inputs=False,
            progress=False, on_batch=feed)


def _stepper(plan: ReadPlan, bar, callback, started: float):
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        bar.update(n)
        if callback is not None:
            elapsed = time.monotonic() - started
            left = elapsed / done[0] * (plan.n_tokens - done[0]) if done[0] else None
            callback(ReadProgress(done[0], plan.n_tokens, elapsed, left))

    return step


def read_layers(lm, windows, plan: ReadPlan, feeds: dict | None = None, progress: bool = True, callback=None,
                samples=()):
    """Read every layer of ``plan`` over ``windows`` in one forward pass (see the module docstring); with
    ``samples`` (some of :data:`wnb.scoring.samples.SAMPLE_FIELDS`) each layer's stats have those too.

    Returns ``(stats, fed, windows read)``: ``stats[layer]`` the float64 CPU results of
    :meth:`wnb.scoring.sketch.NeuronSketch.results` (WD, mean, variance and the first-position share exact when
    the plan says ``wd="exact"``), ``fed[layer]`` what each layer's feed (``feeds[layer]``) gives at the end, and the token
    windows read (``[n, seq_len]``, the last maybe read in part)."""
    windows = check_windows(windows, lm)
    feeds = feeds or {}
    used = windows[:math.ceil(plan.n_tokens / plan.seq_len)]
    readers = {name: _LayerReader(name, d, plan.n_tokens, plan.seq_len, plan.n_bins, plan.spread, plan.skip_first,
                                  plan.wd == "exact", feeds.get(name), samples)
               for name, d in zip(plan.layers, plan.widths)}
    for name, d in zip(plan.layers, plan.widths):
        if layer_weight(lm, name).shape[0] != d:
            raise WnbError(f"the plan's width of {name} ({d}) is not the layer's; plan again for this model")
    started = time.monotonic()
    bar = tqdm(total=plan.n_tokens, unit="token", disable=not progress, leave=False,
               desc=f"read {len(plan.layers)} layer(s), {size_text(plan.total_bytes)}")
    stats, fed = {}, {}
    try:
        if callback is not None:
            callback(ReadProgress(0, plan.n_tokens, 0.0, None))
        with torch.no_grad(), holding(lm, "reading the model"):
            run = _run_remote if lm.remote else _run_local
            run(lm, readers, plan, used, Scratch(), _stepper(plan, bar, callback, started))
        for name in plan.layers:
            stats[name], fed[name] = readers.pop(name).finish(used)  # frees the layer's state
    finally:
        bar.close()
    return stats, fed, used


def read_outputs(outputs: torch.Tensor, windows, *, skip_first: int = 0, n_bins: int = 256, spread: bool = True,
                 batch_windows: int = 8, feed=None, layer: str = "") -> tuple[dict, object]:
    """What a reading pass of ``batch_windows`` windows per batch gives for one layer (streaming statistics and
    what ``feed`` gives), from its outputs already captured: ``outputs [N, d]`` of the first ``N`` tokens of
    ``windows [n, seq_len]``, window-major. The outputs are fed in the batches such a pass feeds (whole
    windows, then the last one cut short), so the result is the pass's for the same outputs; no model runs."""
    windows = check_windows(windows)
    seq_len = windows.shape[1]
    outputs = check_outputs(outputs, windows)
    n, d = outputs.shape
    reader = _LayerReader(layer, d, n, seq_len, n_bins, spread, skip_first, False, feed)
    scratch = Scratch()
    with torch.no_grad():
        for batch, (start, ids) in enumerate(_batches(windows, n, batch_windows)):
            reader.update(outputs[start:start + ids.numel()], start, batch, scratch)
    return reader.finish(windows[:math.ceil(n / seq_len)])


def check_outputs(outputs, windows: torch.Tensor) -> torch.Tensor:
    """``outputs`` if it is a ``[N, d]`` torch tensor (:func:`wnb.scoring.wasserstein.check_samples`) of the first
    ``N`` tokens of ``windows`` (checked), else WnbError."""
    if not isinstance(outputs, torch.Tensor):
        raise WnbError(f"outputs must be a torch tensor [N, d] (got {type(outputs).__name__})")
    check_samples(outputs)
    if not 0 < outputs.shape[0] <= windows.numel():
        raise WnbError(f"outputs must be [N, d] with 0 < N <= {windows.numel()} tokens of the windows "
                       f"(got {tuple(outputs.shape)})")
    return outputs
