"""The "Negative differentiation" tab driven like a user (clicks, values) on tiny Llamas; every table it
shows is checked against the wnb API called directly with the same arguments, and every bar and line
against its table."""
import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.container import BarContainer

import wnb
import wnb.app
import wnb.app.session
import wnb.tracing
import wnb.widgets as ww
from wnb.app.session import Session

FIRST_FFN = [f"model.layers.{i}.mlp.gate_proj" for i in range(3)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WNB_STRICT", raising=False)


def windows(vocab: int):
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, vocab, (8, 16), generator=g), torch.randint(0, vocab, (3, 16), generator=g)


def api_scores(session, layers):
    tokens = min(session.budget.overview_tokens, session.calib.numel())
    return wnb.wasserstein_scores(session.lm, session.calib, layers, max_tokens=tokens, progress=False)


def csv_from_link(value: str, prefix: str) -> pd.DataFrame:
    match = re.search(rf'download="({prefix}[^"]*\.csv)" href="data:text/csv;base64,([^"]+)"', value)
    assert match, f"no {prefix} download in {value[:200]}"
    return pd.read_csv(io.BytesIO(base64.b64decode(match.group(2))))


@pytest.fixture
def app(tiny_llama):
    calib, held_out = windows(128)
    app = ww.App(session=Session(lm=tiny_llama, calib=calib, held_out=held_out, budget="small"))
    return app


def test_the_tab_is_listed_and_starts_lazily(app, monkeypatch):
    assert app.TITLES[4] == "Negative differentiation" and app.tabs.children[4] is app.negative
    called = []
    monkeypatch.setattr(wnb.app.session.Session, "sign_ablation", lambda *a, **k: called.append(1))
    app.tabs.selected_index = 4
    view = app.negative
    assert view.last_error is None, view.last_error
    assert view.layer.value == "model.layers.1.mlp.gate_proj" and view.layer.disabled  # scope "all" by default
    assert view.study is None and not called  # nothing heavy before Run
    assert (view.fraction.value, view.side.value, view.seeds.value, view.pairs.value) == (0.01, "negative", 1, 5)
    assert view.random.value and view.matched.value and view.mirror.value and not view.mirror.disabled
    assert view.controls == ("random", "matched", "mirror")
    view.side.value = "both"  # zeroes every output: no other side to mirror
    assert view.mirror.disabled and view.controls == ("random", "matched")
    view.side.value = "negative"
    assert not view.mirror.disabled


def test_run_shows_the_study_surprisal_and_downloads(app, tiny_llama):
    app.tabs.selected_index = 4
    view = app.negative
    view.fraction.value = 0.05
    view.seeds.value = 2
    view.run.click()
    assert view.last_error is None, view.last_error
    session = app.settings.session
    scores = api_scores(session, FIRST_FFN)
    ref = wnb.sign_ablation_study(tiny_llama, None, session.held_out, fraction=0.05, seeds=(0, 1), scores=scores,
                                  progress=False)
    study = view.study
    assert list(study["selection"]) == ["dense", "wasserstein", "mirror", "random", "random", "matched"]
    for column in ("n_neurons", "per_layer", "perplexity", "ppl_low", "ppl_high", "delta_perplexity", "delta_ppl_low",
                   "w_delta_nll_high", "perplexity_seeds_sd"):
        np.testing.assert_allclose(study[column].to_numpy(float), ref[column].to_numpy(float), rtol=1e-6, atol=1e-9)
    assert "no minimal pairs: the model has no tokenizer" in view.summary.value  # conftest's Llama has none
    # paired differences with their intervals, in the summary and in the table
    assert "Wasserstein − random over 2 seeds" in view.summary.value
    w = study.iloc[1]
    shown = f"{w['delta_perplexity']:+.3f} [{w['delta_ppl_low']:+.3f}, {w['delta_ppl_high']:+.3f}]"
    assert shown in view.study_table.value and "W − this, Δ perplexity: verdict" in view.study_table.value
    assert "negative − positive side of the same neurons (the mirror)" in view.summary.value
    r = study.iloc[3]
    assert f"{r['perplexity_seeds_mean']:.3f} ± {r['perplexity_seeds_sd']:.3f}" in view.study_table.value
    assert "minimal_pairs" not in view.pngs
    # the bars are the table's perplexities, in its order
    bars = view.figs["perplexity"].axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], study["perplexity"], rtol=1e-12)
    # surprisal: the API's token table aggregated by class, for the Wasserstein set and the matched control
    wasserstein = wnb.select_wasserstein(scores, 0.05)
    table = wnb.token_surprisal(tiny_llama, session.held_out, wasserstein, progress=False)
    by_class = wnb.surprisal_by_class(table)
    shown = view.surprisal["by_class"]
    assert list(dict.fromkeys(shown["selection"])) == ["wasserstein", "matched"]
    mine = shown[shown["selection"] == "wasserstein"]
    np.testing.assert_allclose(mine["delta_nll"], by_class["delta_nll"], rtol=1e-6, atol=1e-9)
    assert list(mine["token_class"]) == list(by_class["token_class"])
    # downloads: the study CSV equals the table; PNGs of both figures
    downloaded = csv_from_link(view.downloads.value, "study_")
    np.testing.assert_allclose(downloaded["perplexity"], study["perplexity"], rtol=1e-9)
    assert "study_sign_ablation_all_first_ffn_0.05_negative_random-matched-mirror_small_seed0.csv" in view.downloads.value
    assert "perplexity_sign_ablation" in view.downloads.value and "surprisal_sign_ablation" in view.downloads.value
    assert view.depth is None  # the depth profile has its own button


