"""Per-architecture layer roles, in one place: which linear layers a model has (in forward order), which
are its feed-forward ones and the first projection of each block (Llama ``gate_proj``, GPT-NeoX
``dense_h_to_4h``, GPT-2 ``c_fc``, OPT ``fc1``), the transformer blocks and the block of a layer, and a
layer's weight as ``[out, in]`` whatever its module (GPT-2's ``Conv1D`` is transposed).

Layers are addressed by module name (``model.layers.3.mlp.gate_proj``)."""
from __future__ import annotations

import difflib
import re

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from wnb.errors import WnbError
from wnb.model.lm import LM
from wnb.model.state import holding

# Leaf names of feed-forward linear layers across the supported families (Llama/Mistral/Qwen2/Gemma,
# GPT-NeoX/Pythia, GPT-2, OPT). The first of each family is the paper's main object.
FFN_LEAVES = ("gate_proj", "up_proj", "down_proj", "dense_h_to_4h", "dense_4h_to_h", "c_fc", "c_proj",
              "fc1", "fc2")
FIRST_FFN_LEAVES = ("gate_proj", "dense_h_to_4h", "c_fc", "fc1")



# ---------------------------------------------------------------- layers

def linear_layers(lm: LM) -> list[str]:
    """Names of every ``nn.Linear`` and GPT-2 ``Conv1D`` module, in forward order."""
    return list(forward_order(lm))


def ffn_layers(lm: LM) -> list[str]:
    """Names of the feed-forward linear layers, in forward order."""
    return [n for n in forward_order(lm) if _is_ffn(n)]


def first_ffn_layers(lm: LM) -> list[str]:
    """The first projection of each block's FFN (Llama ``gate_proj``, Pythia ``dense_h_to_4h``, ...)."""
    return [n for n in ffn_layers(lm) if n.rsplit(".", 1)[-1] in FIRST_FFN_LEAVES]


def _is_ffn(name: str) -> bool:
    parts = name.split(".")
    leaf = parts[-1]
    if leaf not in FFN_LEAVES:
        return False
    return leaf in ("fc1", "fc2") or "mlp" in parts[:-1]


def forward_order(lm: LM) -> list[str]:
    """Linear/Conv1D module names in the order the forward pass runs them (found once with hooks)."""
    if lm._order is None:
        named = {m: n for n, m in lm.model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
        seen: list[str] = []
        hooks = [m.register_forward_hook(lambda mod, i, o: seen.append(named[mod])) for m in named]
        device = next(lm.model.parameters()).device  # "meta" for a remote model's skeleton
        try:
            with torch.no_grad(), holding(lm, "finding the layers' order"):
                lm.model(torch.zeros(1, 2, dtype=torch.long, device=device))
        finally:
            for h in hooks:
                h.remove()
        order = list(dict.fromkeys(seen))
        order += [n for n in named.values() if n not in order]  # never run (e.g. unused heads)
        lm._order = order
    return lm._order


def check_layers(lm: LM, layers) -> list[str]:
    """Validate layer names; return them in forward order. Unknown names list the closest valid ones."""
    if isinstance(layers, str):
        layers = [layers]
    if layers is None or not all(isinstance(n, str) for n in _iterable(layers)):
        raise WnbError(f"layers must be a layer name or a list of names (got {layers!r}); pick names from "
                       "wnb.ffn_layers(lm) or wnb.linear_layers(lm)")
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise WnbError("no layers given; pick names from wnb.ffn_layers(lm) or wnb.linear_layers(lm)")
    valid = forward_order(lm)
    for name in layers:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5) or ffn_layers(lm)[:5]
            raise WnbError(f"{name!r} is not a linear layer of {lm.name}; closest valid names: "
                           f"{', '.join(close)} (all: wnb.linear_layers(lm))")
    index = {n: i for i, n in enumerate(valid)}
    return sorted(layers, key=index.__getitem__)


def _iterable(value) -> list:
    try:
        return list(value)
    except TypeError:
        return [None]


def module(lm: LM, name: str) -> nn.Module:
    return lm.model.get_submodule(name)


def layer_weight(lm: LM, name: str) -> torch.Tensor:
    """The layer's weight as ``[out, in]`` (Conv1D's ``[in, out]`` is transposed) so ``y = x @ W.T + b``."""
    mod = module(lm, name)
    return mod.weight.T if isinstance(mod, Conv1D) else mod.weight


