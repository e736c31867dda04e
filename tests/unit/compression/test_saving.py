"""save_pruned / save_expanded / load_expanded: checkpoints that reload with transformers alone and give the
pruned logits and zeros, compressed-tensors configs the library reads back, expansions restored to identical
logits, and crafted files (a pickle, bad safetensors, a JSON naming other layers) refused without running code."""
from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from helpers import tiny_word_llama
from helpers.saving import (
    logits_of,
    no_grad,  # noqa: F401 (fixtures)
)

import wnb
import wnb.model
from wnb.compression import checkpoint, expansion_io
from wnb.core import files
from wnb.model.architectures import layer_weight


def _windows(vocab: int, seed: int = 1, n: int = 6, length: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))




# ---------------------------------------------------------------- pruned checkpoints

@pytest.mark.parametrize("sparsity", ["2:4", 0.5])
def test_hf_checkpoint_reloads_with_transformers_alone(tmp_path, sparsity):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = tiny_word_llama()
    vocab = lm.model.config.vocab_size
    ids = _windows(vocab, seed=2, n=2, length=12)
    with wnb.pruned(lm, method="sparsegpt", sparsity=sparsity, calib=_windows(vocab), progress=False) as report:
        expected = logits_of(lm, ids)
        weights = {n: layer_weight(lm, n).detach().clone() for n in report}
        path = wnb.save_pruned(lm, tmp_path / "ckpt", format="hf")
    assert path == tmp_path / "ckpt"
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert torch.equal(model(ids).logits, expected)
    for name, weight in weights.items():
        loaded = model.get_submodule(name).weight
        assert torch.equal(loaded, weight)
        assert torch.equal(loaded == 0, weight == 0) and (loaded == 0).float().mean() == pytest.approx(0.5)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer("the cat").input_ids == lm.tokenizer("the cat").input_ids
    manifest = json.loads((path / checkpoint.PRUNED_MANIFEST).read_text())
    assert manifest["sparsity_structure"] == ("2:4" if sparsity == "2:4" else "unstructured")
    assert set(manifest["layers"]) == set(report)
    assert not torch.equal(logits_of(lm, ids), expected)  # the live model is dense again; the checkpoint is not


def test_hf_checkpoint_of_each_family(tiny, tmp_path):
    """Llama, GPT-NeoX and GPT-2 (Conv1D layers, LM head tied to the embedding), without a tokenizer."""
    from transformers import AutoModelForCausalLM

    ids = _windows(tiny.model.config.vocab_size, seed=4, n=2, length=10)
    with wnb.pruned(tiny, method="magnitude", sparsity="2:4", progress=False):
        expected = logits_of(tiny, ids)
        path = wnb.save_pruned(tiny, tmp_path / "ckpt", format="compressed-tensors")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert torch.equal(model(ids).logits, expected)
    raw = json.loads((path / "config.json").read_text())["quantization_config"]["sparsity_config"]
    assert raw["sparsity_structure"] == "2:4" and raw["targets"] == wnb.ffn_layers(tiny)
    if getattr(tiny.model.config, "tie_word_embeddings", False):
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("sparsity,structure", [("2:4", "2:4"), (0.5, "unstructured")])
def test_compressed_tensors_config_names_the_structure(tmp_path, sparsity, structure):
    from compressed_tensors.config import (
        DenseSparsityConfig,
        SparsityCompressionConfig,
        SparsityStructure,
    )
    from transformers import AutoModelForCausalLM

    lm = tiny_word_llama()
    vocab = lm.model.config.vocab_size
    ids = _windows(vocab, seed=2, n=2, length=12)
    with wnb.pruned(lm, method="wanda", sparsity=sparsity, calib=_windows(vocab), progress=False) as report:
        expected = logits_of(lm, ids)
        path = wnb.save_pruned(lm, tmp_path / "ct", format="compressed-tensors", report=report)
        detected = wnb.save_pruned(lm, tmp_path / "ct-detected", format="compressed-tensors")  # no report
    block = json.loads((path / "config.json").read_text())["quantization_config"]
    assert block["quant_method"] == "compressed-tensors"
    raw = block["sparsity_config"]
    config = SparsityCompressionConfig.load_from_registry(raw["format"], **raw)
    assert isinstance(config, DenseSparsityConfig)
    assert SparsityStructure(config.sparsity_structure) == SparsityStructure(structure)
    assert config.targets == list(report)
    total = sum(p.numel() for p in lm.model.parameters())
    pruned = sum(layer_weight(lm, n).numel() for n in report) * 0.5
    assert config.global_sparsity == pytest.approx(pruned / total)
    assert json.loads((detected / "config.json").read_text())["quantization_config"]["sparsity_config"] == raw
    model = AutoModelForCausalLM.from_pretrained(path).eval()  # transformers reads the config too
    assert torch.equal(model(ids).logits, expected)


