"""The follow-up's post-activation patches against a plain PyTorch reference: a copy of the model whose activation
modules are replaced by a module computing the patch from torch.nn.functional's activation; the model restored
bit for bit after."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_opt

import wnb
from wnb.compression import patches
from wnb.errors import WnbError
from wnb.model.architectures import activation_module, first_ffn_layers

# the activation each tiny family uses, in plain PyTorch (GPT-2: gelu_new, the tanh approximation)
BASE = {"LlamaForCausalLM": F.silu, "GPTNeoXForCausalLM": F.gelu, "OPTForCausalLM": F.relu,
        "GPT2LMHeadModel": lambda x: F.gelu(x, approximate="tanh")}


class Reference(torch.nn.Module):
    def __init__(self, base, index, width, patch):
        super().__init__()
        self.base, self.patch = base, patch
        self.mask = torch.zeros(width, dtype=torch.bool)
        self.mask[index] = True

    def forward(self, x):
        y = self.base(x)
        new = torch.where(x > 0, x, y) if self.patch == "posrelu" else torch.where(y < 0, -y, y)
        return torch.where(self.mask, new, y)


def _selection(lm):
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randperm(wnb.layer_weight(lm, name).shape[0], generator=gen)[:20]
            for name in first_ffn_layers(lm)}


def _reference_logits(lm, selection, patch, ids):
    model = copy.deepcopy(lm.model)
    for name, idx in selection.items():
        parent, _, attribute = activation_module(lm, name).rpartition(".")
        width = wnb.layer_weight(lm, name).shape[0]
        setattr(model.get_submodule(parent), attribute, Reference(BASE[type(model).__name__], idx, width, patch))
    with torch.no_grad():
        return model(ids).logits


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(ids).logits


@pytest.fixture(scope="module")
def opt():
    return tiny_opt()


@pytest.mark.parametrize("patch", patches.PATCHES)
def test_patches_equal_a_plain_reference(tiny, tiny_windows, patch):
    selection = _selection(tiny)
    dense = _logits(tiny, tiny_windows)
    state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    with wnb.activation_patched(tiny, selection, patch=patch) as plan:
        got = _logits(tiny, tiny_windows)
        assert set(plan) == set(selection)
    torch.testing.assert_close(got, _reference_logits(tiny, selection, patch, tiny_windows), atol=2e-6, rtol=1e-5)
    assert not torch.allclose(got, dense)                          # a smooth activation: the patch changes the outputs
    assert torch.equal(_logits(tiny, tiny_windows), dense)        # restored bit for bit
    assert all(torch.equal(v, state[k]) for k, v in tiny.model.state_dict().items())
    assert not any(m._forward_hooks for m in tiny.model.modules())


@pytest.mark.parametrize("patch", patches.PATCHES)
def test_on_relu_both_patches_change_nothing(opt, tiny_windows, patch):
    """ReLU: x above 0 is relu(x), and relu(x) is never negative, so both patches are the identity."""
    selection = _selection(opt)
    assert activation_module(opt, first_ffn_layers(opt)[0]) == "model.decoder.layers.0.activation_fn"
    dense = _logits(opt, tiny_windows)
    with wnb.activation_patched(opt, selection, patch=patch):
        assert torch.equal(_logits(opt, tiny_windows), dense)
    torch.testing.assert_close(_reference_logits(opt, selection, patch, tiny_windows), dense)


def test_intervened_runs_each_intervention_by_name(tiny_llama, tiny_windows):
    selection = _selection(tiny_llama)
    for side in ("negative", "positive", "both"):
        with wnb.sign_ablated(tiny_llama, selection, side):
            expected = _logits(tiny_llama, tiny_windows)
        with patches.intervened(tiny_llama, selection, side):
            assert torch.equal(_logits(tiny_llama, tiny_windows), expected)
    with patches.intervened(tiny_llama, selection, "signflip"):
        got = _logits(tiny_llama, tiny_windows)
    torch.testing.assert_close(got, _reference_logits(tiny_llama, selection, "signflip", tiny_windows))


def test_bad_input(tiny_llama):
    with pytest.raises(WnbError, match="unknown patch"):
        with wnb.activation_patched(tiny_llama, _selection(tiny_llama), patch="relu"):
            pass
    with pytest.raises(WnbError, match="not the first projection"):
        with wnb.activation_patched(tiny_llama, {"model.layers.0.mlp.up_proj": [1]}):
            pass
    with pytest.raises(WnbError, match="unknown intervention"):
        patches.intervened(tiny_llama, {}, "mirror")
    with pytest.raises(WnbError, match="neurons"):
        with wnb.activation_patched(tiny_llama, {"model.layers.0.mlp.gate_proj": [10_000]}):
            pass
