"""The on-disk cache holds no code: crafted entries run nothing, tampered or misplaced entries are rebuilt,
every stored type comes back equal to what was stored, and the bundled model's copy is checked on load."""
import os
import pickle
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch

import wnb
from wnb.core import cache, codec, files

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
    torch.save({"x": Payload()}, folder / f"{k}{codec.SUFFIX}")  # a pickle under the new name
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




# ---------------------------------------------------------------- temporaries (issue 19, item 3)

def _dead_pid() -> int:
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def _aged(folder, seconds: float):
    """``folder`` (created) with its modification time ``seconds`` in the past."""
    folder.mkdir()
    (folder / "part").write_text("half written")
    past = time.time() - seconds
    for p in (folder / "part", folder):
        os.utime(p, (past, past))
    return folder


@pytest.mark.parametrize("name", [
    ".wnb-tmp.999999999999999999999.x.y",           # os.kill raised OverflowError
    ".wnb-tmp.HOST.999999999999999999999.x.y",
    ".wnb-tmp.0.x.y", ".wnb-tmp.HOST.0.x.y",        # kill(0, ...) would signal our own process group
    ".wnb-tmp.²³.x.y", ".wnb-tmp.HOST.-5.x.y", ".wnb-tmp.", ".wnb-tmp....", ".wnb-tmp.HOST",
    ".wnb-tmp.\udcff\udcfe.x.y",                    # not UTF-8 (os.fsdecode of b"\xff\xfe")
])
def test_remove_stale_temporaries_never_crashes_on_a_name(tmp_path, name):
    folder = tmp_path / (name.replace("HOST", files._host_tag()) if "HOST" in name else name)
    folder.mkdir()
    assert files.remove_stale_temporaries(tmp_path) == []
    assert folder.exists()


def test_a_temporary_of_another_host_is_kept_for_a_day(tmp_path):
    """Hosts sharing a cache cannot see each other's processes: a pid not running here says nothing about a
    writer on another host, whose temporary was deleted after 10 minutes (or at once when the pid was free here)."""
    dead = _dead_pid()
    other = "node7%2Ecluster%2Eexample%2Eorg"  # node7.cluster.example.org
    recent = _aged(tmp_path / f".wnb-tmp.{other}.{dead}.neurons.csv.abc123", 2 * 3600)
    old = _aged(tmp_path / f".wnb-tmp.{other}.{dead}.layers.csv.def456", 2 * 86_400)
    legacy_recent = _aged(tmp_path / f".wnb-tmp.{dead}.wd.safetensors.ghi789", 2 * 3600)  # an older wnb's naming
    legacy_old = _aged(tmp_path / f".wnb-tmp.{dead}.md.safetensors.jkl012", 2 * 86_400)
    assert sorted(files.remove_stale_temporaries(tmp_path)) == sorted([old, legacy_old])
    assert recent.exists() and legacy_recent.exists()


def test_the_host_name_keeps_temporaries_parseable(tmp_path, monkeypatch):
    """A host name with dots (a domain name) must not be taken for the pid."""
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-3.lab.example.org")
    with files.atomic_path(tmp_path / "result.csv") as target:
        parts = target.parent.name.split(".")
        assert parts[:2] == ["", "wnb-tmp"] and "." not in files._host_tag()
        assert parts[2] == files._host_tag() and parts[3] == str(os.getpid())
        target.write_text("x")
    gone = tmp_path / f".wnb-tmp.{files._host_tag()}.{_dead_pid()}.result.csv.abc123"  # this host's, writer gone
    gone.mkdir()
    assert files.remove_stale_temporaries(tmp_path) == [gone]


def test_a_live_writer_of_this_host_is_kept_however_long_it_takes(tmp_path, monkeypatch):
    """A process of this host still running since before its temporary was written is its writer: its
    temporary was deleted once 10 minutes old. A process started after the last write is a recycled pid."""
    import subprocess
    import sys
    import types

    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        host = files._host_tag()
        slow = tmp_path / f".wnb-tmp.{host}.{writer.pid}.model.abc123"
        slow.mkdir()
        (slow / "part").write_text("still writing")
        real = time.time
        monkeypatch.setattr(files, "time", types.SimpleNamespace(time=lambda: real() + 1200))  # 20 minutes on
        assert files.remove_stale_temporaries(tmp_path) == [] and slow.exists()
        monkeypatch.undo()
        recycled = _aged(tmp_path / f".wnb-tmp.{host}.{writer.pid}.other.def456", 300)  # written before it started
        assert files.remove_stale_temporaries(tmp_path) == [recycled]
        assert slow.exists()
    finally:
        writer.kill()
        writer.wait()


def _exchange_works(folder) -> bool:
    """Whether this system swaps two folders in one step (Linux renameat2 with RENAME_EXCHANGE), checked
    independently of wnb."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        return False
    a, b = folder / "swap-a", folder / "swap-b"
    a.mkdir()
    b.mkdir()
    ok = renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0
    shutil.rmtree(a)
    shutil.rmtree(b)
    return ok


def test_a_folder_is_replaced_without_a_moment_without_it(tmp_path, monkeypatch):
    """atomic_path deleted the old folder before renaming the new one in: a reader could find no folder."""
    if not _exchange_works(tmp_path):
        pytest.skip("this system cannot swap two folders in one step")
    path = tmp_path / "expansion"
    path.mkdir()
    (path / "old.txt").write_text("old")
    missing = []
    for module, name in ((os, "replace"), (os, "rename"), (shutil, "rmtree")):
        original = getattr(module, name)

        def spy(*args, _original=original, **kwargs):
            if not path.is_dir():
                missing.append(args[0])
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, name, spy)
    with files.atomic_path(path) as target:
        target.mkdir()
        (target / "new.txt").write_text("new")
    monkeypatch.undo()
    assert missing == []
    assert [p.name for p in path.iterdir()] == ["new.txt"] and os.listdir(tmp_path) == ["expansion"]


def test_a_failed_rename_keeps_the_old_folder(tmp_path, monkeypatch):
    """Where the folders cannot be swapped in one step the old one is renamed aside, not deleted, until the
    new one is in place; if that fails the old one is back."""
    monkeypatch.setattr(files, "_exchange", lambda a, b: False, raising=False)
    path = tmp_path / "model"
    path.mkdir()
    (path / "weights").write_text("old")
    original = os.replace

    def failing(src, dst, *args, **kwargs):
        if os.fspath(dst) == os.fspath(path) and files.TMP_PREFIX in os.fspath(src) and \
                "new" in os.listdir(src):
            raise OSError(28, "No space left on device")
        return original(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        with files.atomic_path(path) as target:
            target.mkdir()
            (target / "new").write_text("new")
    monkeypatch.undo()
    assert (path / "weights").read_text() == "old" and os.listdir(tmp_path) == ["model"]
    monkeypatch.setattr(files, "_exchange", lambda a, b: False, raising=False)
    with files.atomic_path(path) as target:  # the fallback replaces it when nothing fails
        target.write_text("now a file")
    assert path.read_text() == "now a file" and os.listdir(tmp_path) == ["model"]