def test_the_surprisal_and_depth_profile_reuse_the_study_passes(app, monkeypatch):
    """Every held-out pass (dense, Wasserstein, each matched count) is computed once: the surprisal after
    the study runs none, and the depth profile only the layer sets it has not seen."""
    import wnb.experiments.sign_ablation
    import wnb.experiments.surprisal

    passes = []
    real = wnb.experiments.sign_ablation.token_nll
    counted = lambda *a, **k: passes.append(1) or real(*a, **k)  # noqa: E731
    for where in (wnb.experiments.sign_ablation, wnb.experiments.surprisal):  # every held-out pass of the tab
        if hasattr(where, "token_nll"):
            monkeypatch.setattr(where, "token_nll", counted)
    app.tabs.selected_index = 4
    view = app.negative
    view.fraction.value = 0.05
    view.seeds.value = 1
    view.run.click()
    assert view.last_error is None, view.last_error
    study = view.study
    matched = int(study.loc[study["selection"] == "matched", "evaluations"].iloc[0])
    assert len(passes) == 4 + matched  # dense, wasserstein, its mirror, random, the matched search; surprisal: none
    passes.clear()
    view.run_depth.click()
    assert view.last_error is None, view.last_error
    # measured before: the dense row and the full cumulative row; layer 0 alone is also "layers 0..0"
    assert len(passes) == 2 * len(FIRST_FFN) - 2


def test_depth_profile_button(app, tiny_llama):
    app.tabs.selected_index = 4
    view = app.negative
    view.fraction.value = 0.05
    view.run_depth.click()
    assert view.last_error is None, view.last_error
    session = app.settings.session
    ref = wnb.sign_ablation_depth(tiny_llama, None, session.held_out, fraction=0.05,
                                  scores=api_scores(session, FIRST_FFN), progress=False)
    np.testing.assert_allclose(view.depth["delta_perplexity"], ref["delta_perplexity"], rtol=1e-6, atol=1e-9)
    lines = view.figs["depth"].axes[0].lines
    single = ref[ref["mode"] == "layer"]
    np.testing.assert_allclose(lines[0].get_ydata(), single["delta_perplexity"], rtol=1e-6, atol=1e-9)
    assert "depth_sign_ablation" in view.downloads.value


