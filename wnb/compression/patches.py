"""The follow-up's post-activation patches (Kong et al., ICLR 2026; PAPER.md §8), while a ``with`` block lasts:
on the chosen hidden units of a first FFN projection, the activation ``act`` that follows it becomes

- ``"posrelu"`` (their ``SelectivePosReLU``): ``x`` above 0 (identity, as ReLU), ``act(x)`` at or below 0 —
  the positive side made linear, the negative side left as it is;
- ``"signflip"`` (their ``SelectiveSignFlip``): ``|act(x)|`` — the small negative outputs of a smooth
  activation (SiLU, GELU) turned positive.

``x`` is the projection's output (the pre-activation). Every other unit keeps ``act(x)``. A forward hook on
the activation module recomputes the chosen units from its input and output, so the model's own activation
(SiLU, exact or tanh GELU...) is the base; the weights and modules are never touched.

    with wnb.activation_patched(lm, {"model.layers.3.mlp.gate_proj": [12, 907]}, patch="signflip"):
        ppl = wnb.perplexity(lm, held_out)

:func:`intervened` runs any of the follow-up's interventions by name: the clamps of
:func:`wnb.sign_ablated` (``"negative"``, ``"positive"``, ``"both"``) and these patches.
"""
from __future__ import annotations

import contextlib

import torch

from wnb.compression.clamp import SIDES, check_neurons, sign_ablated
from wnb.errors import WnbError
from wnb.model.architectures import activation_module, layer_weight, module
from wnb.model.lm import require_local
from wnb.model.state import changed

PATCHES = ("posrelu", "signflip")
PATCH_LABELS = {"posrelu": "identity above 0, act(x) below (SelectivePosReLU)",
                "signflip": "|act(x)| (SelectiveSignFlip)"}
INTERVENTIONS = SIDES + PATCHES


def check_patch(patch: str) -> str:
    if patch not in PATCHES:
        raise WnbError(f"unknown patch {patch!r}; choose one of {', '.join(PATCHES)} (posrelu: x above 0, act(x) "
                       "below; signflip: |act(x)|)")
    return patch


def check_intervention(intervention: str) -> str:
    if intervention not in INTERVENTIONS:
        raise WnbError(f"unknown intervention {intervention!r}; choose one of {', '.join(INTERVENTIONS)} (the clamps "
                       f"{', '.join(SIDES)} of wnb.sign_ablated, the patches {', '.join(PATCHES)})")
    return intervention


class _Patch:
    """Forward hook on an activation module: a copy of its output with the chosen units patched."""

    def __init__(self, index: torch.Tensor, patch: str, width: int):
        self.index, self.patch, self.width = index, patch, width
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, mod, args, output):
        x = args[0] if args else None
        if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor) or x.shape != output.shape \
                or output.shape[-1] != self.width:
            raise WnbError(f"the activation patch needs an activation that maps the projection's {self.width} "
                           f"outputs to as many (got {type(output).__name__} of shape "
                           f"{tuple(getattr(output, 'shape', ()))})")
        idx = self._on.get(output.device)
        if idx is None:
            idx = self._on[output.device] = self.index.to(output.device)
        base = output.index_select(-1, idx)
        if self.patch == "posrelu":
            pre = x.index_select(-1, idx)
            part = torch.where(pre > 0, pre.to(base.dtype), base)
        else:
            part = base.abs()
        return output.index_copy(-1, idx, part)


def patch_plan(lm, neurons) -> dict[str, tuple[str, torch.Tensor]]:
    """``{layer: (activation module name, sorted unique indices)}`` for ``{first FFN projection: indices}``;
    WnbError for another layer or two layers sharing one activation module."""
    plan = check_neurons(lm, neurons)
    out, owners = {}, {}
    for name, idx in plan.items():
        act = activation_module(lm, name)
        held = id(module(lm, act))
        if held in owners:
            raise WnbError(f"{name} and {owners[held]} share one activation module; a patch of one would patch both")
        owners[held] = name
        out[name] = (act, idx)
    return out


@contextlib.contextmanager
def activation_patched(lm, neurons, patch: str = "posrelu"):
    """Patch the activation of the chosen hidden units (module docstring) during every forward pass inside
    the ``with`` block. ``neurons`` maps first FFN projections (``wnb.first_ffn_layers(lm)``) to unit
    indices. Forward hooks on the activation modules do it and are removed on exit (also after an
    exception or Ctrl-C); the model is then as before, bit for bit. Yields ``{layer: indices}``."""
    check_patch(patch)
    plan = patch_plan(lm, neurons)
    require_local(lm, "activation patches")
    with changed(lm, f"activation patch ({patch})"):
        handles = []
        try:
            for name, (act, idx) in plan.items():
                if idx.numel():
                    width = layer_weight(lm, name).shape[0]
                    handles.append(module(lm, act).register_forward_hook(_Patch(idx, patch, width)))
            yield {name: idx for name, (_, idx) in plan.items()}
        finally:
            for handle in handles:
                handle.remove()


def intervened(lm, neurons, intervention: str = "negative"):
    """The context manager of ``intervention``: :func:`wnb.sign_ablated` for a side (``"negative"``,
    ``"positive"`` — the mirror — or ``"both"``), :func:`activation_patched` for a patch."""
    check_intervention(intervention)
    if intervention in SIDES:
        return sign_ablated(lm, neurons, intervention)
    return activation_patched(lm, neurons, intervention)
