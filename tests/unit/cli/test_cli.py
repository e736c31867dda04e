"""The ``wnb`` command end to end on the bundled model with small budgets: files, values equal to the
Python API's for the same arguments, the shared cache, --help, and the error cases."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from helpers.cli import DOWN, GATE, SMALL, manifest, run, windows

import wnb
import wnb.app
import wnb.app.costs
import wnb.app.layers
import wnb.app.session
import wnb.cli
import wnb.compression
import wnb.experiments
import wnb.model
import wnb.model.bundled
import wnb.model.lm
import wnb.tracing
from wnb import cli
from wnb.errors import WnbError

# 4 calibration windows of 64 tokens, 1 held-out window: every command runs in seconds.









# ---------------------------------------------------------------- help

@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_is_complete(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"] if command is None else [command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: wnb")
    parser = cli.build_parser()
    if command is not None:
        parser = parser._subparsers._group_actions[0].choices[command]
        for action in parser._actions:
            assert action.help, f"{command} {action.option_strings} has no help"
            for flag in action.option_strings:
                assert flag in text
    else:
        assert all(c in text for c in cli.COMMANDS)


# ---------------------------------------------------------------- score







# ---------------------------------------------------------------- prune, expand, sweep









def test_prune_no_true_sequential_equals_the_api(tmp_path, isolated_cache):
    """--no-true-sequential calibrates down_proj on the dense block, as the API's true_sequential=False,
    and gives another model than the default (down_proj calibrated on the pruned gate_proj)."""
    out = tmp_path / "prune"
    assert run("prune", *SMALL, "--layers", GATE, DOWN, "--no-true-sequential", "-o", out) == 0
    assert manifest(out)["arguments"]["true_sequential"] is False
    lm, calib, held_out = windows()
    ppl = {}
    for order in (True, False):
        with wnb.pruned(lm, "sparsegpt", 0.5, calib=calib, layers=[GATE, DOWN], true_sequential=order,
                        progress=False):
            ppl[order] = wnb.perplexity(lm, held_out, progress=False)
    table = pd.read_csv(out / "perplexity.csv")
    assert table["perplexity"].iloc[1] == pytest.approx(ppl[False], rel=1e-9)
    assert ppl[True] != pytest.approx(ppl[False], rel=1e-6)






# ---------------------------------------------------------------- bad input

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_where_there_is_none(tmp_path, capsys):
    assert run("score", "--device", "cuda", "-o", tmp_path / "x") == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unsupported_dtype(tmp_path, capsys):
    assert run("score", "--dtype", "int8", "-o", tmp_path / "x") == 2
    assert "bfloat16" in capsys.readouterr().err
    with pytest.raises(WnbError, match="not supported"):
        wnb.load_model(dtype="float64")


@pytest.mark.parametrize("argv, message", [
    (["prune", "--remote", "local"], "--remote works with wnb score only"),
    (["prune", "--sparsity", "3:2"], "N:M"),
    (["sweep", "--methods", "lottery"], "lottery"),
    (["score", "--fraction", "0"], "--fraction"),
    (["expand", "--experts", "0"], "--experts"),
    (["score", "--bins", "15"], "--bins"),
    (["score", "--device", "tpu"], "unknown device"),
    (["prune", "--sparsity", "abc"], "neither a fraction"),
    (["prune", "--neurons", "loudest"], "--neurons"),
    (["score", "--seq-len", "0"], "--seq-len"),
])
def test_bad_arguments_refused_before_any_work(tmp_path, capsys, argv, message):
    assert run(*argv, "-o", tmp_path / "x") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, message", [
    (["score", "--seq-len", "1"], "argument --seq-len: must be a whole number of at least 2"),
    (["expand", "--pca-factor", "1"], "argument --pca-factor: must be a whole number of at least 2: the router's PCA"),
    (["expand", "--pca-factor", "1.5"], "argument --pca-factor: must be a whole number"),
    (["score", "--pairs", "0"], "argument --pairs: must be a whole number of at least 1"),
    (["prune", "--bits", "9"], "argument --bits: must be a whole number from 2 to 8"),
    (["prune", "--fraction", "nan"], "argument --fraction: must be a number in (0, 1]"),
    (["sweep", "--experts", "2", "0"], "argument --experts: must be a whole number of at least 1"),
    (["score", "--revision", "nope"], "revision must be None (got 'nope')"),
    (["expand", "--experts", "65", "--seq-len", "16", "--windows", "4"], "--experts 65 is more than the 64 calibration"),
    (["neuron", "--layer", GATE, "--neuron", "1", "--seq-len", "16", "--skip-first", "16"],
     "--skip-first must be less than the window length 16"),
])
def test_numbers_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, argv, message):
    """--seq-len 1, --pca-factor 1 (and the others) were accepted and failed only after loading the model."""
    monkeypatch.setattr(wnb.model.loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert run(*argv, "-o", tmp_path / "x") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()




def test_a_folder_entry_of_an_older_manifest_claims_nothing(tmp_path, capsys):
    out = tmp_path / "old"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "manifest.json").write_text(json.dumps({"wnb": "0.1.0", "files": {"model/": "the pruned model"}}))
    assert run("score", "-o", out, "--overwrite") == 2
    assert "model/config.json" in capsys.readouterr().err
    assert (out / "model" / "config.json").exists()


def test_a_deeply_nested_manifest_is_unreadable(tmp_path, capsys):
    out = tmp_path / "nested"
    out.mkdir()
    (out / "data.csv").write_text("keep")
    (out / "manifest.json").write_text('{"wnb": "0.1.0", "files": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert run("score", "-o", out, "--overwrite") == 2
    assert "holds no wnb manifest (manifest.json)" in capsys.readouterr().err
    assert (out / "data.csv").read_text() == "keep"


def test_existing_output_folder(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert run("score", "-o", foreign) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run("score", "-o", foreign, "--overwrite") == 2  # not written by wnb: never deleted
    assert "so wnb did not write it" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"




def test_a_hand_made_manifest_deletes_nothing(tmp_path, capsys):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    out = tmp_path / "fake"
    out.mkdir()
    (out / "data.csv").write_text("keep too")
    (out / "manifest.json").write_text(json.dumps({"wnb": "0.1.0", "files": {"../precious.txt": "x", "/etc/hosts": "y"}}))
    assert run("score", "-o", out, "--overwrite") == 2
    assert "data.csv" in capsys.readouterr().err
    assert outside.read_text() == "keep" and (out / "data.csv").read_text() == "keep too"


def test_output_through_a_link_or_into_a_file_is_refused(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert run("score", "-o", tmp_path / "link") == 2
    assert "symbolic link" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert run("score", "-o", tmp_path / "file") == 2
    assert "not a folder" in capsys.readouterr().err
    assert run("score", "-o", tmp_path / "file" / "sub") == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err
    assert (tmp_path / "file").read_text() == "x"


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    from wnb.core import files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    host = files._host_tag()
    stale = tmp_path / f".wnb-tmp.{host}.{pid}.neurons.csv.abc123"
    stale.mkdir()
    (stale / "neurons.csv").write_text("half")
    alive = tmp_path / f".wnb-tmp.{host}.{os.getppid()}.layers.csv.def456"  # a running process: its work is kept
    alive.mkdir()
    mine = tmp_path / ".neurons.csv.user"  # not wnb's naming
    mine.mkdir()
    assert files.remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and alive.exists() and mine.exists()










def test_the_summary_sets_first_token_artefacts_aside():
    """The summary names the most entangled neuron whose tails are not at the first token, and counts the
    artefacts above it (issue 23: the old summary named a neuron its own table flags as one)."""
    from wnb.cli.score import most_entangled

    neurons = pd.DataFrame({"layer": ["a", "a", "b", "b"], "neuron": [0, 1, 0, 1], "wd": [0.9, 0.2, 0.8, 0.5],
                            "sink": [True, False, True, False]})
    text = most_entangled(neurons)
    assert text.startswith("most entangled b neuron 1 (WD 0.500)") and "2 neuron(s) with a higher WD set aside" in text
    assert most_entangled(neurons.drop(columns="sink")) == "most entangled a neuron 0 (WD 0.900)"
    assert "no neuron left" in most_entangled(neurons.assign(sink=True))