def test_scope_side_and_bad_fraction(app, tiny_llama):
    app.tabs.selected_index = 4
    view = app.negative
    view.scope.value = "layer"
    assert not view.layer.disabled
    view.layer.value = "model.layers.2.mlp.up_proj"
    view.side.value = "both"
    view.random.value = False
    view.fraction.value = 0.05
    view.run.click()
    assert view.last_error is None, view.last_error
    assert view.layers == ["model.layers.2.mlp.up_proj"]
    assert list(view.study["selection"]) == ["dense", "wasserstein", "matched"]
    assert set(view.study["side"]) == {"both"}
    view.scope.value = "block"
    assert view.selected_layers() == [f"model.layers.2.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    view.fraction.value = 0.0  # the box keeps the share inside what the study accepts
    assert view.fraction.value == pytest.approx(0.001)
    view.fraction.value = 0.5  # below the matched control's 10% exclusion
    assert view.fraction.value < 0.1
    view.scope.value = "layer"
    assert "model.layers.0.self_attn.q_proj" not in view.layer.options  # the list holds FFN layers only


def test_minimal_pairs_on_a_model_with_a_tokenizer():
    from helpers import tiny_word_llama

    lm = tiny_word_llama(layers=3)
    calib, held_out = windows(len(lm.tokenizer.get_vocab()))
    page = ww.Page(ww.NegativeView, session=Session(lm=lm, calib=calib, held_out=held_out, budget="small"))
    page.start()
    view = page.view
    view.fraction.value = 0.05
    view.pairs.value = 3
    view.run.click()
    assert view.last_error is None, view.last_error
    pairs = wnb.minimal_pairs("agreement", n=3, seed=0)
    scores = api_scores(page.settings.session, FIRST_FFN)
    ref = wnb.sign_ablation_study(lm, None, held_out, fraction=0.05, seeds=(0,), scores=scores, pairs=pairs,
                                  progress=False)
    columns = [c for c in ref.columns if c.startswith("accuracy")]
    assert len(columns) == 7  # overall and six constructions
    np.testing.assert_allclose(view.study[columns].to_numpy(float), ref[columns].to_numpy(float))
    # the dense row's accuracies are minimal_pair_accuracy's
    dense = wnb.minimal_pair_accuracy(lm, pairs, progress=False).set_index("phenomenon")["accuracy"]
    for phenomenon, value in dense.items():
        assert view.study[f"accuracy_{phenomenon}"].iloc[0] == pytest.approx(value)
    # grouped bars: per phenomenon, the mean of each selection's rows
    bars = [c for c in view.figs["minimal_pairs"].axes[0].containers if isinstance(c, BarContainer)]
    means = view.study.groupby("selection", sort=False)[[f"accuracy_{p}" for p in dense.index]].mean()
    for container, (selection, row) in zip(bars, means.iterrows()):
        np.testing.assert_allclose([b.get_height() for b in container], row.to_numpy(float))


def test_study_options_reach_the_study(app, tiny_llama):
    """The matched pool, the ranking without the first token and a twin control, as the API gives them; the
    set's stability and the rows' WD ranks shown."""
    app.tabs.selected_index = 4
    view = app.negative
    view.fraction.value = 0.05
    view.random.value = False
    view.mirror.value = False
    view.options.pool.value = "bottom"
    view.options.skip_first.value = True
    view.options.twins["variance"].value = True
    view.run.click()
    assert view.last_error is None, view.last_error
    session = app.settings.session
    ref = wnb.sign_ablation_study(tiny_llama, session.calib, session.held_out, fraction=0.05,
                                  controls=("matched", "variance"), seeds=(0,), pool="bottom", skip_first=1,
                                  progress=False)
    study = view.study
    assert list(study["selection"]) == ["dense", "wasserstein", "matched", "variance"]
    for column in ("n_neurons", "perplexity", "wd_rank_min", "wd_rank_max", "top_overlap", "w_delta_perplexity"):
        np.testing.assert_allclose(study[column].to_numpy(float), ref[column].to_numpy(float), rtol=1e-6, atol=1e-9)
    assert study.iloc[2]["pool"] == "bottom" and (study["skip_first"] == 1).all()
    assert "WD ranks (min / median / max)" in view.study_table.value
    m = study.iloc[2]
    assert f"{int(m['wd_rank_min'])} / {m['wd_rank_median']:g} / {int(m['wd_rank_max'])}" in view.study_table.value
    assert f"share {study.iloc[1]['top_overlap']:.0%} of their neurons" in view.stability.value
    assert "matched pool: the lowest WD first" in view.study_table.value


def test_pair_sets_scoring_rules_and_the_grammar_depth_profile():
    from helpers import tiny_word_llama

    lm = tiny_word_llama(layers=3)
    calib, held_out = windows(len(lm.tokenizer.get_vocab()))
    page = ww.Page(ww.NegativeView, session=Session(lm=lm, calib=calib, held_out=held_out, budget="small"))
    page.start()
    view = page.view
    view.fraction.value = 0.05
    view.pairs.value = 2
    view.options.sets.value = ("agreement", "tse")
    view.options.score.value = "mean"
    view.options.first_token.value = "authors"
    view.run.click()
    assert view.last_error is None, view.last_error
    pairs = wnb.pair_sets(["agreement", "tse"], n=2, seed=0)
    ref = wnb.sign_ablation_study(lm, calib, held_out, fraction=0.05, seeds=(0,), pairs=pairs, pair_score="mean",
                                  prefix="", progress=False)
    columns = [c for c in ref.columns if c.startswith("accuracy")]
    assert "accuracy_tse/reflexive_anaphora" in columns
    np.testing.assert_allclose(view.study[columns].to_numpy(float), ref[columns].to_numpy(float))
    assert (view.study["scoring_rule"] == "from the second token").all() and (view.study["pair_score"] == "mean").all()
    assert "Pairs scored by mean, from the second token." in view.study_table.value
    assert "What differs from the follow-up" in view.differences.value and "no BLiMP" in view.differences.value
    assert "TSE scored by" not in view.differences.value  # the follow-up scores TSE by the mean: no difference
    view.run_depth.click()
    assert view.last_error is None, view.last_error
    depth = wnb.sign_ablation_depth(lm, calib, held_out, fraction=0.05, pairs=pairs, pair_score="mean", prefix="",
                                    progress=False)
    grammar = [c for c in depth.columns if c.startswith("delta_accuracy_")]
    np.testing.assert_allclose(view.depth[grammar].to_numpy(float), depth[grammar].to_numpy(float))
    assert len(view.figs["depth"].axes) == 2  # Δ perplexity and Δ accuracy per phenomenon