def test_neuron_subset_2_4_is_not_called_2_4(tmp_path):
    lm = tiny_word_llama()
    layer = wnb.ffn_layers(lm)[0]
    with wnb.pruned(lm, method="magnitude", sparsity="2:4", layers=[layer], neurons={layer: [0, 1, 2]},
                    progress=False) as report:
        path = wnb.save_pruned(lm, tmp_path / "ct", format="compressed-tensors", report=report)
    raw = json.loads((path / "config.json").read_text())["quantization_config"]["sparsity_config"]
    assert raw["sparsity_structure"] == "unstructured" and raw["targets"] == [layer]


@pytest.mark.parametrize("method,bits,group_size", [("sparsegpt", 4, None), ("sparsegpt", 3, 16), ("wanda", 8, None),
                                                     ("magnitude", 4, 8)])
def test_compressed_tensors_quantized_weights_read_back(tmp_path, method, bits, group_size):
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    lm = tiny_word_llama()
    vocab = lm.model.config.vocab_size
    with wnb.pruned(lm, method=method, sparsity="2:4", calib=_windows(vocab), bits=bits, group_size=group_size,
                    progress=False) as report:
        weights = {n: layer_weight(lm, n).detach().clone() for n in report}
        path = wnb.save_pruned(lm, tmp_path / "q", format="compressed-tensors", report=report)  # bits from it
        with pytest.raises(wnb.WnbError, match="grid"):  # the weights are not on a 2-bit grid
            wnb.save_pruned(lm, tmp_path / "q2", format="compressed-tensors", bits=2)
        assert not (tmp_path / "q2").exists()
        hf = wnb.save_pruned(lm, tmp_path / "hf", format="hf", report=report)  # the quantized values as they are
    block = json.loads((path / "config.json").read_text())["quantization_config"]
    assert block["sparsity_config"]["sparsity_structure"] == "2:4"
    config = QuantizationConfig.model_validate({k: v for k, v in block.items()
                                                if k not in ("sparsity_config", "version")})
    scheme = config.config_groups["group_0"]
    assert scheme.weights.num_bits == bits and not scheme.weights.symmetric
    assert scheme.weights.strategy == ("channel" if group_size is None else "group")
    assert scheme.weights.group_size == group_size and sorted(scheme.targets) == sorted(report)
    stored = load_file(path / "model.safetensors")
    compressor = BaseCompressor.get_value_from_registry(config.format)
    for name, weight in weights.items():
        assert f"{name}.weight" not in stored and stored[f"{name}.weight_packed"].dtype == torch.int32
        local = {k[len(name) + 1:]: v for k, v in stored.items() if k.startswith(name + ".")}
        restored = compressor.decompress(local, scheme)["weight"]
        assert torch.equal(restored == 0, weight == 0)
        torch.testing.assert_close(restored, weight, rtol=1e-6, atol=1e-6 * weight.abs().max().item())
    hf_stored = load_file(hf / "model.safetensors")
    assert all(torch.equal(hf_stored[f"{n}.weight"], w) for n, w in weights.items())


def test_recover_grid_when_values_skip_levels():
    step = 0.037
    row = torch.tensor([0.0, 2, 5, 2, 0, -2, 5, 0]) * step  # the smallest gap (2 levels) is not the step
    scale, zero = checkpoint.recover_grid(row[None], bits=3)
    k = torch.round(row / scale[0, 0])
    torch.testing.assert_close(k * scale[0, 0], row)
    assert 0 <= zero.item() and k.max() + zero.item() <= 7
    with pytest.raises(wnb.WnbError, match="2-bit grid"):
        checkpoint.recover_grid(row[None], bits=2)  # 9 levels do not fit in 4


