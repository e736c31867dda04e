"""The on-disk cache holds no code: crafted entries run nothing, tampered or misplaced entries are rebuilt,
every stored type comes back equal to what was stored, and the bundled model's copy is checked on load."""
import os
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import wnb
from wnb import cache

RAN = []


class Payload:
    """Unpickling this appends to RAN: the proof that a loader ran code from a file."""

    def __reduce__(self):
        return (RAN.append, ("code ran",))


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    RAN.clear()
    return tmp_path / "cache"


def _values():
    frame = pd.DataFrame({"neuron": np.arange(4), "wd": [0.5, np.nan, 0.25, 1.0], "token": ["a", "<b>", None, "&"],
                          "flag": [True, False, True, True], "top": [[1, 2], [3], [], [4, 5, 6]],
                          "small": np.arange(4, dtype=np.int32)})
    return {"tensor": torch.randn(5, 3), "bf16": torch.ones(2, dtype=torch.bfloat16), "empty": torch.zeros(0, 7),
            "windows": (torch.arange(12).view(3, 4), torch.arange(4)), "frame": frame,
            "indexed": frame.set_index("token"), "series": pd.Series([1.5, 2.5], index=["x", "y"], name="s"),
            "array": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3), "scalar": np.float64(0.125),
            "nested": {"names": ["model.layers.0.mlp.gate_proj"], 3: None, "nan": float("nan"), "inf": float("-inf")}}


def test_every_stored_type_comes_back_equal(fresh_cache):
    values = _values()
    values["view"] = values["tensor"][1:3]  # shares memory with another stored tensor
    k = cache.key(case="types")
    cache.cached("types", k, lambda: values)
    back = cache.cached("types", k, lambda: pytest.fail("a valid entry must be read, not recomputed"))
    for name in ("tensor", "bf16", "empty", "view"):
        assert back[name].dtype == values[name].dtype and torch.equal(back[name], values[name])
    assert all(torch.equal(a, b) for a, b in zip(back["windows"], values["windows"]))
    assert isinstance(back["windows"], tuple)
    pd.testing.assert_frame_equal(back["frame"], values["frame"])
    pd.testing.assert_frame_equal(back["indexed"], values["indexed"])
    pd.testing.assert_series_equal(back["series"], values["series"])
    np.testing.assert_array_equal(back["array"], values["array"])
    assert back["scalar"] == 0.125 and back["nested"]["names"] == values["nested"]["names"]
    assert back["nested"][3] is None and np.isnan(back["nested"]["nan"]) and back["nested"]["inf"] == float("-inf")


def test_a_crafted_pickle_at_a_real_key_runs_nothing(fresh_cache):
    k = cache.key(case="crafted")
    folder = fresh_cache / "windows"
    folder.mkdir(parents=True)
    crafted = pickle.dumps(Payload())
    (folder / f"{k}.pt").write_bytes(crafted)  # where entries used to be torch.load-ed
    torch.save({"x": Payload()}, folder / f"{k}{cache.SUFFIX}")  # a pickle under the new name
    assert cache.cached("windows", k, lambda: torch.arange(3)).tolist() == [0, 1, 2]
    assert RAN == []
    assert cache.cached("windows", k, lambda: pytest.fail("rebuilt entry not read")).tolist() == [0, 1, 2]
    assert RAN == []


def test_a_tampered_entry_is_rebuilt(fresh_cache):
    k = cache.key(case="tampered")
    cache.cached("t", k, lambda: torch.zeros(1000))
    path = cache.entry_path("t", k)
    raw = bytearray(path.read_bytes())
    raw[-8:] = torch.full((2,), float("nan")).numpy().tobytes()  # same size, other values
    path.write_bytes(bytes(raw))
    assert torch.equal(cache.cached("t", k, lambda: torch.ones(1000)), torch.ones(1000))


def test_an_entry_of_another_key_is_not_used(fresh_cache):
    seed0, seed1 = cache.key(model="m", seed=0), cache.key(model="m", seed=1)
    cache.cached("windows", seed1, lambda: torch.full((2,), 1))
    shutil.copy(cache.entry_path("windows", seed1), cache.entry_path("windows", seed0))  # misplaced copy
    assert cache.cached("windows", seed0, lambda: torch.full((2,), 0)).tolist() == [0, 0]
    # the same file name under another kind is not taken either
    (fresh_cache / "capture").mkdir()
    shutil.copy(cache.entry_path("windows", seed1), cache.entry_path("capture", seed1))
    assert cache.cached("capture", seed1, lambda: torch.full((2,), 7)).tolist() == [7, 7]


def test_what_cannot_be_stored_is_returned_with_a_warning(fresh_cache):
    k = cache.key(case="object")
    with pytest.warns(cache.CacheWarning, match="does not store"):
        value = cache.cached("odd", k, lambda: {"x": object()})
    assert set(value) == {"x"} and not cache.entry_path("odd", k).exists()


def test_an_unwritable_cache_folder_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(wnb.WnbError, match="WNB_CACHE"):
        wnb.cache_dir()


@pytest.mark.integration
def test_a_corrupted_model_copy_is_detected_and_rebuilt(tmp_path, monkeypatch, bundled):
    from wnb import models

    real = models._bundled_cache()
    copy = tmp_path / "cache" / "models" / real.name
    shutil.copytree(real, copy)
    weights = next(copy.glob("*.safetensors"))
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # same size, garbage in the middle of the tensors
        f.seek(size // 2)
        f.write(os.urandom(1 << 16))
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_verified", set())
    assert not models._copy_intact(copy)
    lm = wnb.load_model(device="cpu")
    for (name, p), q in zip(lm.model.named_parameters(), bundled.model.parameters()):
        assert torch.equal(p, q), name
    assert models._copy_intact(copy)
