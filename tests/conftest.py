"""Shared fixtures (tiny random models of three families, no download; the bundled model; an isolated
cache), and the markers that follow the folders: tests/integration and the notebooks are
``integration``, tests/browser ``browser``, tests/gpu ``gpu``; the browser, the notebooks and the paper
script are also ``slow``. Shared helpers are a module of their own: ``from helpers import ...``."""
from __future__ import annotations

import os

import pytest
import torch
from helpers import VOCAB, tiny_model

import wnb
import wnb.model.bundled


@pytest.fixture(scope="session")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return tiny_model(LlamaConfig, LlamaForCausalLM, vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return tiny_model(GPTNeoXConfig, GPTNeoXForCausalLM, vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return tiny_model(GPT2Config, GPT2LMHeadModel, vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=128,
                 bos_token_id=0, eos_token_id=0)


@pytest.fixture(params=["tiny_llama", "tiny_neox", "tiny_gpt2"])
def tiny(request):
    """Each tiny model family in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def tiny_windows():
    return torch.randint(0, VOCAB, (6, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def bundled():
    """The bundled SmolLM2-135M-Instruct (float32, CPU)."""
    return wnb.load_model(device="cpu")


@pytest.fixture(scope="session")
def bundled_windows(bundled):
    """Disjoint calibration and held-out windows of the bundled corpus: 16 × 128 tokens each."""
    return wnb.token_windows(bundled, wnb.load_corpus(), seq_len=128, n_calib=16, n_eval=16, seed=0)


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(int(os.environ.get("WNB_TEST_THREADS", os.cpu_count() or 1)))


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty on-disk cache that still finds the bundled model's converted weights."""
    real = wnb.model.bundled.bundled_cache()
    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    (root / "models" / real.name).symlink_to(real)
    monkeypatch.setenv("WNB_CACHE", str(root))
    return root


_FOLDER_MARKS = {"integration": ("integration",), "browser": ("browser", "integration", "slow"), "gpu": ("gpu",)}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.path
        parts = path.parts
        marks = []
        if "tests" in parts:
            folder = parts[parts.index("tests") + 1] if len(parts) > parts.index("tests") + 1 else ""
            marks += _FOLDER_MARKS.get(folder, ())
        if path.suffix == ".ipynb":
            marks += ("integration", "slow")
        if path.name == "test_paper_script.py":
            marks.append("slow")
        for mark in dict.fromkeys(marks):
            item.add_marker(getattr(pytest.mark, mark))
