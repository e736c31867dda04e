"""The on-disk cache holds no code: crafted entries run nothing, tampered or misplaced entries are rebuilt,
every stored type comes back equal to what was stored, and the bundled model's copy is checked on load."""
import os
import shutil

import pytest
import torch

import wnb

RAN = []


@pytest.mark.integration
def test_a_corrupted_model_copy_is_detected_and_rebuilt(tmp_path, monkeypatch, bundled):
    from wnb.model import bundled as copies

    real = copies.bundled_cache()
    copy = tmp_path / "cache" / "models" / real.name
    shutil.copytree(real, copy)
    weights = next(copy.glob("*.safetensors"))
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # same size, garbage in the middle of the tensors
        f.seek(size // 2)
        f.write(os.urandom(1 << 16))
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(copies, "_verified", set())
    assert not copies.copy_intact(copy)
    lm = wnb.load_model(device="cpu")
    for (name, p), q in zip(lm.model.named_parameters(), bundled.model.parameters()):
        assert torch.equal(p, q), name
    assert copies.copy_intact(copy)
