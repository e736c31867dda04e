"""The ``wnb`` command end to end on the bundled model with small budgets: files, values equal to the
Python API's for the same arguments, the shared cache, --help, and the error cases."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.cli import DOWN, GATE, SMALL, UP, manifest, run, windows

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

# 4 calibration windows of 64 tokens, 1 held-out window: every command runs in seconds.








# ---------------------------------------------------------------- help


@pytest.mark.integration
def test_score_files_and_values_equal_the_api(tmp_path, isolated_cache, capsys):
    out = tmp_path / "score"
    assert run("score", *SMALL, "--layers", GATE, DOWN, "--max-tokens", 200, "--detail", GATE, "--pairs", 300,
               "-o", out) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("wnb score: scored 2 layer(s)")
    info = manifest(out)
    assert info["status"] == "complete" and info["error"] is None and info["scoring"]["wd"] == "exact"
    for name in ("neurons.csv", "layers.csv", "wd_overview.png", "detail_neurons.csv", "detail_histograms.png",
                 "detail_wd_vs_md.png"):
        assert name in info["files"] and (out / name).stat().st_size > 0
    assert (out / "wd_overview.png").read_bytes()[:4] == b"\x89PNG"

    lm, calib, _ = windows()
    acts = wnb.capture(lm, [GATE, DOWN, UP], calib, max_tokens=200, progress=False)
    neurons = pd.read_csv(out / "neurons.csv")
    for name in (GATE, DOWN):
        rows = neurons[neurons["layer"] == name].sort_values("neuron")
        y = acts[name].outputs
        assert len(rows) == y.shape[1]
        torch.testing.assert_close(torch.tensor(rows["wd"].to_numpy()), wnb.wasserstein_to_gaussian(y))
        torch.testing.assert_close(torch.tensor(rows["mean"].to_numpy()), y.double().mean(0))
        torch.testing.assert_close(torch.tensor(rows["variance"].to_numpy()), y.double().var(0, correction=0))
        assert rows.loc[rows["rank"] == 1, "neuron"].item() == wnb.top_neurons(wnb.wasserstein_to_gaussian(y), k=1).item()
        z = (y.double() - y.double().mean(0)) / y.double().std(0, correction=0)
        tail = z.abs() > 2.5
        at_first = (torch.arange(y.shape[0]) % calib.shape[1] == 0)[:, None]
        share = ((tail & at_first).sum(0) / tail.sum(0)).double()  # by hand: tails at position 0 (NaN: no tail)
        np.testing.assert_allclose(rows["pos0_tail_share"].to_numpy(), share.numpy(), atol=1e-9)
    full = wnb.capture(lm, [GATE], calib, progress=False)[GATE]
    expected = wnb.neuron_table(full.outputs, full.inputs, wnb.layer_weight(lm, GATE), n_pairs=300, seed=0,
                                sign=True, seq_len=calib.shape[1])
    detail = pd.read_csv(out / "detail_neurons.csv")
    pd.testing.assert_frame_equal(detail.drop(columns="layer"), expected, check_exact=False, rtol=1e-9)
    layers = pd.read_csv(out / "layers.csv")
    assert layers["layer"].tolist() == [GATE, DOWN]


@pytest.mark.integration
def test_score_streaming_is_within_1e3_of_exact(tmp_path, isolated_cache):
    out = tmp_path / "stream"
    assert run("score", *SMALL, "--layers", GATE, "--max-tokens", 256, "--wd", "streaming", "--detail", "none",
               "-o", out) == 0
    assert manifest(out)["scoring"]["wd"] == "streaming"
    lm, calib, _ = windows()
    y = wnb.capture(lm, [GATE], calib, max_tokens=256, inputs=False, progress=False)[GATE].outputs
    rows = pd.read_csv(out / "neurons.csv").sort_values("neuron")
    assert (torch.tensor(rows["wd"].to_numpy()) - wnb.wasserstein_to_gaussian(y)).abs().max() < 1e-3
    torch.testing.assert_close(torch.tensor(rows["variance"].to_numpy()), y.double().var(0, correction=0), rtol=1e-5, atol=0)


@pytest.mark.integration
def test_score_lands_in_the_cache_the_app_reads(tmp_path, isolated_cache, monkeypatch):
    """A whole-model score with a budget preset is what the app's model overview shows, and the copy in
    <output>/cache is enough for another machine's app."""
    out = tmp_path / "overview"
    assert run("score", "--budget", "small", "--detail", "none", "-q", "-o", out) == 0
    scores = pd.read_csv(out / "neurons.csv")

    def no_compute(*a, **k):
        raise AssertionError("the app recomputed what the command had cached")

    monkeypatch.setattr(wnb.app.layers, "score_layers", no_compute)
    elsewhere = tmp_path / "other-machine"
    (elsewhere / "models").mkdir(parents=True)
    (elsewhere / "models" / wnb.model.bundled.bundled_cache().name).symlink_to(wnb.model.bundled.bundled_cache())
    for kind in (out / "cache").iterdir():
        for entry in kind.iterdir():
            (elsewhere / kind.name).mkdir(exist_ok=True)
            (elsewhere / kind.name / entry.name).write_bytes(entry.read_bytes())
    monkeypatch.setenv("WNB_CACHE", str(elsewhere))
    app_scores, table = wnb.app.session.Session(budget="small", device="cpu").overview(progress=False)
    assert len(app_scores) == 90 and len(table) == 90
    rows = scores[scores["layer"] == GATE].sort_values("neuron")
    torch.testing.assert_close(torch.tensor(rows["wd"].to_numpy()), app_scores[GATE])
    sinks = scores.groupby("layer")["sink"].sum()  # the command's first-token flags, counted per layer
    assert dict(zip(table["layer"], table["sinks"])) == {name: int(sinks[name]) for name in table["layer"]}


