"""A held-out text of its own: every window of it in order (or a seeded draw), the splits only WikiText-2
has, WikiText-2 refused at once without a network, and the sign study's window sizes within a budget."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_word_llama, windows_of, word_text

from wnb.app.budgets import BUDGETS, Budget, study_sizes
from wnb.data import corpora, windows
from wnb.errors import WnbError


def test_every_window_of_the_held_out_text_in_order():
    lm = tiny_word_llama()
    text = word_text(400, 0)  # no two windows alike
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    every = windows.held_out_windows(lm, text, seq_len=16)
    assert every.shape == (ids.numel() // 16, 16)
    assert torch.equal(every.flatten(), ids[: every.numel()])  # non-overlapping, in text order
    some = windows.held_out_windows(lm, text, seq_len=16, n=5, seed=3)
    starts = [int(torch.nonzero((every == row).all(1))[0]) for row in some]
    assert len(some) == 5 and starts == sorted(starts) and len(set(starts)) == 5
    assert torch.equal(some, windows.held_out_windows(lm, text, seq_len=16, n=5, seed=3))
    with pytest.raises(WnbError, match="windows of 16"):
        windows.held_out_windows(lm, text, seq_len=16, n=10_000)
    with pytest.raises(WnbError, match="context"):
        windows.held_out_windows(lm, text, seq_len=256)


def test_splits_exist_for_wikitext_only_and_offline_is_refused_at_once(monkeypatch):
    assert corpora.check_split("wikitext2", "validation") == "validation"
    with pytest.raises(WnbError, match="wikitext2 only"):
        corpora.load_corpus("bundled", "validation")
    with pytest.raises(WnbError, match="unknown split"):
        corpora.check_split("wikitext2", "dev")
    monkeypatch.setattr(corpora, "network_available", lambda *a, **k: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(WnbError, match=r"WikiText-2 \(validation\).*network.*bundled corpus works offline"):
        corpora.load_corpus("wikitext2", "validation")


def test_study_windows_are_the_longest_the_budget_allows():
    # medium: 8,192 calibration and 4,096 held-out tokens; 8 held-out windows at least: 512 tokens each
    assert study_sizes(BUDGETS["medium"], context=8192) == (512, 16, 8)
    assert study_sizes(BUDGETS["large"], context=8192) == (2048, 16, 8)  # the paper's 2048
    assert study_sizes(BUDGETS["large"], context=1024) == (1024, 32, 16)  # the model's context caps it
    assert study_sizes(BUDGETS["small"], context=8192) == (128, 8, 4)  # never shorter than the budget's own
    wide = Budget(seq_len=128, n_calib=100, n_eval=200, overview_tokens=512)
    assert study_sizes(wide, context=None) == (2048, 6, 12)


def test_calibration_stays_and_the_held_out_windows_come_from_their_own_text():
    lm = tiny_word_llama()
    calib_text, eval_text = word_text(600, 0), word_text(300, 1)
    same_calib, same_held = windows.calibration_and_held_out(lm, calib_text, 16, 6, 4, seed=2)
    calib, held = windows.calibration_and_held_out(lm, calib_text, 16, 6, 4, seed=2, eval_text=eval_text)
    assert torch.equal(calib, same_calib)  # the Wasserstein set is ranked on the same windows either way
    of_calib, of_eval = windows_of(lm, calib_text, 16), windows_of(lm, eval_text, 16)
    assert all((of_calib == row).all(1).any() for row in same_held)
    assert held.shape == (4, 16) and all((of_eval == row).all(1).any() for row in held)
    every = windows.calibration_and_held_out(lm, calib_text, 16, 6, None, eval_text=eval_text)[1]
    assert torch.equal(every, of_eval)
    with pytest.raises(WnbError, match="held-out text of its own"):
        windows.calibration_and_held_out(lm, calib_text, 16, 6, None)


@pytest.mark.parametrize("corpus, eval_corpus, split, want", [
    ("bundled", None, None, None), ("bundled", "wikitext2", None, ("wikitext2", "validation")),
    ("bundled", "wikitext2", "train", ("wikitext2", "train")), ("wikitext2", None, "test", ("wikitext2", "test")),
    ("notes.txt", "bundled", None, ("bundled", "train")),
])
def test_held_out_source(corpus, eval_corpus, split, want):
    assert corpora.held_out_source(corpus, eval_corpus, split) == want


@pytest.mark.parametrize("corpus, eval_corpus, split, match", [
    ("bundled", "bundled", None, "would be the calibration text"),
    ("wikitext2", "wikitext-2", "train", "would be the calibration text"),
    ("bundled", None, "validation", "wikitext2 only"), ("bundled", "wikitext2", "dev", "unknown split"),
])
def test_held_out_source_refusals(corpus, eval_corpus, split, match):
    with pytest.raises(WnbError, match=match):
        corpora.held_out_source(corpus, eval_corpus, split)
