"""One pass reads every neuron: WD, sign statistics, positions and contexts of many layers from one forward.

    plan = wnb.plan_read(lm, calib, contexts=20)        # memory and batches, stated before any work
    reading = wnb.read_model(lm, calib, contexts=20)    # every FFN linear layer by default
    reading.scores()                                     # {layer: WD per neuron}
    reading.table("model.layers.3.mlp.gate_proj")        # one row per neuron, most entangled first
    reading.contexts("model.layers.3.mlp.gate_proj")     # wnb.NeuronContexts (with contexts=k)
    ctx = wnb.neuron_contexts(lm, "model.layers.3.mlp.gate_proj", calib)   # one layer's, in one call

The pass is :func:`wnb.scoring.reader.read_layers` (plain forward hooks, a
:class:`wnb.scoring.sketch.NeuronSketch` per layer, stopped after the deepest layer); with ``contexts=k`` each
layer also gets a :class:`wnb.reading.feed.ContextFeed` (top and bottom ``k`` with their tokens, band
samples), fed from the same batches. :func:`neuron_contexts` is that pass for one layer, and
:func:`contexts_from_outputs` (over :func:`contexts_of_outputs`) the same from outputs already captured.
:func:`cached_reading` keeps one reading in wnb's cache: its statistics once, and each layer's contexts under
:func:`contexts_key` (where the app's "What it reads" finds them).
"""
from __future__ import annotations

import math
import time

import torch

from wnb.core import cache
from wnb.core.checks import check_int
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, ffn_layers
from wnb.model.state import is_dense
from wnb.reading.contexts import NeuronContexts
from wnb.reading.feed import ContextFeed, context_bytes
from wnb.reading.readout import Readout
from wnb.scoring.read_plan import ReadPlan, plan_pass
from wnb.scoring.reader import check_outputs, read_layers, read_outputs
from wnb.scoring.sketch import SKETCH_VERSION


def plan_read(lm, windows, layers=None, *, contexts: int = 0, n_samples: int = 8, skip_first: int = 0,
              max_tokens: int | None = None, wd: str = "auto", n_bins: int = 256, spread: bool = True,
              max_bytes: int | None = None, batch_size: int | None = None) -> ReadPlan:
    """The :class:`wnb.scoring.read_plan.ReadPlan` of :func:`read_model` with these arguments (memory per neuron,
    per layer and per batch, batches, WD method), from the layers' shapes and the model's config, before any
    work; WnbError if it cannot fit ``max_bytes`` (default: 60% of the available memory), with the estimate."""
    return plan_pass(lm, windows, layers, skip_first=skip_first, max_tokens=max_tokens, wd=wd, n_bins=n_bins,
                     spread=spread, max_bytes=max_bytes, batch_size=batch_size, contexts=contexts, n_samples=n_samples,
                     feed_bytes=(lambda d: context_bytes(d, contexts, n_samples)) if contexts else None)


def read_model(lm, windows, layers=None, *, contexts: int = 0, n_samples: int = 8, seed: int = 0,
               skip_first: int = 0, max_tokens: int | None = None, wd: str = "auto", n_bins: int = 256,
               spread: bool = True, max_bytes: int | None = None, batch_size: int | None = None,
               progress: bool = True, callback=None) -> Readout:
    """Read every neuron of ``layers`` (default: every FFN linear layer) over ``windows`` in one forward pass.

    Returns a :class:`wnb.reading.readout.Readout`. ``contexts=k`` also keeps every neuron's ``k`` highest and
    lowest outputs with their tokens and ``n_samples`` seeded examples per band (``seed``); ``skip_first``
    leaves the first positions of every window out of every statistic; ``max_tokens`` reads the first tokens
    only. ``wd``: ``"streaming"`` (the sketch, within 1e-3 of exact), ``"exact"`` (keeps the outputs on the
    CPU) or ``"auto"`` (exact when they fit ``max_bytes``). ``n_bins``: bins per neuron; ``spread`` tracks each
    bin's spread (``False``: a third less memory, less accurate with tied outputs; :mod:`wnb.scoring.sketch`).
    ``batch_size``: windows per batch (default: from the budget). ``callback(ReadProgress)`` before the first
    and after every batch may raise to cancel. See :func:`plan_read`.
    """
    plan = plan_read(lm, windows, layers, contexts=contexts, n_samples=n_samples, skip_first=skip_first,
                     max_tokens=max_tokens, wd=wd, n_bins=n_bins, spread=spread, max_bytes=max_bytes,
                     batch_size=batch_size)
    seed = check_int(seed, "seed", minimum=0)
    feeds = {name: ContextFeed(d, plan.seq_len, plan.contexts, plan.n_samples, plan.skip_first, seed)
             for name, d in zip(plan.layers, plan.widths)} if plan.contexts else None
    started = time.monotonic()
    stats, fed, used = read_layers(lm, windows, plan, feeds, progress=progress, callback=callback)
    meta = {"model": lm.name, "seed": seed, "seconds": time.monotonic() - started, **plan.as_dict()}
    return Readout(meta, stats, fed if plan.contexts else None, used.to(torch.int32))


