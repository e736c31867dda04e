"""``wnb negative`` (the follow-up's sign ablation) on the bundled model with tiny windows: files and
manifest, values equal to the Python API's for the same arguments, bad arguments refused with exit 2
before the model loads."""

import pytest
from helpers import run_cli

import wnb
import wnb.cli
import wnb.cli.negative
import wnb.experiments
import wnb.model
from wnb import cli

LAYERS = [f"model.layers.{i}.mlp.gate_proj" for i in (0, 1, 2)]
SMALL = ["--seq-len", "64", "--windows", "4", "--eval-windows", "2", "-q"]


run = run_cli


def test_listed_in_help(capsys):
    assert "negative" in cli.COMMANDS and cli.COMMANDS["negative"].run is wnb.cli.negative.run
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "negative" in capsys.readouterr().out




@pytest.mark.parametrize("argv, message", [
    (["--side", "up"], "invalid choice: 'up'"),
    (["--fraction", "0.2"], "argument --fraction: must be a number in (0, 0.1)"),
    (["--fraction", "0"], "argument --fraction: must be a number in"),
    (["--control-seeds", "0"], "argument --control-seeds: must be a whole number of at least 1"),
    (["--pairs-per-phenomenon", "0"], "argument --pairs-per-phenomenon: must be a whole number of at least 1"),
    (["--tolerance", "1.5"], "argument --tolerance: must be a number in (0, 1)"),
    (["--controls", "shuffled"], "invalid choice: 'shuffled'"),
    (["--minimal-pairs", "nosuchpairs"], "unknown minimal pairs 'nosuchpairs'"),
    (["--eval-windows", "0"], "--eval-windows must be at least 1"),
])
def test_bad_arguments_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(wnb.model.loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    assert run("negative", *argv, "-o", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_empty_pair_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(wnb.model.loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    empty = tmp_path / "pairs.jsonl"
    empty.write_text("\n")
    assert run("negative", "--minimal-pairs", empty, "-o", tmp_path / "out") == 2
    assert "holds no minimal pairs" in capsys.readouterr().err


def test_blimp_offline_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(wnb.model.loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(wnb.experiments.minimal_pairs, "network_available", lambda *a, **k: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert run("negative", "--minimal-pairs", "blimp", "-o", tmp_path / "out") == 2
    assert "BLiMP" in capsys.readouterr().err