def set_layer_weight(lm: LM, name: str, weight: torch.Tensor) -> None:
    """Write an ``[out, in]`` weight back into the layer, in its own orientation, dtype and device."""
    mod = module(lm, name)
    new = weight.T if isinstance(mod, Conv1D) else weight
    with torch.no_grad():
        mod.weight.copy_(new.to(mod.weight.dtype))


def layer_bias(lm: LM, name: str) -> torch.Tensor | None:
    return getattr(module(lm, name), "bias", None)


def decoder_blocks(lm: LM) -> list[str]:
    """Names of the transformer blocks (the longest ModuleList of the model), in order."""
    return block_names(lm.model, lm.name)


def block_names(model: nn.Module, name: str) -> list[str]:
    best = ""
    length = 0
    for n, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > length:
            best, length = n, len(m)
    if not best:
        raise WnbError(f"could not find the transformer blocks of {name}")
    return [f"{best}.{i}" for i in range(length)]


def block_modules(lm) -> list[nn.Module]:
    """The transformer blocks themselves, in order (none for a model run remotely or no model)."""
    if lm is None or getattr(lm, "remote", False):
        return []
    return [lm.model.get_submodule(name) for name in decoder_blocks(lm)]


def block_of(lm: LM, layer: str) -> int:
    """Index of the transformer block holding ``layer``."""
    for i, block in enumerate(decoder_blocks(lm)):
        if layer.startswith(block + "."):
            return i
    raise WnbError(f"{layer!r} is not inside a transformer block of {lm.name}")


def layer_outputs(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``inputs @ weight.T + bias`` in float32 on the inputs' device (weight ``[out, in]``)."""
    y = inputs.float() @ weight.to(inputs.device, torch.float32).T
    if bias is not None:
        y += bias.detach().to(inputs.device, torch.float32)
    return y


def check_untied(lm, layers) -> None:
    """Refuse layers whose weight is shared with another module (``lm_head`` tied to the input embedding):
    pruning one would silently prune the other too."""

    owners: dict[int, list[str]] = {}
    for name, param in lm.model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for name in layers:
        shared = [n for n in owners.get(id(module(lm, name).weight), []) if not n.startswith(name + ".")]
        if shared:
            raise WnbError(f"{name}'s weight is tied to {', '.join(shared)} (the model shares them), so pruning it "
                           "would prune that too; pick another layer (e.g. the FFN layers)")


def block_index(name: str) -> int:
    """The first integer part of a dotted layer name (``model.layers.3.mlp.gate_proj`` → 3)."""
    for part in name.split("."):
        if re.fullmatch(r"\d+", part):
            return int(part)
    raise WnbError(f"layer name {name!r} has no block number; pass blocks= explicitly")


# ---------------------------------------------------------------- the activation after a first FFN projection

# The attribute that holds the activation applied to the first projection's output, on the module holding
# that projection: Llama/Mistral/Qwen2/Gemma mlp.act_fn, GPT-NeoX and GPT-2 mlp.act, OPT's decoder layer
# activation_fn (fc1 and fc2 sit on the layer itself).
ACTIVATION_ATTRIBUTES = ("act_fn", "act", "activation_fn")


def activation_module(lm: LM, layer: str) -> str:
    """Name of the activation module applied to the outputs of ``layer``, a first FFN projection
    (``model.layers.3.mlp.gate_proj`` → ``model.layers.3.mlp.act_fn``); WnbError for any other layer or a
    family whose activation is not a module."""
    (layer,) = check_layers(lm, [layer])
    parent, _, leaf = layer.rpartition(".")
    if leaf not in FIRST_FFN_LEAVES:
        raise WnbError(f"{layer!r} is not the first projection of an FFN ({', '.join(FIRST_FFN_LEAVES)}); the "
                       f"activation follows those (wnb.first_ffn_layers(lm) lists them)")
    holder = lm.model.get_submodule(parent)
    for attribute in ACTIVATION_ATTRIBUTES:
        if isinstance(getattr(holder, attribute, None), nn.Module):
            return f"{parent}.{attribute}"
    raise WnbError(f"no activation module found beside {layer!r} (looked for {', '.join(ACTIVATION_ATTRIBUTES)} "
                   f"on {parent or 'the model'})")