def contexts_of_outputs(outputs: torch.Tensor, windows, layer: str, *, k: int = 20, n_samples: int = 8,
                        seed: int = 0, skip_first: int = 0, n_bins: int = 256, spread: bool = True,
                        batch_size: int = 8) -> dict:
    """The :class:`wnb.NeuronContexts` state :func:`read_model` gives ``layer`` with these settings, from its
    outputs already captured (``outputs [N, d]`` of the first ``N`` tokens of ``windows``, window-major), fed in
    the same batches of ``batch_size`` windows (:func:`wnb.scoring.reader.read_outputs`): no model runs."""
    windows = check_windows(windows)
    d = check_outputs(outputs, windows).shape[1]
    feed = ContextFeed(d, windows.shape[1], k, n_samples, skip_first, check_int(seed, "seed", minimum=0))
    _, state = read_outputs(outputs, windows, skip_first=skip_first, n_bins=n_bins, spread=spread,
                            batch_windows=batch_size, feed=feed, layer=layer)
    return state


def neuron_contexts(lm, layer: str, windows, k: int = 20, width: int = 8, progress: bool = True,
                    skip_first: int = 0, batch_size: int = 8, max_tokens: int | None = None, n_samples: int = 8,
                    seed: int = 0) -> NeuronContexts:
    """The contexts of every neuron of one ``layer`` over ``windows``: :func:`read_model` of that layer alone
    with ``contexts=k`` (streaming WD: nothing per token is kept), as a :class:`wnb.NeuronContexts`.

    Keeps per neuron the ``k`` highest and lowest outputs (those of a full sort, ties to the lower token
    index, whatever the batches), ``n_samples`` examples per band drawn with ``seed``, the mean and std and the
    outputs by position; memory ``O((k + 7·n_samples) · d_out)`` whatever the number of tokens. ``skip_first``
    leaves the first positions of every window out (positions in the result stay those of the windows);
    ``width``: tokens of context shown each side; ``max_tokens`` reads the first tokens only; ``batch_size``:
    windows per batch (the band samples depend on it a little, the rest does not).
    """
    if not isinstance(layer, str):
        raise WnbError(f"layer must be one layer name, e.g. from wnb.ffn_layers(lm) (got {layer!r})")
    k, width = check_int(k, "k"), check_int(width, "width", minimum=0)  # k = 0 would read no contexts
    reading = read_model(lm, windows, [layer], contexts=k, n_samples=n_samples, seed=seed, skip_first=skip_first,
                         max_tokens=max_tokens, wd="streaming", batch_size=batch_size, progress=progress)
    return reading.contexts(reading.layers[0], lm.tokenizer, width)


def contexts_from_outputs(outputs: torch.Tensor, windows, tokenizer=None, layer: str = "", k: int = 20,
                          width: int = 8, skip_first: int = 0, n_samples: int = 8, seed: int = 0,
                          batch_tokens: int = 4096) -> NeuronContexts:
    """:class:`wnb.NeuronContexts` of an already captured layer: ``outputs [N, d]`` of the first ``N`` tokens of
    ``windows [n, seq_len]``, window-major (:func:`contexts_of_outputs`; no model runs). ``layer`` only names it;
    ``tokenizer`` (or an ``LM``) decodes the contexts. The outputs are fed as a reading pass feeds them, in
    whole windows: ``batch_tokens`` is rounded up to whole windows (``ceil(batch_tokens / seq_len)``, at least
    one), so ``batch_tokens = batch_size · seq_len`` gives what :func:`neuron_contexts` gives with ``batch_size``.
    """
    width = check_int(width, "width", minimum=0)
    windows = check_windows(windows)
    batch_size = max(1, math.ceil(check_int(batch_tokens, "batch_tokens") / windows.shape[1]))
    state = contexts_of_outputs(outputs, windows, layer, k=k, n_samples=n_samples, seed=seed, skip_first=skip_first,
                                batch_size=batch_size)
    return NeuronContexts.from_state(state, tokenizer, width)


