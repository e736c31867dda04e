"""Walk a model's transformer blocks one at a time, as sequential pruning and expansion need.

Block ``l`` is calibrated on the outputs of blocks ``< l`` *as they are after the caller changed them*:
the hidden states entering block 0 are caught once, each block is run on them up to the layers asked
for, the caller edits those layers, and the edited block's outputs feed the next block. The rest of the
model (later blocks, the LM head) is never run.

Within a block the layers come in *stages* (``true_sequential=True``, the default): layers fed one and
the same input form a stage (Llama's gate and up projections), stages come in forward order, and each
stage's inputs are computed after the caller's edits to the stages before it, so down_proj is
calibrated on what the pruned gate and up projections produce. ``true_sequential=False`` yields all of
a block's layers at once, on inputs computed through the block as it entered (the order of the
reference SparseGPT and Wanda code, and of llm-compressor); the outputs passed on are the edited block's
either way.

Where the block adds its MLP to the residual stream (``out = h + mlp(norm(h))``, ``h`` the residual
after attention: Llama, Mistral, Qwen2, GPT-2, GPT-NeoX without parallel residual) and every layer asked
for sits in that MLP, attention runs once per batch: later stages and the outputs start from the ``h``
kept by the first run. If the last stage is one layer whose output is the MLP's (down_proj), its inputs
are kept as well and the block's outputs are ``h + layer(inputs)``; with true-sequential stages every
layer of the block then runs once per batch. Both forms are checked once per walk (per set of layer
names), on one batch, against the whole block; where they do not hold, blocks are run whole.

    for block, inputs in walk(lm, calib, layers):
        for name, x in inputs.items():      # x: [tokens, d_in] float32 on the CPU
            ...                             # replace or edit the layer; the walk sees the change
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import torch
from tqdm.auto import tqdm

from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import (
    block_of,
    check_layers,
    decoder_blocks,
    layer_weight,
    module,
)
from wnb.model.lm import LM, require_local
from wnb.model.offload import resident
from wnb.model.state import holding

# Most the kept inputs of a block's last layer may take (all calibration tokens); above it the MLP is
# run again for the block's outputs instead.
KEEP_BYTES = 1 << 30


class _Caught(Exception):
    """Raised by a pre-hook to stop a run once the inputs it waits for are caught."""


def _catch_block_inputs(lm: LM, windows: torch.Tensor, batch_size: int):
    """Per batch: (hidden states entering block 0, the other positional args, the keyword args)."""
    first = module(lm, decoder_blocks(lm)[0])
    caught = []

    def hook(mod, args, kwargs):
        caught.append((args[0], args[1:], kwargs))
        raise _Caught

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, windows.shape[0], batch_size):
            try:
                lm.model(windows[start:start + batch_size].to(lm.device), use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
    return caught


def _block_output(out):
    return out[0] if isinstance(out, tuple) else out


def _run_block(block, batches):
    return [(_block_output(block(hidden, *args, **kwargs)), args, kwargs) for hidden, args, kwargs in batches]


# (norm, mlp): child names of a block computing out = h + mlp(norm(h)), h being the norm's input.
_RESIDUAL_MLP = (("post_attention_layernorm", "mlp"), ("ln_2", "mlp"))


def _residual_mlp(lm: LM, block, block_name: str, names) -> tuple[str, str] | None:
    """The (norm, mlp) children through which the block adds its MLP, if every layer in ``names`` is in
    that MLP; None otherwise (the block must then be run whole)."""
    if getattr(lm.model.config, "use_parallel_residual", False) or hasattr(block, "post_feedforward_layernorm"):
        return None
    for norm, mlp in _RESIDUAL_MLP:
        modules = (getattr(block, norm, None), getattr(block, mlp, None))
        if all(isinstance(m, torch.nn.Module) for m in modules) and all(n.startswith(f"{block_name}.{mlp}.")
                                                                         for n in names):
            return norm, mlp
    return None


def _mlp(block, parts: tuple[str, str], h: torch.Tensor) -> torch.Tensor:
    """``mlp(norm(h))`` through the block's (norm, mlp) children ``parts``."""
    norm, mlp = (getattr(block, p) for p in parts)
    return mlp(norm(h))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-4 if a.dtype == torch.float32 else 2e-2
    return bool(torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * float(b.float().abs().mean())))


def group_by_block(lm: LM, layers) -> dict[int, list[str]]:
    """Layer names grouped by the index of the block that holds them, in forward order."""
    groups: dict[int, list[str]] = defaultdict(list)
    for name in check_layers(lm, layers):
        groups[block_of(lm, name)].append(name)
    return dict(sorted(groups.items()))


