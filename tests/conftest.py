"""Shared fixtures: tiny random models of three families (no download) and the bundled model."""
from __future__ import annotations

import os

import pytest
import torch

import wnb
import wnb.model.bundled

VOCAB = 128


def _tiny(config_cls, model_cls, **kwargs):
    torch.manual_seed(0)
    model = model_cls(config_cls(**kwargs)).eval()
    return wnb.wrap_model(model, name=model_cls.__name__)


@pytest.fixture(scope="session")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny(LlamaConfig, LlamaForCausalLM, vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return _tiny(GPTNeoXConfig, GPTNeoXForCausalLM, vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                 num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return _tiny(GPT2Config, GPT2LMHeadModel, vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=128,
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


def run_cli(*argv) -> int:
    """The ``wnb`` command's exit status; argparse's own refusals (SystemExit 2) count as one too."""
    from wnb import cli

    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code