def read_tokens(windows, max_tokens: int | None) -> int:
    """Tokens a reading of ``windows`` covers: all of them, or the first ``max_tokens``."""
    total = check_windows(windows).numel()
    return total if max_tokens is None else min(check_int(max_tokens, "max_tokens"), total)


def contexts_key(model: str, windows, layer: str, *, k: int, n_samples: int = 8, seed: int = 0, skip_first: int = 0,
                 max_tokens: int | None = None, n_bins: int = 256, spread: bool = True,
                 batch_size: int | None = None) -> cache.Key:
    """The cache key of one layer's contexts (a :class:`wnb.NeuronContexts` state) read by :func:`read_model`
    with these settings over ``windows``; ``model``: the model's name (``LM.name``). The same whatever other
    layers were read with it and whatever the WD method."""
    return cache.key(model=model, windows=windows, layer=layer, k=int(k), n_samples=int(n_samples), seed=int(seed),
                     skip_first=int(skip_first), tokens=read_tokens(windows, max_tokens), n_bins=int(n_bins),
                     spread=bool(spread), batch_size=batch_size)


def reading_key(model: str, windows, layers, *, contexts: int = 0, n_samples: int = 8, seed: int = 0,
                skip_first: int = 0, max_tokens: int | None = None, wd: str = "auto", n_bins: int = 256,
                spread: bool = True, batch_size: int | None = None) -> cache.Key:
    """The cache key of a reading's statistics (:meth:`wnb.reading.readout.Readout.to_state`): the model's name,
    the windows, the layers (in forward order) and every setting that changes the result."""
    return cache.key(model=model, windows=windows, layers=list(layers), contexts=int(contexts),
                     n_samples=int(n_samples), seed=int(seed), skip_first=int(skip_first),
                     tokens=read_tokens(windows, max_tokens), wd=wd, n_bins=int(n_bins), spread=bool(spread),
                     batch_size=batch_size, sketch=SKETCH_VERSION)


def cached_reading(lm, windows, layers=None, *, contexts: int = 0, n_samples: int = 8, seed: int = 0,
                   skip_first: int = 0, max_tokens: int | None = None, wd: str = "auto", n_bins: int = 256,
                   spread: bool = True, max_bytes: int | None = None, batch_size: int | None = None,
                   progress: bool = True, callback=None, enabled: bool = True) -> Readout:
    """:func:`read_model` through wnb's cache: the statistics once under :func:`reading_key` (kind
    ``"reading"``), each layer's contexts under :func:`contexts_key` (kind ``"contexts"``). A stored reading
    is returned without a pass when its statistics and every layer's contexts are there; its contexts are
    then loaded layer by layer when asked for. Nothing is stored while something is applied to the model
    (pruned, expanded, ablated): the reading would not be the dense model's."""
    layers = check_layers(lm, ffn_layers(lm) if layers is None else layers)
    settings = dict(seed=seed, skip_first=skip_first, max_tokens=max_tokens, n_bins=n_bins, spread=spread,
                    batch_size=batch_size)
    key = reading_key(lm.name, windows, layers, contexts=contexts, n_samples=n_samples, wd=wd, **settings)
    keys = {name: contexts_key(lm.name, windows, name, k=contexts, n_samples=n_samples, **settings)
            for name in layers} if contexts else {}
    if enabled and is_dense(lm) and all(cache.entry_path("contexts", k).exists() for k in keys.values()):
        state = cache.lookup("reading", key)
        if state is not None:
            return Readout.from_state(state, (lambda layer: cache.lookup("contexts", keys[layer])) if keys else None)
    reading = read_model(lm, windows, layers, contexts=contexts, n_samples=n_samples, wd=wd, max_bytes=max_bytes,
                         progress=progress, callback=callback, **settings)
    if enabled and is_dense(lm):
        cache.cached("reading", key, reading.to_state)
        for name, k in keys.items():
            cache.cached("contexts", k, lambda name=name: reading.contexts_state(name))
    return reading
