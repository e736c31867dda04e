"""``wnb neuron`` (one HTML page per neuron and its tables) and ``wnb score --contexts`` on the bundled model."""
import collections
import html
import json

import pandas as pd
import pytest
import torch
from helpers import count_forwards, hooked_layers, run_cli

import wnb
import wnb.app
import wnb.reading

LAYER = "model.layers.1.mlp.gate_proj"
SMALL = ["--seq-len", "64", "--windows", "4", "--eval-windows", "1", "-q"]


run = run_cli


@pytest.mark.integration
def test_neuron_pages_and_tables(tmp_path, isolated_cache):
    out = tmp_path / "pages"
    assert run("neuron", *SMALL, "--layer", LAYER, "--neuron", 5, 761, "-o", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and "neuron_761.html" in manifest["files"]
    page = (out / "neuron_761.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") == 2 and LAYER in page
    lm = wnb.load_model(device="cpu")
    calib, _ = wnb.token_windows(lm, wnb.load_corpus(), 64, 4, 1, 0)
    tokens = pd.read_csv(out / "neuron_761_tokens.csv", keep_default_na=False)
    counts = collections.Counter(calib.flatten().tolist())
    assert dict(zip(tokens["token_id"], tokens["count"])) == dict(counts)  # every token of the windows, counted
    contexts = pd.read_csv(out / "neuron_761_contexts.csv", keep_default_na=False)
    top = contexts[contexts["side"] == "high"].iloc[0]
    assert top["token"] == lm.tokenizer.decode([int(calib.flatten()[top["window"] * 64 + top["position"]])])
    assert html.escape(top["token"]).strip() in page


@pytest.mark.integration
def test_score_contexts_land_where_the_app_reads_them(tmp_path, isolated_cache, monkeypatch):
    from wnb.app.session import Session

    out = tmp_path / "score"
    assert run("score", *SMALL, "--layers", LAYER, "--detail", "none", "--contexts", 20, "-o", out) == 0
    assert any((isolated_cache / "contexts").iterdir())
    lm = wnb.load_model(device="cpu")
    calib, held_out = wnb.token_windows(lm, wnb.load_corpus(), 64, 4, 1, 0)
    session = Session(lm=lm, calib=calib, held_out=held_out, budget="medium")
    calls = count_forwards(lm)
    stored = session.contexts(LAYER)
    calls.handle.remove()
    assert calls == []  # the app found them: no pass
    hooked = wnb.capture(lm, [LAYER], calib, inputs=False, progress=False)[LAYER].outputs
    expected = hooked[:, 3].topk(5).values.double()
    assert stored.top(3, "high")["value"].head(5).to_numpy() == pytest.approx(expected.numpy(), rel=1e-5)


@pytest.mark.integration
def test_one_score_pass_serves_the_apps_overview_and_what_it_reads(tmp_path, isolated_cache):
    """``wnb score --contexts 20`` over every FFN layer is the app's whole reading: afterwards the app's model
    overview and the contexts of the first, a middle and the last FFN layer run no forward of the model, and
    the top 20 of sampled neurons are those of a full sort of plain-hook captures."""
    from wnb.app.session import Session

    out = tmp_path / "whole"
    assert run("score", "--budget", "small", "--detail", "none", "--contexts", 20, "-q", "-o", out) == 0
    assert json.loads((out / "manifest.json").read_text())["scoring"]["tokens_per_layer"] == 8 * 128
    session = Session(budget="small", device="cpu")
    lm = session.lm
    layers = wnb.ffn_layers(lm)
    picked = [layers[0], layers[len(layers) // 2], layers[-1]]
    calls = count_forwards(lm)
    scores, table = session.overview(progress=False)
    contexts = {name: session.contexts(name, progress=False) for name in picked}
    calls.handle.remove()
    assert calls == [] and len(table) == 90
    ref = hooked_layers(lm, picked, session.calib)
    gen = torch.Generator().manual_seed(0)
    for name in picked:
        y = ref[name]
        assert (scores[name] - wnb.wasserstein_to_gaussian(y)).abs().max() < 1e-3
        neurons = torch.randperm(y.shape[1], generator=gen)[:64]
        for side in ("high", "low"):
            want = y[:, neurons].topk(20, dim=0, largest=side == "high").values
            got = contexts[name].state[f"{side}_values"][:, neurons]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