@pytest.mark.integration
def test_prune_equals_the_api(tmp_path, isolated_cache, capsys, monkeypatch):
    out = tmp_path / "prune"
    assert run("prune", *SMALL, "--method", "wanda", "--sparsity", "2:4", "--layers", GATE, UP,
               "--detail", GATE, "-o", out) == 0
    assert "→" in capsys.readouterr().out
    info = manifest(out)
    assert info["status"] == "complete"
    assert {"perplexity.csv", "layers.csv", "detail_errors.csv", "detail_error_vs_wd.png"} <= set(info["files"])
    lm, calib, held_out = windows()
    dense = wnb.perplexity(lm, held_out, progress=False)
    with wnb.pruned(lm, "wanda", "2:4", calib=calib, layers=[GATE, UP], progress=False) as report:
        pruned = wnb.perplexity(lm, held_out, progress=False)
    table = pd.read_csv(out / "perplexity.csv")
    assert table["method"].tolist() == ["dense", "wanda"]
    assert table["perplexity"].tolist() == pytest.approx([dense, pruned], rel=1e-9)
    layers = pd.read_csv(out / "layers.csv")
    assert layers["layer"].tolist() == [GATE, UP]
    assert layers["zeros"].tolist() == pytest.approx([r.zeros for r in report.values()])

    def no_compute(*a, **k):
        raise AssertionError("the app recomputed what the command had cached")

    monkeypatch.setattr(wnb.experiments.sweeps, "sweep", no_compute)  # the app's sweep view reads the command's result
    session = wnb.app.session.Session(lm=lm, calib=calib, held_out=held_out)
    pd.testing.assert_frame_equal(session.sweep(["wanda"], ["2:4"], [GATE, UP]), table, check_exact=False, rtol=1e-12)


