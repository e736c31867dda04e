"""The follow-up's intervention: forward hooks that clamp chosen outputs of linear layers while a ``with``
block lasts — the negative side (``y → max(y, 0)``), the positive side (``y → min(y, 0)``) or both
(``y → 0``); the weights are never touched.

    with wnb.sign_ablated(lm, {"model.layers.3.mlp.gate_proj": [12, 907]}, side="negative"):
        ppl = wnb.perplexity(lm, held_out)"""
from __future__ import annotations

import contextlib
from typing import Mapping

import torch

from wnb.compression.sparsity import check_rows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, layer_weight, module
from wnb.model.lm import require_local
from wnb.model.state import changed

SIDES = ("negative", "positive", "both")
# the words for each side, in widgets and figures
SIDE_LABELS = {"negative": "negative side: y → max(y, 0)", "positive": "positive side: y → min(y, 0)",
         "both": "both sides: y → 0"}


def check_side(side: str) -> str:
    if side not in SIDES:
        raise WnbError(f"unknown side {side!r}; choose one of {', '.join(SIDES)} (negative: y -> max(y, 0), "
                       "positive: y -> min(y, 0), both: y -> 0)")
    return side


MIRRORS = {"negative": "positive", "positive": "negative"}  # "both" clamps everything: it has no other side


def mirror_side(side: str) -> str:
    """The other side of a one-sided clamp: the sign study's ``mirror`` row clamps it on the same neurons."""
    check_side(side)
    if side not in MIRRORS:
        raise WnbError(f"the {side!r} clamp zeroes every output, so it has no mirror (the other side of the same "
                       "neurons); the mirror needs side 'negative' or 'positive'")
    return MIRRORS[side]


def check_neurons(lm, neurons) -> dict[str, torch.Tensor]:
    """Validate ``{layer: neuron indices}`` (indices or a boolean mask per layer); return the layers in
    forward order with sorted unique ``LongTensor`` indices."""

    if not isinstance(neurons, Mapping):
        raise WnbError("neurons must map layer names to neuron indices, e.g. "
                       "{'model.layers.1.mlp.gate_proj': [3, 17]} (see wnb.select_wasserstein)")
    if not neurons:
        return {}
    plan = {}
    for name in check_layers(lm, list(neurons)):
        value = neurons[name]
        if value is None:
            raise WnbError(f"no neuron indices given for {name!r}")
        n_out = layer_weight(lm, name).shape[0]
        try:
            plan[name] = check_rows(value, n_out)
        except WnbError as exc:
            raise WnbError(f"{name} has {n_out} neurons: {exc}") from None
    return plan


class _Clamp:
    """Forward hook: return a copy of the output with the chosen features (last dimension) clamped.

    Not in place: nnsight reads a layer's output inside its ``forward``, before PyTorch's forward hooks
    run, and keeps a reference; an in-place clamp would reach that reference or not depending on whether
    the trace stopped at this layer (``wnb.tracing.capture`` stops after its deepest layer, before its hooks).
    With a copy, a capture of an ablated layer always gives its output before the clamp."""

    def __init__(self, index: torch.Tensor, side: str):
        self.index = index
        self.side = side
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, module, args, output):
        if not isinstance(output, torch.Tensor):
            raise WnbError(f"sign ablation needs a layer that returns one tensor (got {type(output).__name__})")
        idx = self._on.get(output.device)
        if idx is None:
            idx = self._on[output.device] = self.index.to(output.device)
        if self.side == "both":
            return output.index_fill(-1, idx, 0)
        part = output.index_select(-1, idx)
        part = part.clamp_(min=0) if self.side == "negative" else part.clamp_(max=0)
        return output.index_copy(-1, idx, part)


@contextlib.contextmanager
def sign_ablated(lm, neurons, side: str = "negative"):
    """Clamp the chosen outputs of linear layers during every forward pass inside the ``with`` block.

    ``neurons`` maps layer names (``wnb.linear_layers(lm)``) to neuron indices (output features).
    ``side="negative"`` zeroes only their negative values (y → max(y, 0), the follow-up's intervention),
    ``"positive"`` only the positive ones (y → min(y, 0)), ``"both"`` all (y → 0). Forward hooks do it, so
    :func:`wnb.perplexity`, :func:`wnb.tracing.capture`, nnsight traces and ``lm.model.generate`` all run the
    ablated model; the weights are never touched. The clamp acts as the layer returns, after nnsight
    reads its output: a capture of an ablated layer itself gives its output before the clamp (what it
    computes from its, possibly ablated, inputs), every later layer sees the clamped values. The hooks
    are removed on exit, also after an exception or Ctrl-C. Yields the validated ``{layer: indices}``.
    """

    check_side(side)
    plan = check_neurons(lm, neurons)
    require_local(lm, "sign ablation")
    with changed(lm, f"sign ablation ({side} side)"):  # hooks: the weights stay dense, the outputs do not
        handles = []
        try:
            for name, idx in plan.items():
                if idx.numel():
                    handles.append(module(lm, name).register_forward_hook(_Clamp(idx, side)))
            yield plan
        finally:
            for handle in handles:
                handle.remove()
