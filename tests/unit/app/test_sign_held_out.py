"""The sign study's held-out text, chosen on the session (the Negative tab's "held-out text" box): the
calibration windows (and so the Wasserstein set) stay, the held-out windows come from the chosen text, the
study measures them, and what the app may not open is refused."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_word_llama, windows_of, word_text

import wnb
import wnb.widgets as ww
from wnb.app.session import Session
from wnb.data import corpora


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WNB_STRICT", raising=False)


def _from(rows: torch.Tensor, every: torch.Tensor) -> bool:
    return all(bool((every == row).all(1).any()) for row in rows)


@pytest.fixture
def texts(tmp_path):
    calib, held = tmp_path / "calibration.txt", tmp_path / "held_out.txt"
    calib.write_text(word_text(2000, 0))
    held.write_text(word_text(800, 1))
    return calib, held


def test_the_chosen_text_gives_the_held_out_windows_and_the_study_measures_them(texts):
    calib_path, held_path = texts
    lm = tiny_word_llama()
    session = Session(lm=lm, corpus=str(calib_path), budget="small")
    calib, held = session.sign_windows()
    assert torch.equal(calib, session.calib) and torch.equal(held, session.held_out)  # the default: the corpus
    assert _from(held, windows_of(lm, calib_path.read_text(), held.shape[1]))

    session.choose_held_out(str(held_path))
    calib2, held2 = session.sign_windows()
    assert torch.equal(calib2, calib)  # the Wasserstein set is ranked on the same windows
    assert held2.shape == held.shape and _from(held2, windows_of(lm, held_path.read_text(), held.shape[1]))
    assert session.sign_held_out_text() == f"{held_path} (train)"
    layers = wnb.first_ffn_layers(lm)
    study = session.sign_ablation(layers, 0.05, controls=("random",), n_seeds=1, progress=False)
    assert study.iloc[0]["perplexity"] == pytest.approx(wnb.perplexity(lm, held2, progress=False), rel=1e-6)
    assert any(str(held_path) in d for d in session.sign_setting(study))

    session.choose_held_out()  # back to windows of the calibration corpus
    assert torch.equal(session.sign_windows()[1], held)


def test_what_may_not_be_chosen_is_refused(texts, tiny_llama):
    calib_path, held_path = texts
    session = Session(lm=tiny_word_llama(), corpus=str(calib_path), budget="small")
    with pytest.raises(wnb.WnbError, match="would be the calibration text"):
        session.choose_held_out(str(calib_path))
    session.restricted = True  # the app: named corpora only, no file on the server
    with pytest.raises(wnb.WnbError, match="named corpora"):
        session.choose_held_out(str(held_path))
    assert session.sign_held_out is None
    given = Session(lm=tiny_llama, calib=torch.zeros(4, 8, dtype=torch.long), held_out=torch.zeros(2, 8,
                                                                                                      dtype=torch.long))
    with pytest.raises(wnb.WnbError, match="were given"):
        given.choose_held_out("bundled")


def test_the_tab_measures_on_the_chosen_text_and_says_so(texts, monkeypatch):
    calib_path, _ = texts
    lm = tiny_word_llama()
    page = ww.Page(ww.NegativeView, session=Session(lm=lm, corpus=str(calib_path), budget="small"))
    page.start()
    view = page.view
    view.fraction.value = 0.05
    view.pairs.value = 1
    view.options.held_out.value = "bundled:train"
    view.run.click()
    assert view.last_error is None, view.last_error
    held = page.settings.session.sign_windows()[1]
    assert _from(held, windows_of(lm, corpora.load_corpus("bundled"), held.shape[1]))
    assert view.study.iloc[0]["perplexity"] == pytest.approx(wnb.perplexity(lm, held, progress=False), rel=1e-6)
    assert "held-out text: bundled (the whole text)" in view.study_table.value
    assert "of bundled (train)" in view.differences.value

    monkeypatch.setattr(corpora, "network_available", lambda *a, **k: False)  # WikiText-2 offline: said at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    view.options.held_out.value = "wikitext2:validation"
    view.run.click()
    assert "network" in (view.last_error or "") and view.study is not None  # the previous study stays
