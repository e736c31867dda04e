"""``wnb neuron`` (one HTML page per neuron and its tables) and ``wnb score --contexts`` on the bundled model."""
import collections
import html
import json

import pandas as pd
import pytest
from helpers import run_cli

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
    monkeypatch.setattr(wnb.app.layers, "contexts_from_outputs",
                        lambda *a, **k: pytest.fail("the app computed the contexts again"))
    stored = session.contexts(LAYER)
    hooked = wnb.capture(lm, [LAYER], calib, inputs=False, progress=False)[LAYER].outputs
    expected = hooked[:, 3].topk(5).values.double()
    assert stored.top(3, "high")["value"].head(5).to_numpy() == pytest.approx(expected.numpy(), rel=1e-5)
