"""``wnb negative`` (the follow-up's sign ablation) on the bundled model with tiny windows: files and
manifest, values equal to the Python API's for the same arguments, bad arguments refused with exit 2
before the model loads."""
import json

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli

import wnb
import wnb.cli
import wnb.cli.negative
import wnb.experiments
import wnb.model

LAYERS = [f"model.layers.{i}.mlp.gate_proj" for i in (0, 1, 2)]
SMALL = ["--seq-len", "64", "--windows", "4", "--eval-windows", "2", "-q"]


run = run_cli


@pytest.mark.integration
def test_files_and_values_equal_the_api(tmp_path, isolated_cache, capsys):
    out = tmp_path / "negative"
    argv = ["negative", *SMALL, "--layers", *LAYERS, "--fraction", "0.02", "--control-seeds", "1",
            "--pairs-per-phenomenon", "2", "--max-tokens", "128", "-o", out]
    assert run(*argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["command"] == "negative"
    differences = " ".join(manifest["differences_from_the_paper"])
    assert "no TSE" in differences and "ranked on 128 tokens of bundled in windows of 64" in differences
    for name in ("study.csv", "stability.csv", "neurons.csv", "minimal_pairs.csv", "perplexity.png",
                 "minimal_pairs.png", "surprisal_by_class.csv", "surprisal_by_group.csv", "top_tokens.csv",
                 "surprisal.png", "depth.csv", "depth.png"):
        assert name in manifest["files"] and (out / name).stat().st_size > 0, name
    line = capsys.readouterr().out
    assert "wnb negative: perplexity" in line and "two disjoint halves of the calibration tokens share" in line
    assert "pairs scored by sum, after <|endoftext|>" in line

    lm = wnb.load_model(device="cpu")
    calib, held_out = wnb.token_windows(lm, wnb.load_corpus(), 64, 4, 2, seed=0)
    scores = wnb.wasserstein_scores(lm, calib, LAYERS, max_tokens=128, progress=False)
    pairs = wnb.minimal_pairs("agreement", n=2, seed=0)
    ref = wnb.sign_ablation_study(lm, None, held_out, fraction=0.02, seeds=(0,), pairs=pairs, scores=scores,
                                  progress=False)
    study = pd.read_csv(out / "study.csv")
    assert list(study["selection"]) == list(ref["selection"])
    for column in ("n_neurons", "perplexity", "ppl_low", "ppl_high", "accuracy", "accuracy_simple"):
        np.testing.assert_allclose(study[column], ref[column].to_numpy(float), rtol=1e-5)
    assert (study["scoring_rule"] == "after <|endoftext|>").all() and (study["pair_score"] == "sum").all()
    # --max-tokens 128: the first two windows of 64, one per half
    halves = [wnb.wasserstein_scores(lm, part, LAYERS, progress=False) for part in (calib[:1], calib[1:2])]
    tops = [{n: set(wnb.top_neurons(half[n], 0.02).tolist()) for n in LAYERS} for half in halves]
    shared = sum(len(tops[0][n] & tops[1][n]) for n in LAYERS)
    assert study.iloc[1]["top_overlap"] == pytest.approx(shared / (3 * 31))
    neurons = pd.read_csv(out / "neurons.csv")
    w = neurons[neurons["selection"] == "wasserstein"]
    assert len(w) == study.iloc[1]["n_neurons"] and w["wd_rank"].max() == 31
    depth = pd.read_csv(out / "depth.csv")
    ref_depth = wnb.sign_ablation_depth(lm, None, held_out, fraction=0.02, scores=scores, pairs=pairs, progress=False)
    np.testing.assert_allclose(depth["perplexity"], ref_depth["perplexity"], rtol=1e-5)
    np.testing.assert_allclose(depth["accuracy_simple"], ref_depth["accuracy_simple"], rtol=1e-9)
    table = wnb.token_surprisal(lm, held_out, wnb.select_wasserstein(scores, 0.02), progress=False)
    by_class = pd.read_csv(out / "surprisal_by_class.csv")
    mine = by_class[by_class["selection"] == "wasserstein"]
    np.testing.assert_allclose(mine["delta_nll"], wnb.surprisal_by_class(table)["delta_nll"], rtol=1e-5, atol=1e-7)
    assert set(by_class["selection"]) == {"wasserstein", "matched"}


@pytest.mark.integration
def test_interventions_equal_the_api(tmp_path, isolated_cache, capsys):
    """--interventions: the mirror and the authors' patches beside the clamp, as wnb.intervention_study gives
    them for the same neurons, windows and seeds."""
    out = tmp_path / "negative"
    assert run("negative", *SMALL, "--layers", *LAYERS[:2], "--fraction", "0.02", "--control-seeds", "1",
               "--controls", "random", "--minimal-pairs", "none", "--no-depth", "--interventions", "-o", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"interventions.csv", "interventions.png"} <= set(manifest["files"])
    assert "interventions (Δ perplexity of the Wasserstein row): negative" in capsys.readouterr().out
    lm = wnb.load_model(device="cpu")
    calib, held_out = wnb.token_windows(lm, wnb.load_corpus(), 64, 4, 2, seed=0)
    scores = wnb.wasserstein_scores(lm, calib, LAYERS[:2], progress=False)
    ref = wnb.intervention_study(lm, held_out, scores, 0.02, seeds=(0,), progress=False)
    table = pd.read_csv(out / "interventions.csv")
    assert list(table["intervention"]) == list(ref["intervention"])
    assert set(table["intervention"]) == {"none", "negative", "positive", "posrelu", "signflip"}
    for column in ("n_neurons", "perplexity", "delta_perplexity", "w_delta_perplexity"):
        np.testing.assert_allclose(table[column], ref[column].to_numpy(float), rtol=1e-5)