@pytest.mark.integration
def test_prune_with_bits_saves_a_checkpoint_transformers_loads(tmp_path, isolated_cache):
    """--bits 4 --sparsity 2:4 --save-model: the saved weights (read by transformers alone) keep the 2:4
    zeros, take at most 16 values per row, give the perplexity the command reported, and the table
    states the effective bits."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "prune"
    assert run("prune", *SMALL, "--sparsity", "2:4", "--bits", "4", "--layers", GATE, "--save-model", "-o", out) == 0
    table = pd.read_csv(out / "perplexity.csv")
    row = table[table["method"] == "sparsegpt"].iloc[0]
    assert row["bits"] == 4 and row["effective_bits"] == pytest.approx(
        wnb.effective_bits(4, "2:4", columns=wnb.layer_weight(windows()[0], GATE).shape[1]))
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    w = model.get_submodule(GATE).weight.detach()
    assert ((w.view(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all()  # 2 of every 4 are zero
    assert max(len(torch.unique(r[r != 0])) for r in w) <= 16  # a 4-bit grid per output channel
    lm, _, held_out = windows()
    saved = wnb.model.lm.wrap_model(model, lm.tokenizer, "saved")
    assert wnb.perplexity(saved, held_out, progress=False) == pytest.approx(row["perplexity"], rel=1e-5)


@pytest.mark.integration
def test_expand_save_model_reloads_the_same_expansion(tmp_path, isolated_cache):
    out = tmp_path / "expand"
    assert run("expand", *SMALL, "--experts", "2", "--layers", GATE, "--save-model", "-o", out) == 0
    saved = {f"expansion/{p.name}" for p in (out / "expansion").iterdir()}
    assert {"expansion/wnb-expansion.json", "expansion/routers.safetensors"} <= saved <= set(manifest(out)["files"])
    expected = pd.read_csv(out / "perplexity.csv").set_index("method").loc["expansion", "perplexity"]
    lm, _, held_out = windows()
    with wnb.load_expanded(lm, out / "expansion"):
        assert wnb.perplexity(lm, held_out, progress=False) == pytest.approx(expected, rel=1e-5)


@pytest.mark.integration
def test_expand_scores_tasks(tmp_path, isolated_cache):
    """--tasks wnb_agreement: tasks.csv holds the dense, SparseGPT and expansion rows; the dense acc is the
    minimal-pair accuracy of the task's first 10 pairs, computed here with wnb.minimal_pair_scores."""
    import json as json_lib

    from wnb.experiments.tasks import AGREEMENT_TASK, agreement_task

    out = tmp_path / "expand"
    assert run("expand", *SMALL, "--experts", "2", "--layers", GATE, "--tasks", AGREEMENT_TASK, "--task-limit", "10",
               "-o", out) == 0
    tasks = pd.read_csv(out / "tasks.csv")
    assert list(tasks["model"]) == ["dense", "sparsegpt", "expansion"] and (tasks["n"] == 10).all()
    assert {"tasks.csv", "tasks.png"} <= set(manifest(out)["files"])
    docs = [json_lib.loads(line) for line in
            (agreement_task(folder=tmp_path / "task") / f"{AGREEMENT_TASK}.jsonl").read_text().splitlines()][:10]
    pairs = [{"good": d["choices"][0], "bad": d["choices"][1], "phenomenon": d["phenomenon"]} for d in docs]
    lm, _, _ = windows()
    expected = wnb.minimal_pair_scores(lm, pairs, progress=False)["correct"].mean()
    assert tasks.loc[0, "value"] == pytest.approx(expected)


@pytest.mark.integration
def test_expand_equals_the_api(tmp_path, isolated_cache):
    out = tmp_path / "expand"
    assert run("expand", *SMALL, "--experts", 2, "--layers", GATE, "--detail", GATE, "-o", out) == 0
    info = manifest(out)
    assert info["status"] == "complete"
    assert {"perplexity.csv", "detail_ri.csv", "detail_regression.csv", "detail_change.csv"} <= set(info["files"])
    lm, calib, held_out = windows()
    expected = wnb.expansion_sweep(lm, calib, held_out, n_experts=(1, 2), layers=[GATE], progress=False)
    table = pd.read_csv(out / "perplexity.csv")
    assert table["method"].tolist() == ["dense", "sparsegpt", "expansion"]
    assert table["perplexity"].tolist() == pytest.approx(expected["perplexity"].tolist(), rel=1e-9)
    ri = pd.read_csv(out / "detail_ri.csv")
    assert len(ri) == 1536 and (ri["ri"] > 0).all()


@pytest.mark.integration
def test_sweep_equals_the_api(tmp_path, isolated_cache):
    out = tmp_path / "sweep"
    assert run("sweep", *SMALL, "--methods", "magnitude", "--sparsities", "0.5", "2:4", "--layers", GATE,
               "-o", out) == 0
    lm, calib, held_out = windows()
    expected = wnb.sweep(lm, calib, held_out, methods=("magnitude",), sparsities=(0.5, "2:4"), layers=[GATE],
                         progress=False)
    table = pd.read_csv(out / "sweep.csv")
    assert table[["method", "sparsity"]].values.tolist() == expected[["method", "sparsity"]].values.tolist()
    assert table["perplexity"].tolist() == pytest.approx(expected["perplexity"].tolist(), rel=1e-9)
    assert (out / "perplexity.png").exists()