def test_save_pruned_refusals(tmp_path, tiny_llama, tiny_windows):
    lm = tiny_word_llama()
    with pytest.raises(wnb.WnbError, match="unknown format"):
        wnb.save_pruned(lm, tmp_path / "x", format="gguf")
    with pytest.raises(wnb.WnbError, match="compressed-tensors"):
        wnb.save_pruned(lm, tmp_path / "x", format="hf", bits=4)
    with pytest.raises(wnb.WnbError, match="no pruned layers"):
        wnb.save_pruned(lm, tmp_path / "x", format="compressed-tensors")
    with pytest.raises(wnb.WnbError, match="group_size only applies"):
        wnb.save_pruned(lm, tmp_path / "x", format="compressed-tensors", group_size=16)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(wnb.WnbError, match="not empty"):
        wnb.save_pruned(lm, busy)
    with pytest.raises(wnb.WnbError, match="so wnb did not write it"):
        wnb.save_pruned(lm, busy, overwrite=True)
    assert (busy / "notes.txt").read_text() == "mine"
    with wnb.pruned(lm, method="magnitude", sparsity=0.5, progress=False) as report:
        first = wnb.save_pruned(lm, tmp_path / "again")
        assert wnb.save_pruned(lm, first, overwrite=True) == first  # an earlier wnb save may be replaced
        (first / "notes.txt").write_text("mine")  # ... but not a user's file put beside it
        with pytest.raises(wnb.WnbError, match=r"files wnb did not write \(notes.txt\)"):
            wnb.save_pruned(lm, first, overwrite=True)
        assert (first / "notes.txt").read_text() == "mine" and (first / "wnb-saved.json").is_file()
    with pytest.raises(wnb.WnbError, match="no longer holds the pruned weights"):
        wnb.save_pruned(lm, tmp_path / "late", format="compressed-tensors", report=report)
    with pytest.raises(wnb.WnbError, match="does not have"):
        wnb.save_pruned(lm, tmp_path / "late", report={"model.layers.9.mlp.up_proj": object()})
    with wnb.expanded(tiny_llama, n_experts=2, calib=tiny_windows, pca_factor=4, progress=False):
        with pytest.raises(wnb.WnbError, match="save_expanded"):
            wnb.save_pruned(tiny_llama, tmp_path / "exp")
    assert not (tmp_path / "late").exists() and not (tmp_path / "exp").exists()


# ---------------------------------------------------------------- Sparse Expansion

def _expand_and_save(lm, windows, folder, **kw):
    ids = _windows(lm.model.config.vocab_size, seed=3, n=2, length=12)
    dense = logits_of(lm, ids)
    with wnb.expanded(lm, n_experts=2, calib=windows, pca_factor=kw.pop("pca_factor", 4), progress=False,
                      **kw) as expansion:
        expected = logits_of(lm, ids)
        report = expansion.report()
        wnb.save_expanded(lm, folder, expansion, settings={"n_experts": 2, "sparsity": "50%", "seed": 0})
    return ids, dense, expected, report


@pytest.mark.parametrize("pca_factor", [4, None])
def test_load_expanded_gives_identical_logits(tiny, tiny_windows, tmp_path, pca_factor):
    ids, dense, expected, report = _expand_and_save(tiny, tiny_windows, tmp_path / "exp", pca_factor=pca_factor)
    assert torch.equal(logits_of(tiny, ids), dense)
    with wnb.load_expanded(tiny, tmp_path / "exp") as expansion:
        assert torch.equal(logits_of(tiny, ids), expected)
        assert isinstance(expansion, wnb.Expansion)
        assert expansion.report().equals(report)
        routers = {id(layer.router) for layer in expansion.layers.values()}
        assert len(routers) == len(json.loads((tmp_path / "exp" / expansion_io.EXPANSION_MANIFEST).read_text())["routers"])
        if "gate_proj" in next(iter(expansion.layers)):  # Llama: gate and up share one router, as built
            assert len(routers) == 2 * len(wnb.decoder_blocks(tiny))
        with pytest.raises(wnb.WnbError, match="already in place"):
            with wnb.load_expanded(tiny, tmp_path / "exp"):
                pass
    assert torch.equal(logits_of(tiny, ids), dense)
    manifest = json.loads((tmp_path / "exp" / expansion_io.EXPANSION_MANIFEST).read_text())
    assert manifest["settings"] == {"n_experts": 2, "sparsity": "50%", "seed": 0}
    assert {p.name for p in (tmp_path / "exp").iterdir()} == {expansion_io.EXPANSION_MANIFEST, expansion_io.ROUTERS_FILE,
                                                                *(e["file"] for e in manifest["layers"].values())}


def test_load_expanded_keeps_quantized_experts(tiny_llama, tiny_windows, tmp_path):
    ids, dense, expected, _ = _expand_and_save(tiny_llama, tiny_windows, tmp_path / "exp", bits=4, group_size=16)
    manifest = json.loads((tmp_path / "exp" / expansion_io.EXPANSION_MANIFEST).read_text())
    assert (manifest["bits"], manifest["group_size"]) == (4, 16)
    with wnb.load_expanded(tiny_llama, tmp_path / "exp") as expansion:
        assert torch.equal(logits_of(tiny_llama, ids), expected)
        assert (expansion.bits, expansion.group_size) == (4, 16)