@dataclass
class _Plan:
    """How a block with a given set of layers is run: names relative to the block."""
    stages: list[list[str]]
    mlp: tuple[str, str] | None  # (norm, mlp) where out = h + mlp(norm(h)) holds
    last_out: bool               # and the MLP's output is the output of the last stage's one layer

    def named(self, block_name: str) -> list[list[str]]:
        return [[f"{block_name}.{n}" for n in stage] for stage in self.stages]


def _relative(block_name: str, names) -> tuple[str, ...]:
    return tuple(n[len(block_name) + 1:] for n in names)


@torch.no_grad()
def _probe(lm: LM, block, block_name: str, names: list[str], batch, true_sequential: bool,
           parts: tuple[str, str] | None) -> _Plan:
    """Run ``block`` on one batch to find its stages (layers grouped by the input tensor they are fed, in
    the order they run) and whether the residual-MLP shortcuts through ``parts`` (``_residual_mlp``)
    reproduce its output."""
    fed: dict[str, torch.Tensor] = {}
    produced: dict[str, torch.Tensor] = {}
    kept: list[torch.Tensor] = []
    hooks = []
    for name in names:
        mod = module(lm, name)
        hooks.append(mod.register_forward_pre_hook(lambda m, a, _n=name: fed.setdefault(_n, a[0])))
        hooks.append(mod.register_forward_hook(lambda m, a, o, _n=name: produced.setdefault(_n, o)))
    if parts:
        hooks.append(getattr(block, parts[0]).register_forward_pre_hook(lambda m, a: kept.append(a[0])))
    hidden, args, kwargs = batch
    try:
        out = _block_output(block(hidden, *args, **kwargs))
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in names if n not in fed]
    if missing:
        raise WnbError(f"layer(s) {missing} did not run in {block_name}'s forward pass, so they have no "
                       "calibration inputs; choose layers the model uses")
    order = sorted(names, key=list(fed).index)
    stages: list[list[str]] = []
    if true_sequential:
        for name in order:
            same = next((s for s in stages if fed[s[0]].data_ptr() == fed[name].data_ptr()
                         and fed[s[0]].shape == fed[name].shape), None)
            if same is None:
                stages.append([name])
            else:
                same.append(name)
    else:
        stages = [order]
    mlp_ok = last_ok = False
    if parts and kept:
        h = kept[0]
        mlp_ok = _same(h + _mlp(block, parts, h), out)
        final = stages[-1]
        last_ok = (mlp_ok and len(final) == 1 and produced[final[0]].shape == out.shape
                   and _same(h + produced[final[0]], out))
    return _Plan([list(_relative(block_name, s)) for s in stages], parts if mlp_ok else None, last_ok)


class _BlockRuns:
    """The runs of one block over every batch. Without ``mlp``: the whole block each time. With it: the
    first run keeps the residual ``h`` entering the MLP's norm, and later ones start from it."""

    def __init__(self, block, batches, mlp: tuple[str, str] | None):
        self.block, self.batches, self.mlp = block, batches, mlp
        self.residuals: list[torch.Tensor] = []
        self.last: tuple[str, list[torch.Tensor]] | None = None  # the last layer's name and inputs

    def _calls(self):
        if self.mlp is None or not self.residuals:
            return [lambda b=b: self.block(b[0], *b[1], **b[2]) for b in self.batches]
        return [lambda h=h: _mlp(self.block, self.mlp, h) for h in self.residuals]

    def collect(self, lm: LM, names, on_inputs=None, keep_last: bool = False,
                shared: bool = False) -> dict[str, torch.Tensor | None]:
        """Run every batch with pre-hooks on ``names``, stopping each as soon as all of them have their
        input (``shared``: as soon as one has, they are fed one tensor); return each layer's inputs (or
        pass them on to ``on_inputs``)."""
        calls = self._calls()
        keep = []
        if self.mlp is not None and not self.residuals:
            keep.append(getattr(self.block, self.mlp[0]).register_forward_pre_hook(
                lambda mod, args: self.residuals.append(args[0])))
        if keep_last:
            self.last = (names[0], [])
        try:
            return _collect_inputs(lm, names, calls, on_inputs, self.last[1] if keep_last else None, shared)
        finally:
            for h in keep:
                h.remove()

    def outputs(self, lm: LM):
        """The block's outputs per batch, with the caller's edits, to feed the next block."""
        if self.mlp is None:
            return _run_block(self.block, self.batches)
        if self.last is not None:
            layer = module(lm, self.last[0])
            outs = [h + layer(x) for h, x in zip(self.residuals, self.last[1])]
        else:
            outs = [h + _mlp(self.block, self.mlp, h) for h in self.residuals]
        return [(out, args, kwargs) for out, (_, args, kwargs) in zip(outs, self.batches)]