@pytest.mark.integration
def test_overwrite_keeps_a_users_file_inside_the_saved_model(tmp_path, isolated_cache, capsys):
    """--save-model listed the folder ("expansion/"), and --overwrite then deleted whatever a user had put in
    it; now every file written there is listed, and anything else is named in the refusal and kept."""
    out = tmp_path / "expand"
    args = ["expand", *SMALL, "--experts", "2", "--layers", GATE, "--detail", "none", "--save-model", "-o", out]
    assert run(*args) == 0
    files = manifest(out)["files"]
    assert not [name for name in files if name.endswith("/")]
    assert {f"expansion/{p.name}" for p in (out / "expansion").iterdir()} <= set(files)
    (out / "expansion" / "my-notes.txt").write_text("mine")
    assert run(*args, "--overwrite") == 2
    assert "expansion/my-notes.txt" in capsys.readouterr().err
    assert (out / "expansion" / "my-notes.txt").read_text() == "mine"
    (out / "expansion" / "my-notes.txt").unlink()
    assert run(*args, "--overwrite") == 0  # only wnb's files there: replaced


@pytest.mark.integration
def test_overwrite_replaces_only_what_wnb_wrote(tmp_path, isolated_cache, capsys):
    out = tmp_path / "again"
    args = ["score", *SMALL, "--layers", GATE, "--max-tokens", 64, "--detail", "none", "-o", out]
    assert run(*args) == 0
    written = set(manifest(out)["files"])
    assert run(*args) == 2  # exists: needs --overwrite
    (out / "notes.txt").write_text("mine")
    (out / "mydata").mkdir()
    (out / "mydata" / "x.csv").write_text("1")
    assert run(*args, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "mydata/x.csv" in err
    assert (out / "notes.txt").read_text() == "mine" and (out / "mydata" / "x.csv").read_text() == "1"
    (out / "notes.txt").unlink()
    (out / "mydata" / "x.csv").unlink()
    assert run(*args, "--overwrite") == 0
    assert manifest(out)["status"] == "complete" and set(manifest(out)["files"]) == written


@pytest.mark.integration
def test_interrupted_run_is_marked_incomplete(tmp_path, isolated_cache, monkeypatch, capsys):
    def interrupted(args, run_folder, session):
        run_folder.table("neurons.csv", pd.DataFrame({"neuron": [0]}), "partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.COMMANDS["score"], "run", interrupted)
    out = tmp_path / "cut"
    assert run("score", *SMALL, "-o", out) == 130
    info = manifest(out)
    assert info["status"] == "incomplete" and info["error"] == "interrupted" and info["finished"] is None
    assert "neurons.csv" in info["files"]
    assert "incomplete" in capsys.readouterr().err


@pytest.mark.integration
def test_bad_detail_layer_is_refused_before_pruning(tmp_path, isolated_cache, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("pruning started before the arguments were checked")

    monkeypatch.setattr(wnb.compression.pruned, "pruned", never)
    assert run("prune", *SMALL, "--detail", "model.layers.1.mlp.gate", "-o", tmp_path / "d") == 1
    assert "closest valid names" in capsys.readouterr().err


@pytest.mark.integration
def test_unknown_layer_after_start_is_recorded(tmp_path, isolated_cache, capsys):
    out = tmp_path / "bad-layer"
    assert run("score", *SMALL, "--layers", "model.layers.1.mlp.gate", "-o", out) == 1
    assert "closest valid names" in capsys.readouterr().err
    info = manifest(out)
    assert info["status"] == "incomplete" and "gate_proj" in info["error"]


@pytest.mark.integration
def test_sigint_leaves_an_incomplete_manifest(tmp_path, isolated_cache):
    out = tmp_path / "sigint"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # As from a terminal: a job started in the background of a non-interactive shell (as CI may run us)
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "wnb.cli", "score", "--budget", "large", "--wd", "exact",
                             "-q", "-o", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "manifest.json").exists() and "model" in manifest(out)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGINT, err.decode()[-2000:]  # the shell shows 130
    assert "Loading weights" not in err.decode()  # -q silences transformers' bars too
    info = manifest(out)
    assert info["status"] == "incomplete" and info["error"] == "interrupted"