def test_load_expanded_restores_dense_after_an_error(tiny_llama, tiny_windows, tmp_path):
    ids, dense, expected, _ = _expand_and_save(tiny_llama, tiny_windows, tmp_path / "exp")
    with pytest.raises(RuntimeError, match="inside"):
        with wnb.load_expanded(tiny_llama, tmp_path / "exp"):
            assert torch.equal(logits_of(tiny_llama, ids), expected)
            raise RuntimeError("inside")
    assert torch.equal(logits_of(tiny_llama, ids), dense)


@pytest.fixture(scope="module")
def saved(tiny_llama, tmp_path_factory):
    """A Sparse Expansion of the tiny Llama saved once; each test below crafts its own copy."""
    folder = tmp_path_factory.mktemp("saved") / "exp"
    with torch.no_grad():
        ids, dense, expected, _ = _expand_and_save(tiny_llama, _windows(128), folder)
    return folder, ids, dense


def _copy(saved, tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "crafted"
    shutil.copytree(saved[0], folder)
    return folder, json.loads((folder / expansion_io.EXPANSION_MANIFEST).read_text())


def _rewrite(folder: Path, manifest: dict, file: str | None = None) -> None:
    if file is not None:
        manifest["files"][file] = files.file_sha256(folder / file)
    (folder / expansion_io.EXPANSION_MANIFEST).write_text(json.dumps(manifest))


class _Boom:
    """Unpickling this creates a file: proof that a loader ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _refused(lm, folder, saved, match):
    with pytest.raises(wnb.WnbError, match=match):
        with wnb.load_expanded(lm, folder):
            pass
    assert torch.equal(logits_of(lm, saved[1]), saved[2])  # the model was not touched


def test_a_pickle_renamed_to_safetensors_cannot_run(tiny_llama, saved, tmp_path):
    folder, manifest = _copy(saved, tmp_path)
    marker = tmp_path / "ran"
    file = manifest["layers"]["model.layers.0.mlp.up_proj"]["file"]
    (folder / file).write_bytes(pickle.dumps({"experts": _Boom(marker)}))
    _refused(tiny_llama, folder, saved, "checksum")
    _rewrite(folder, manifest, file)  # even with a matching checksum it is not read as a pickle
    _refused(tiny_llama, folder, saved, "not a readable safetensors")
    (folder / expansion_io.ROUTERS_FILE).write_bytes(pickle.dumps(_Boom(marker)))
    _rewrite(folder, manifest, expansion_io.ROUTERS_FILE)
    _refused(tiny_llama, folder, saved, "not a readable safetensors")
    assert not marker.exists()


def test_safetensors_with_bad_metadata(tiny_llama, saved, tmp_path):
    from safetensors.torch import save_file

    folder, manifest = _copy(saved, tmp_path)
    file = manifest["layers"]["model.layers.1.mlp.gate_proj"]["file"]
    header = b'{"experts": {"dtype": "F32", "shape": [2, 64, 32], "data_offsets": [0, 999999999]}}'
    (folder / file).write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)  # offsets past the end
    _rewrite(folder, manifest, file)
    _refused(tiny_llama, folder, saved, "not a readable safetensors")
    (folder / file).write_bytes(struct.pack("<Q", 12) + b"{not json!!}")
    _rewrite(folder, manifest, file)
    _refused(tiny_llama, folder, saved, "not a readable safetensors")
    save_file({"experts": torch.zeros(3, 64, 32)}, str(folder / file))  # readable, wrong shape
    _rewrite(folder, manifest, file)
    _refused(tiny_llama, folder, saved, r"shape \[3, 64, 32\] but the model needs \[2, 64, 32\]")
    save_file({"experts": torch.zeros(2, 64, 32, dtype=torch.int32)}, str(folder / file))
    _rewrite(folder, manifest, file)
    _refused(tiny_llama, folder, saved, "floating-point")
    save_file({"experts": torch.full((2, 64, 32), float("nan"))}, str(folder / file))
    _rewrite(folder, manifest, file)
    _refused(tiny_llama, folder, saved, "NaN")


def test_a_manifest_naming_other_layers_or_types(tiny_llama, saved, tmp_path):
    folder, manifest = _copy(saved, tmp_path)
    original = json.dumps(manifest)

    def craft(change, match):
        crafted = json.loads(original)
        change(crafted)
        _rewrite(folder, crafted)
        _refused(tiny_llama, folder, saved, match)

    def rename(m):
        m["layers"]["model.layers.7.mlp.gate_proj"] = m["layers"].pop("model.layers.0.mlp.gate_proj")
    craft(rename, "not a linear layer")
    craft(lambda m: m["layers"].update({"model.embed_tokens": m["layers"]["model.layers.0.mlp.up_proj"]}),
          "not a linear layer")
    craft(lambda m: m["layers"]["model.layers.0.mlp.up_proj"].update(n_experts="2"), "whole number")
    craft(lambda m: m["layers"]["model.layers.0.mlp.up_proj"].update(n_experts=True), "whole number")
    craft(lambda m: m["layers"]["model.layers.0.mlp.up_proj"].update(in_features=33), "another model")
    craft(lambda m: m["layers"]["model.layers.0.mlp.up_proj"].update(router=99), "names router 99")
    craft(lambda m: m["layers"]["model.layers.0.mlp.up_proj"].update(tokens=[1]), "list of 2 numbers")
    craft(lambda m: m["layers"]["model.layers.0.mlp.up_proj"].update(file="../../etc/passwd"), "only")
    craft(lambda m: m["routers"][0].update(dim=5), r"shape")
    craft(lambda m: m.update(format="something-else"), "not a wnb expansion manifest")
    craft(lambda m: m.update(layers=[]), "must be an object")
    craft(lambda m: m.update(layers={}), "lists no layers")
    craft(lambda m: m["files"].update({expansion_io.ROUTERS_FILE: "0" * 64}), "checksum")
    (folder / expansion_io.EXPANSION_MANIFEST).write_text(original.replace('"percdamp": 0.01', '"percdamp": NaN'))
    _refused(tiny_llama, folder, saved, "not valid JSON")
    (folder / expansion_io.EXPANSION_MANIFEST).write_bytes(pickle.dumps({"layers": {}}))
    _refused(tiny_llama, folder, saved, "not valid JSON")
    _refused(tiny_llama, tmp_path / "nowhere", saved, "not a saved expansion")


def test_a_deeply_nested_manifest_is_refused_not_a_recursion_error(tiny_llama, saved, tmp_path):
    """json.loads raised RecursionError on a manifest nested 100,000 deep; load_expanded answers WnbError, and
    overwrite=True treats such a manifest as unreadable (it lists nothing, so nothing beside it is replaced)."""
    folder, _ = _copy(saved, tmp_path)
    nested = '{"format": "wnb-expansion-1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (folder / expansion_io.EXPANSION_MANIFEST).write_text(nested)
    _refused(tiny_llama, folder, saved, "nested too deeply")
    with wnb.expanded(tiny_llama, n_experts=2, calib=_windows(128), pca_factor=4, progress=False) as expansion:
        with pytest.raises(wnb.WnbError, match="so wnb did not write it"):
            wnb.save_expanded(tiny_llama, folder, expansion, overwrite=True)
    assert (folder / expansion_io.EXPANSION_MANIFEST).read_text() == nested


def test_load_expanded_refuses_another_model(saved, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    other = wnb.wrap_model(LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128)).eval())
    with pytest.raises(wnb.WnbError, match="differ from those the expansion was built on"):
        with wnb.load_expanded(other, saved[0]):
            pass
    with wnb.load_expanded(other, saved[0], check_model=False):  # shapes fit: allowed when asked for
        pass
    other.model.to(torch.float64)
    with pytest.raises(wnb.WnbError, match="saved from a float32 model"):
        with wnb.load_expanded(other, saved[0]):
            pass


def test_save_expanded_refusals(tiny_llama, tiny_windows, tmp_path):
    with pytest.raises(wnb.WnbError, match="no Sparse Expansion"):
        wnb.save_expanded(tiny_llama, tmp_path / "a")
    with wnb.expanded(tiny_llama, n_experts=2, calib=tiny_windows, pca_factor=4, progress=False) as expansion:
        with pytest.raises(wnb.WnbError, match="JSON-safe"):
            wnb.save_expanded(tiny_llama, tmp_path / "a", expansion, settings={"calib": tiny_windows})
        with pytest.raises(wnb.WnbError, match="JSON-safe"):
            wnb.save_expanded(tiny_llama, tmp_path / "a", expansion, settings={"x": float("nan")})
        wnb.save_expanded(tiny_llama, tmp_path / "b")  # every routed layer, without the Expansion object
    with pytest.raises(wnb.WnbError, match="inside the `with wnb.expanded"):
        wnb.save_expanded(tiny_llama, tmp_path / "a", expansion)
    assert not (tmp_path / "a").exists()
    manifest = json.loads((tmp_path / "b" / expansion_io.EXPANSION_MANIFEST).read_text())
    assert len(manifest["layers"]) == len(wnb.ffn_layers(tiny_llama)) and manifest["percdamp"] is None


# ---------------------------------------------------------------- the bundled model

