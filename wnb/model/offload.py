"""Weights in CPU memory, one transformer block at a time on the GPU, so a model larger than the GPU fits.

``offload_blocks(lm, "cuda")`` (what ``load_model(..., offload=True)`` does) puts everything but the
transformer blocks (embeddings, final norm, LM head, rotary embedding) on the GPU and keeps the blocks
in pinned CPU memory. A forward pre-hook moves a block onto the GPU when it is called and a forward
hook moves it back once it ran, also when the forward stops with an exception (nnsight's early stop,
the sequential walk's catch of block 0's inputs; a KeyboardInterrupt, not an Exception, can leave that
block on the GPU until its next call). ``resident(lm, block)`` keeps one block on the GPU for a while:
the sequential walk runs a block on many batches, and parts of it alone, and edits its weights in between.

Moving back copies every tensor of the block, so an edit made while the block was on the GPU (a pruned
weight, a layer swapped for a routed one) is never lost; keeping CPU master copies and skipping unedited
tensors would halve the traffic but cannot see edits made through ``weight.data``.

Why not accelerate's ``cpu_offload`` / ``device_map`` hooks: they keep the weights in a separate map and
leave the module's parameters on the meta device, loading them into the module only during its forward.
Pruning writes ``module.weight`` and Sparse Expansion swaps submodules between forwards, which that
design would silently drop; here the module's own tensors are the only copy, wherever they are.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from wnb.errors import WnbError
from wnb.model.architectures import decoder_blocks, module
from wnb.model.lm import LM, resolve_device

_SLOT = "_wnb_offload"  # attribute of each offloaded block holding its _Slot


@dataclass
class _Slot:
    device: torch.device  # where the block runs
    pin: bool             # keep its CPU copy in pinned memory (fast, asynchronous transfers)
    held: int = 0         # open resident() contexts


def check_offload(device: str | torch.device, remote: bool | str = False) -> None:
    """Refuse offloading where it cannot apply: a remote model, or a compute device that is not a GPU."""
    if remote:
        raise WnbError(f"offloading (offload=True, --offload) keeps the weights in this machine's memory, "
                       f"but remote={remote!r} runs the model elsewhere; use one or the other")
    resolved = resolve_device(device)
    if resolved.type != "cuda":
        raise WnbError(f"offloading (offload=True, --offload) moves the transformer blocks onto a GPU one at a "
                       f"time, but the device is {str(resolved)!r} (device={str(device)!r}); on a CPU the whole "
                       "model already is in memory: leave offload off, or use device='cuda' on a machine with a GPU")


def offload_blocks(lm: LM, device: str | torch.device) -> LM:
    """Keep ``lm``'s transformer blocks in CPU memory, everything else on ``device``; each block is moved
    to ``device`` only while it runs. ``lm.device`` and ``lm.offload`` become ``device``."""
    if lm.offload is not None:
        raise WnbError(f"{lm.name} is offloaded already (to {lm.offload})")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    blocks = [module(lm, name) for name in decoder_blocks(lm)]
    inside = {id(m) for block in blocks for m in block.modules()}
    for mod in lm.model.modules():
        if id(mod) not in inside:
            mod._apply(lambda t: t.to(device), recurse=False)  # only its own tensors, not its children's
    for block in blocks:
        setattr(block, _SLOT, _Slot(device, pin=device.type == "cuda"))
        _evict(block)
        block.register_forward_pre_hook(_before_block)
        block.register_forward_hook(_after_block, always_call=True)
    lm.offload = lm.device = device
    return lm


@contextlib.contextmanager
def resident(lm: LM, block: nn.Module):
    """Keep ``block`` (a module of ``decoder_blocks(lm)``) on the compute device inside the ``with``;
    it goes back to CPU memory on exit, with any change made to it. A no-op if ``lm`` is not offloaded."""
    if lm.offload is None:
        yield block
        return
    slot = getattr(block, _SLOT, None)
    if slot is None:
        raise WnbError(f"resident() takes one of the transformer blocks of {lm.name} "
                       f"(wnb.decoder_blocks(lm)), not a {type(block).__name__}")
    _fetch(block)
    slot.held += 1
    try:
        yield block
    finally:
        slot.held -= 1
        if not slot.held:
            _evict(block)


def follow(lm: LM, mod: nn.Module, parent: nn.Module) -> None:
    """Put a module just inserted under ``parent`` where ``parent``'s tensors are (a dense layer swapped
    back into a block that went back to CPU memory meanwhile). A no-op if ``lm`` is not offloaded."""
    if lm.offload is None:
        return
    own = {id(t) for t in mod.parameters()}
    where = next((t for t in parent.parameters() if id(t) not in own), None)
    if where is None or where.device.type != "cpu":
        mod.to(lm.offload if where is None else where.device)
    else:
        mod._apply(lambda t: _to_cpu(t, lm.offload.type == "cuda"))


def _before_block(block: nn.Module, args) -> None:
    if not getattr(block, _SLOT).held:
        _fetch(block)


def _after_block(block: nn.Module, args, output) -> None:
    if not getattr(block, _SLOT).held:
        _evict(block)


def _fetch(block: nn.Module) -> None:
    """Move the block onto its compute device (asynchronously from pinned memory)."""
    block.to(getattr(block, _SLOT).device, non_blocking=True)


def _evict(block: nn.Module) -> None:
    """Move the block back to CPU memory, keeping each Parameter object (as ``Module.to`` does)."""
    pin = getattr(block, _SLOT).pin
    block._apply(lambda t: _to_cpu(t, pin))


def _to_cpu(t: torch.Tensor, pin: bool) -> torch.Tensor:
    if t.device.type == "cpu" and (not pin or t.is_pinned()):
        return t
    if not pin:
        return t.to("cpu")
    # Straight into a pinned buffer: one copy, where .to("cpu").pin_memory() would make two.
    return torch.empty_like(t, device="cpu", pin_memory=True).copy_(t)
