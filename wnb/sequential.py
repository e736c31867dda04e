"""Walk a model's transformer blocks one at a time, as sequential pruning and expansion need.

Block ``l`` is calibrated on the outputs of blocks ``< l`` *as they are after the caller changed them*:
the hidden states entering block 0 are caught once, each block is run on them, the caller edits the
block's layers, the edited block is run again, and its outputs feed the next block. The rest of the
model (later blocks, the LM head) is never run.

When every edited layer sits in the block's MLP and the block adds its MLP to the residual stream
(``out = h + mlp(norm(h))``, ``h`` the residual after attention: Llama, Mistral, Qwen2, GPT-2, GPT-NeoX
without parallel residual), the second run is the MLP alone on the ``h`` kept from the first run;
attention is not run twice. That form is checked once per walk, on one batch, against the whole block.

    for block, inputs in walk(lm, calib, layers):
        for name, x in inputs.items():      # x: [tokens, d_in] float32 on the CPU
            ...                             # replace or edit the layer; the walk sees the change
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import torch
from tqdm.auto import tqdm

from .capture import check_windows
from .models import LM, block_of, check_layers, decoder_blocks, module, require_local
from .offload import resident


class _Caught(Exception):
    """Raised by a pre-hook to stop the model once block 0's inputs are caught."""


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


def _run_block(block, batches):
    outs = []
    for hidden, args, kwargs in batches:
        out = block(hidden, *args, **kwargs)
        outs.append((out[0] if isinstance(out, tuple) else out, args, kwargs))
    return outs


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


def _run_mlp(block, parts: tuple[str, str], residuals, batches):
    """The block's outputs from the residuals ``h`` kept by the first run: ``h + mlp(norm(h))``."""
    norm, mlp = (getattr(block, p) for p in parts)
    return [(h + mlp(norm(h)), args, kwargs) for h, (_, args, kwargs) in zip(residuals, batches)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-4 if a.dtype == torch.float32 else 2e-2
    return bool(torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * float(b.float().abs().mean())))


def group_by_block(lm: LM, layers) -> dict[int, list[str]]:
    """Layer names grouped by the index of the block that holds them, in forward order."""
    groups: dict[int, list[str]] = defaultdict(list)
    for name in check_layers(lm, layers):
        groups[block_of(lm, name)].append(name)
    return dict(sorted(groups.items()))


@torch.no_grad()
def walk(lm: LM, windows, layers, batch_size: int = 8, progress: bool = True, desc: str = "blocks",
         on_inputs=None) -> Iterator[tuple[int, dict[str, torch.Tensor | None]]]:
    """Yield ``(block_index, {layer: inputs})`` for every block holding one of ``layers``, in order.

    ``inputs`` are the layer's calibration inputs ``[tokens, d_in]`` (float32, CPU) computed through the
    blocks before it *as modified so far*. Changes the caller makes to the block before asking for the
    next item are used to compute the next block's inputs.

    ``on_inputs(layer, x)``: if given, it receives each batch's inputs ``x [batch tokens, d_in]`` (on the
    model's device, in its dtype) as the block runs, nothing is kept, and the dict's values are None:
    memory no longer grows with the number of calibration tokens (e.g. to accumulate Hessians).
    """
    require_local(lm, "walking the blocks (sequential pruning or expansion)")
    groups = group_by_block(lm, layers)
    windows = check_windows(windows)
    blocks = decoder_blocks(lm)
    batches = _catch_block_inputs(lm, windows, batch_size)
    last = max(groups)
    shortcut_ok = None  # the MLP-only second run, once checked against the whole block
    for index in tqdm(range(last + 1), desc=desc, disable=not progress, leave=False):
        block = module(lm, blocks[index])
        names = groups.get(index)
        parts = _residual_mlp(lm, block, blocks[index], names) if names and shortcut_ok is not False else None
        residuals: list[torch.Tensor] = []
        with resident(lm, block):  # an offloaded model keeps this block on the GPU until it is done
            if names:
                yield index, _collect_inputs(lm, block, names, batches, on_inputs,
                                             keep=(getattr(block, parts[0]), residuals) if parts else None)
            if index == last:
                break
            if parts:
                outs = _run_mlp(block, parts, residuals, batches)
                if shortcut_ok is None:
                    shortcut_ok = _same(outs[0][0], _run_block(block, batches[:1])[0][0])
                    if not shortcut_ok:
                        outs = _run_block(block, batches)
                batches = outs
            else:
                batches = _run_block(block, batches)


def _collect_inputs(lm: LM, block, names, batches, on_inputs=None, keep=None) -> dict[str, torch.Tensor | None]:
    """Run the block on every batch with pre-hooks on ``names``, stopping each batch as soon as all of
    them have their input (the rest of the block's output is not needed); return each layer's inputs
    (or pass them on to ``on_inputs``). ``keep=(module, list)``: the input of that module in every
    batch is appended to the list (the residual the MLP-only second run starts from)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    pending: set[str] = set()
    hooks = []
    if keep is not None:
        hooks.append(keep[0].register_forward_pre_hook(lambda mod, args: keep[1].append(args[0])))
    for name in names:
        def hook(mod, args, _name=name):
            x = args[0].reshape(-1, args[0].shape[-1])
            if on_inputs is not None:
                on_inputs(_name, x)
            else:
                seen[_name].append(x.to("cpu", torch.float32))
            pending.discard(_name)
            if not pending:
                raise _Caught
        hooks.append(module(lm, name).register_forward_pre_hook(hook))
    try:
        for hidden, args, kwargs in batches:
            pending.update(names)
            try:
                block(hidden, *args, **kwargs)
            except _Caught:
                pass
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(xs) if xs else None for n, xs in seen.items()}