def _collect_inputs(lm: LM, names, calls, on_inputs=None, keep: list | None = None,
                    shared: bool = False) -> dict[str, torch.Tensor | None]:
    """Make each call (one batch's run) with pre-hooks on ``names``, stopping it once all of them have
    their input. ``shared``: the layers are fed one tensor, so the first to be called stops the run
    (the others do not run before their input is known). ``keep``: the input of the (only) layer in
    every batch is appended to it, as it is."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    pending: set[str] = set()
    hooks = []
    for name in names:
        def hook(mod, args, _name=name):
            if keep is not None:
                keep.append(args[0])
            x = args[0].reshape(-1, args[0].shape[-1])
            if on_inputs is None:
                x = x.to("cpu", torch.float32)
            for fed in (names if shared else [_name]):
                if on_inputs is not None:
                    on_inputs(fed, x)
                else:
                    seen[fed].append(x)
                pending.discard(fed)
            if not pending:
                raise _Caught
        hooks.append(module(lm, name).register_forward_pre_hook(hook))
    try:
        for call in calls:
            pending.update(names)
            try:
                call()
            except _Caught:
                pass
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(xs) if xs else None for n, xs in seen.items()}


@torch.no_grad()
def walk(lm: LM, windows, layers, batch_size: int = 8, progress: bool = True, desc: str = "blocks",
         on_inputs=None, true_sequential: bool = True) -> Iterator[tuple[int, dict[str, torch.Tensor | None]]]:
    """Yield ``(block_index, {layer: inputs})`` for every stage of every block holding one of ``layers``,
    in order (one item per block with ``true_sequential=False``; see the module's docstring).

    ``inputs`` are the layers' calibration inputs ``[tokens, d_in]`` (float32, CPU) computed through the
    blocks and stages before them *as modified so far*: changes the caller makes before asking for the
    next item are used to compute it.

    ``on_inputs(layer, x)``: if given, it receives each batch's inputs ``x [batch tokens, d_in]`` (on the
    model's device, in its dtype) as the block runs, nothing is kept, and the dict's values are None:
    memory no longer grows with the number of calibration tokens (e.g. to accumulate Hessians).
    """
    require_local(lm, "walking the blocks (sequential pruning or expansion)")
    groups = group_by_block(lm, layers)
    windows = check_windows(windows, lm)
    blocks = decoder_blocks(lm)
    # every model pass holds the model (wnb.model.state); the caller's changes between items are its own
    with holding(lm, "a calibration walk"):
        batches = _catch_block_inputs(lm, windows, batch_size)
    last = max(groups)
    plans: dict[tuple[str, ...], _Plan] = {}
    for index in tqdm(range(last + 1), desc=desc, disable=not progress, leave=False):
        block, block_name = module(lm, blocks[index]), blocks[index]
        names = groups.get(index)
        with resident(lm, block):  # an offloaded model keeps this block on the GPU until it is done
            if not names:
                with holding(lm, "a calibration walk"):
                    batches = _run_block(block, batches)
                continue
            key = _relative(block_name, names)
            if key not in plans:
                parts = _residual_mlp(lm, block, block_name, names)
                needed = (true_sequential and len(names) > 1) or parts
                with holding(lm, "a calibration walk"):
                    plans[key] = (_probe(lm, block, block_name, names, batches[0], true_sequential, parts)
                                  if needed else _Plan([list(key)], None, False))
            plan = plans[key]
            runs = _BlockRuns(block, batches, plan.mlp)
            stages = plan.named(block_name)
            for s, stage in enumerate(stages):
                keep_last = (plan.last_out and index != last and s == len(stages) - 1
                             and _kept_bytes(lm, stage[0], windows) <= KEEP_BYTES)
                with holding(lm, "a calibration walk"):
                    item = runs.collect(lm, stage, on_inputs, keep_last, shared=true_sequential)
                yield index, item
            if index == last:
                break
            with holding(lm, "a calibration walk"):
                batches = runs.outputs(lm)


def _kept_bytes(lm: LM, name: str, windows: torch.Tensor) -> int:
    weight = layer_weight(lm, name)
    return windows.numel() * weight.shape[1] * weight.element_size()
