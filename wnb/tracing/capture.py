"""Capture the inputs and outputs of linear layers with nnsight.

One trace per batch saves every requested layer and stops after the deepest one, so the rest of the
model is never run. Tensors go to the CPU as float32 batch by batch, flattened to ``[tokens, features]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from wnb.core.checks import check_int
from wnb.core.memory import available_memory, group_by_bytes
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, layer_weight
from wnb.model.lm import LM
from wnb.model.state import holding


@dataclass
class Activations:
    """One layer's captured samples: ``inputs [N, d_in]`` and ``outputs [N, d_out]`` (either may be None)."""

    inputs: torch.Tensor | None
    outputs: torch.Tensor | None

    @property
    def n_tokens(self) -> int:
        t = self.outputs if self.outputs is not None else self.inputs
        return 0 if t is None else t.shape[0]



def estimate_bytes(lm: LM, layers, n_tokens: int, inputs: bool = True, outputs: bool = True) -> int:
    """Bytes of CPU memory a capture of ``n_tokens`` tokens will hold (float32)."""

    total = 0
    for name in layers:
        d_out, d_in = layer_weight(lm, name).shape
        total += n_tokens * ((d_in if inputs else 0) + (d_out if outputs else 0)) * 4
    return total


def split_by_memory(lm: LM, layers, n_tokens: int, max_bytes: int, inputs: bool = False,
                    outputs: bool = True) -> list[list[str]]:
    """Consecutive runs of ``layers`` whose capture of ``n_tokens`` fits in ``max_bytes`` (at least one
    layer each), for scoring many layers in as few passes as memory allows."""
    return group_by_bytes(layers, lambda name: estimate_bytes(lm, [name], n_tokens, inputs, outputs), max_bytes)


def capture(lm: LM, layers, windows, max_tokens: int | None = None, batch_size: int = 8,
            inputs: bool = True, outputs: bool = True, max_bytes: int | None = None,
            progress: bool = True, on_batch=None) -> dict[str, Activations]:
    """Run the model on token windows and keep the requested layers' inputs and outputs.

    Returns ``{layer: Activations}``; row t of every tensor is the same token. For every layer type
    (Linear or GPT-2's Conv1D) ``outputs == inputs @ layer_weight(lm, layer).T + bias``.
    ``max_tokens`` caps the samples (the first windows are used); the memory needed is checked against
    ``max_bytes`` (default: 60% of available RAM) before any work.

    ``on_batch``: if given, it is called once per batch with ``{layer: Activations}`` of that batch's
    flattened tensors (on the model's device, in the model's dtype) and nothing is kept, so no memory
    per token is needed; capture then returns an empty dict (the reader's remote path, :mod:`wnb.scoring.reader`).
    """
    layers = check_layers(lm, layers)
    windows = check_windows(windows, lm)
    if not (inputs or outputs):
        raise WnbError("nothing to capture: inputs and outputs are both False")
    batch_size = check_int(batch_size, "batch_size")
    n_win, seq_len = windows.shape
    total = n_win * seq_len if max_tokens is None else min(int(max_tokens), n_win * seq_len)
    if total <= 0:
        raise WnbError(f"max_tokens must be positive (got {max_tokens})")
    need = 0 if on_batch is not None else estimate_bytes(lm, layers, total, inputs, outputs)
    limit = int(0.6 * available_memory()) if max_bytes is None else max_bytes
    if need > limit:
        raise WnbError(f"capturing {len(layers)} layer(s) over {total:,} tokens needs about {need / 2**30:.2f} GiB "
                       f"but the limit is {limit / 2**30:.2f} GiB; lower max_tokens or capture fewer layers")
    windows = windows[: math.ceil(total / seq_len)]


    store: dict[str, dict[str, torch.Tensor]] = {}
    for name in layers if on_batch is None else ():
        d_out, d_in = layer_weight(lm, name).shape
        store[name] = {}
        if inputs:
            store[name]["input"] = torch.empty(total, d_in, dtype=torch.float32)
        if outputs:
            store[name]["output"] = torch.empty(total, d_out, dtype=torch.float32)

    filled = 0
    batches = range(0, windows.shape[0], batch_size)
    for start in tqdm(batches, desc=f"capture {len(layers)} layer(s)", disable=not progress, leave=False):
        ids = windows[start:start + batch_size].to(lm.device)
        with holding(lm, "a capture"):
            saved = _trace_batch(lm, layers, ids, inputs, outputs)
        take = min(ids.numel(), total - filled)
        if on_batch is not None:
            on_batch({name: Activations(*(_flat(parts.get(k), take) for k in ("input", "output")))
                      for name, parts in saved.items()})
            filled += take
            continue
        for name, parts in saved.items():
            for kind, value in parts.items():
                flat = value.reshape(-1, value.shape[-1])[:take]
                store[name][kind][filled:filled + take] = flat.to("cpu", torch.float32)
        filled += take
    return {name: Activations(s.get("input"), s.get("output")) for name, s in store.items()}


def _flat(value, take: int):
    return None if value is None else value.reshape(-1, value.shape[-1])[:take]


def _envoy(lm: LM, name: str):
    env = lm.nnsight
    for part in name.split("."):
        env = getattr(env, part)
    return env


def _trace_batch(lm: LM, layers, ids, inputs: bool, outputs: bool) -> dict[str, dict[str, torch.Tensor]]:
    """One nnsight trace: save the layers in forward order, then stop the model."""
    envoys = [(name, _envoy(lm, name)) for name in layers]
    saved: dict[str, dict[str, object]] = {}
    remote = {"remote": lm.remote} if lm.remote else {}  # NDIF (or its local simulation) runs the trace
    with torch.no_grad(), lm.nnsight.trace(ids, **remote) as tracer:
        for name, env in envoys:
            parts = {}
            if inputs:
                parts["input"] = env.input.save()
            if outputs:
                parts["output"] = env.output.save()
            saved[name] = parts
        tracer.stop()
    return {name: {k: _value(v) for k, v in parts.items()} for name, parts in saved.items()}


def _value(saved) -> torch.Tensor:
    return saved.value if hasattr(saved, "value") else saved


