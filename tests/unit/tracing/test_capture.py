"""Capture against plain PyTorch forward hooks, on tiny Llama, GPT-NeoX and GPT-2 models."""
import pytest
import torch

import wnb
from wnb.errors import WnbError


def hook_reference(lm, layers, windows):
    """Inputs and outputs of ``layers`` from a full forward with plain PyTorch hooks (independent of nnsight)."""
    seen = {n: {"in": [], "out": []} for n in layers}
    handles = []
    for name in layers:
        def hook(mod, args, out, _n=name):
            seen[_n]["in"].append(args[0].reshape(-1, args[0].shape[-1]).clone())
            seen[_n]["out"].append(out.reshape(-1, out.shape[-1]).clone())
        handles.append(lm.model.get_submodule(name).register_forward_hook(hook))
    with torch.no_grad():
        lm.model(windows)
    for h in handles:
        h.remove()
    return {n: (torch.cat(v["in"]), torch.cat(v["out"])) for n, v in seen.items()}


def test_capture_equals_forward_hooks(tiny, tiny_windows):
    layers = wnb.ffn_layers(tiny)
    acts = wnb.capture(tiny, layers, tiny_windows, batch_size=4, progress=False)
    ref = hook_reference(tiny, layers, tiny_windows)
    for name in layers:
        assert torch.equal(acts[name].inputs, ref[name][0]), name
        assert torch.equal(acts[name].outputs, ref[name][1]), name


def test_outputs_are_inputs_times_weight(tiny, tiny_windows):
    """Conv1D (GPT-2) weights are presented as [out, in] like nn.Linear's."""
    for name in wnb.ffn_layers(tiny):
        act = wnb.capture(tiny, [name], tiny_windows, progress=False)[name]
        weight = wnb.layer_weight(tiny, name)
        bias = tiny.model.get_submodule(name).bias
        expected = act.inputs @ weight.detach().T + (0 if bias is None else bias.detach())
        torch.testing.assert_close(act.outputs, expected, rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_is_listed_and_transposed(tiny_gpt2):
    from transformers.pytorch_utils import Conv1D

    name = wnb.ffn_layers(tiny_gpt2)[0]
    mod = tiny_gpt2.model.get_submodule(name)
    assert isinstance(mod, Conv1D)
    assert wnb.layer_weight(tiny_gpt2, name).shape == (mod.nf, mod.weight.shape[0])


def test_ffn_layers_per_family(tiny_llama, tiny_neox, tiny_gpt2):
    assert wnb.ffn_layers(tiny_llama)[:3] == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                                              "model.layers.0.mlp.down_proj"]
    assert wnb.ffn_layers(tiny_neox)[:2] == ["gpt_neox.layers.0.mlp.dense_h_to_4h", "gpt_neox.layers.0.mlp.dense_4h_to_h"]
    assert wnb.ffn_layers(tiny_gpt2)[:2] == ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    for lm in (tiny_llama, tiny_neox, tiny_gpt2):
        assert len(wnb.ffn_layers(lm)) == len(wnb.decoder_blocks(lm)) * (3 if lm is tiny_llama else 2)


def test_layers_in_forward_order_whatever_order_asked(tiny_llama, tiny_windows):
    layers = wnb.ffn_layers(tiny_llama)
    acts = wnb.capture(tiny_llama, list(reversed(layers)), tiny_windows, progress=False)
    assert list(acts) == layers


def test_any_linear_layer_can_be_captured(tiny_llama, tiny_windows):
    name = "model.layers.1.self_attn.q_proj"
    assert name in wnb.linear_layers(tiny_llama)
    act = wnb.capture(tiny_llama, [name], tiny_windows, progress=False)[name]
    ref = hook_reference(tiny_llama, [name], tiny_windows)[name]
    assert torch.equal(act.outputs, ref[1])


def test_early_stop_skips_the_rest_and_keeps_results(tiny_llama, tiny_windows):
    first, last = wnb.ffn_layers(tiny_llama)[0], wnb.ffn_layers(tiny_llama)[-1]
    calls = []
    handle = tiny_llama.model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    later = tiny_llama.model.model.layers[2].register_forward_hook(lambda *a: calls.append(2))
    try:
        alone = wnb.capture(tiny_llama, [first], tiny_windows, progress=False)[first]
        assert calls == []  # neither the last block nor the LM head ran
        both = wnb.capture(tiny_llama, [first, last], tiny_windows, progress=False)[first]
    finally:
        handle.remove()
        later.remove()
    assert torch.equal(alone.inputs, both.inputs) and torch.equal(alone.outputs, both.outputs)


def test_max_tokens_and_flags(tiny_llama, tiny_windows):
    name = wnb.ffn_layers(tiny_llama)[0]
    full = wnb.capture(tiny_llama, [name], tiny_windows, progress=False)[name]
    part = wnb.capture(tiny_llama, [name], tiny_windows, max_tokens=40, inputs=False, progress=False)[name]
    assert part.inputs is None and part.n_tokens == 40
    assert torch.equal(part.outputs, full.outputs[:40])


def test_unknown_layer_lists_close_names(tiny_llama, tiny_windows):
    with pytest.raises(WnbError, match="model.layers.1.mlp.gate_proj"):
        wnb.capture(tiny_llama, ["model.layers.1.mlp.gate_prj"], tiny_windows)
    with pytest.raises(WnbError, match="not a linear layer"):
        wnb.capture(tiny_llama, ["model.layers.1.mlp"], tiny_windows)


def test_empty_windows_and_bad_arguments(tiny_llama):
    name = wnb.ffn_layers(tiny_llama)[0]
    with pytest.raises(WnbError, match="non-empty"):
        wnb.capture(tiny_llama, [name], torch.zeros(0, 16, dtype=torch.long))
    with pytest.raises(WnbError, match="integer"):
        wnb.capture(tiny_llama, [name], torch.zeros(2, 4))
    with pytest.raises(WnbError, match="no layers"):
        wnb.capture(tiny_llama, [], torch.zeros(2, 4, dtype=torch.long))


def test_oversize_request_is_refused_with_estimate(tiny_llama, tiny_windows):
    layers = wnb.ffn_layers(tiny_llama)
    need = wnb.estimate_bytes(tiny_llama, layers, tiny_windows.numel())
    # independent count: each layer stores N x (d_in + d_out) float32 values
    n = tiny_windows.numel()
    assert need == sum(n * (m.in_features + m.out_features) * 4 for m in
                       (tiny_llama.model.get_submodule(x) for x in layers))
    with pytest.raises(WnbError, match="needs about .* GiB"):
        wnb.capture(tiny_llama, layers, tiny_windows, max_bytes=need - 1)
    acts = wnb.capture(tiny_llama, layers, tiny_windows, max_bytes=need, progress=False)
    assert len(acts) == len(layers)


def test_capture_on_batch_sees_the_same_rows(tiny_llama, tiny_windows):
    layers = wnb.ffn_layers(tiny_llama)[:2]
    kept = wnb.capture(tiny_llama, layers, tiny_windows, batch_size=4, max_tokens=70, progress=False)
    seen = {n: [] for n in layers}

    def on_batch(batch):
        for name, acts in batch.items():
            seen[name].append(acts.outputs.clone())

    # max_bytes=1 would refuse a stored capture: with on_batch nothing is stored
    out = wnb.capture(tiny_llama, layers, tiny_windows, batch_size=4, max_tokens=70, inputs=False,
                      max_bytes=1, progress=False, on_batch=on_batch)
    assert out == {}
    for name in layers:
        assert len(seen[name]) == 2
        torch.testing.assert_close(torch.cat(seen[name]), kept[name].outputs)
