"""``wnb negative`` (the follow-up's sign ablation) on the bundled model with tiny windows: files and
manifest, values equal to the Python API's for the same arguments, bad arguments refused with exit 2
before the model loads."""

import json
import shlex

import pytest
from helpers import ROOT, run_cli

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
    (["--pool", "top"], "invalid choice: 'top'"),
    (["--first-token", "theirs"], "invalid choice: 'theirs'"),
    (["--pair-score", "max"], "invalid choice: 'max'"),
    (["--skip-first", "-1"], "argument --skip-first: must be a whole number of at least 0"),
    (["--minimal-pairs", "tse", "none"], "--minimal-pairs none stands alone"),
    (["--minimal-pairs", "tse", "tse"], "named twice"),
    (["--eval-split", "validation"], "the validation split exists for wikitext2 only"),
    (["--eval-corpus", "bundled"], "the held-out text would be the calibration text"),
    (["--corpus", "wikitext2", "--eval-split", "train"], "the held-out text would be the calibration text"),
    (["--eval-split", "dev"], "invalid choice: 'dev'"),
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


def readme_command(start: str) -> list[str]:
    """The arguments of the README's command line that starts with ``start`` (continuation lines joined),
    without the program, the sub-command and the output folder."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.strip().startswith(start))
    argv = shlex.split(line.split("#")[0])[2:]
    out = argv.index("-o")
    return argv[:out] + argv[out + 2:]


# The README's command for the follow-up's setting; this machine has no GPU, so its device is the CPU.
PAPER = [("cpu" if a == "cuda" else a) for a in readme_command("wnb negative --model EleutherAI/pythia-1.4b")]


@pytest.fixture
def offline(monkeypatch):
    """No network (whatever this machine has), no cached copies asked for, and no model may load."""
    import wnb.data.corpora

    for where in (wnb.data.corpora, wnb.experiments.minimal_pairs):
        monkeypatch.setattr(where, "network_available", lambda *a, **k: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(wnb.model.loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(wnb.model.loading, "estimate_model_bytes", lambda *a, **k: pytest.fail("the hub was asked"))


def test_the_papers_setting_offline_gets_to_the_first_download(tmp_path, capsys, offline):
    """Every option of the paper's command is accepted; offline it stops at its first download (BLiMP, read while
    the arguments are checked) with the clear error, not before."""
    assert run("negative", *PAPER, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "BLiMP is downloaded through `datasets`" in err and "needs a network connection" in err
    assert "invalid" not in err and "usage" not in err


def test_the_papers_setting_without_blimp_gets_to_the_corpus_download(tmp_path, capsys, offline):
    """Without BLiMP the run starts and stops at WikiText-2's download, before the model is asked for."""
    assert {"--eval-split", "validation", "--seq-len", "2048", "blimp", "tse"} <= set(PAPER)
    argv = [a for a in PAPER if a != "blimp"]
    out = tmp_path / "out"
    assert run("negative", *argv, "-o", out) == 1
    err = capsys.readouterr().err
    assert "WikiText-2 (train) is downloaded through `datasets`" in err and "bundled corpus works offline" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and "WikiText-2" in manifest["error"]


def test_window_sizes_of_the_study():
    """Without --seq-len the study's windows are the longest the model's context allows within the budget; with
    a held-out text of its own every window of it is used unless --eval-windows says otherwise."""
    parse = lambda *argv: cli.build_parser().parse_args(["negative", *argv])  # noqa: E731
    assert wnb.cli.setup.window_sizes(parse(), context=8192) == (512, 16, 8)  # medium: 8,192 + 4,096 tokens
    assert wnb.cli.setup.window_sizes(parse("--budget", "large"), context=8192) == (2048, 16, 8)
    assert wnb.cli.setup.window_sizes(parse("--seq-len", "64"), context=8192) == (64, 32, 16)
    assert wnb.cli.setup.window_sizes(parse("--corpus", "wikitext2", "--eval-split", "validation"),
                                      context=8192) == (512, 16, None)
    assert wnb.cli.setup.window_sizes(parse("--eval-corpus", "wikitext2", "--eval-windows", "3"),
                                      context=8192) == (512, 16, 3)
    assert wnb.cli.setup.held_out_source(parse("--eval-corpus", "wikitext2")) == ("wikitext2", "validation")
    assert wnb.cli.setup.window_sizes(cli.build_parser().parse_args(["score"]), context=8192) == (256, 32, 16)
