"""``wnb claims`` on the bundled model with tiny windows: files, manifest and page; the numbers equal the Python
runner's on the same windows; Ctrl-C leaves an incomplete manifest; the README's Pythia-1.4B command, offline,
gets as far as the download and stops there with a clear error."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import run_cli

import wnb
import wnb.experiments.claim_runner as claim_runner
from wnb.experiments.claim_runner import run_claims

SMALL = ["--seq-len", "64", "--windows", "4", "--eval-windows", "2", "--budget", "small", "-q"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("claims") / "run"
    assert run_cli("claims", *SMALL, "--only", "W2", "N1", "--no-cache", "-o", out) == 0
    return out


def test_files_manifest_and_page(run):
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["command"] == "claims"
    assert {"claims.csv", "claims.json", "claims.html"} <= set(manifest["files"])
    assert manifest["claims"]["ids"] == ["W2", "N1"] and manifest["claims_done"] == ["W2", "N1"]
    table = pd.read_csv(run / "claims.csv")
    assert table["id"].tolist() == ["W2", "N1"]
    assert set(table["verdict"]) <= {"holds", "reversed", "not observed", "inconclusive", "not run"}
    assert not table["comparable"].any()
    page = (run / "claims.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page and "http" not in page
    rows = json.loads((run / "claims.json").read_text())
    assert rows[0]["detail"][0]["label"] == "Spearman ρ"


def test_the_numbers_are_the_runners(run, bundled):
    calib, held = wnb.token_windows(bundled, wnb.load_corpus(), 64, 4, 2, 0)
    rows = run_claims(bundled, calib, held, only=["W2", "N1"], budget="small", progress=False, corpus="bundled")
    table = pd.read_csv(run / "claims.csv")
    for row, (_, written) in zip(rows, table.iterrows()):
        assert written["verdict"] == row["verdict"]
        assert written["value"] == pytest.approx(row["value"]) and written["low"] == pytest.approx(row["low"])


def test_ctrl_c_leaves_an_incomplete_manifest(tmp_path, monkeypatch):
    def interrupted(ctx, entry):
        raise KeyboardInterrupt

    monkeypatch.setitem(claim_runner.RUNS, "N1", interrupted)
    out = tmp_path / "out"
    assert run_cli("claims", *SMALL, "--only", "W2", "N1", "--no-cache", "-o", out) == 130
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and manifest["error"] == "interrupted"
    assert manifest["claims_done"] == ["W2"] and "claims.csv" not in manifest["files"]


def test_the_readme_pythia_command_reaches_the_download_offline(tmp_path, monkeypatch, capsys):
    """The README's command, offline: every check passes, then loading WikiText-2 (the first download) stops."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    loaded = []
    monkeypatch.setattr(wnb.model.loading, "load_model", lambda *a, **k: loaded.append(1))
    readme = (claim_runner.__file__.rsplit("/wnb/", 1)[0] + "/README.md")
    lines = open(readme).read().splitlines()
    start = next(i for i, text in enumerate(lines) if text.startswith("wnb claims --model "))
    command = lines[start]
    while command.endswith("\\"):
        start += 1
        command = command[:-1] + " " + lines[start]
    argv = command.split("#")[0].split()[1:]
    out = tmp_path / "pythia"
    argv[argv.index("-o") + 1] = str(out)
    assert run_cli(*argv) == 1
    err = capsys.readouterr().err
    assert "WikiText-2" in err and ("network" in err or "datasets" in err), err
    assert not loaded
    assert json.loads((out / "manifest.json").read_text())["status"] == "incomplete"
