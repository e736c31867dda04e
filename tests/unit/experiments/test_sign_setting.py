"""What differs from the follow-up's setting, read from hand-made study tables and settings."""
from __future__ import annotations

import pandas as pd

from wnb.experiments.sign_setting import setting_differences


def _study(pair_sets="agreement, tse", pair_score="agreement: sum, tse: mean", rule="after <|endoftext|>",
           pool="outside", seeds=1, skip_first=0):
    rows = [{"selection": "dense"}, {"selection": "wasserstein"}] + [{"selection": "random"}] * seeds + [
        {"selection": "matched", "pool": pool}]
    return pd.DataFrame(rows).assign(pair_sets=pair_sets, pair_score=pair_score, scoring_rule=rule, accuracy=0.9,
                                     skip_first=skip_first)


BUNDLED = {"model": "SmolLM2-135M-Instruct", "corpus": "bundled", "seq_len": 128, "calib_tokens": 1024,
           "held_out_windows": 4, "held_out_text": "bundled (windows disjoint from the calibration ones)"}
PAPER = {"model": "EleutherAI/pythia-1.4b-deduped", "corpus": "wikitext2", "seq_len": 2048, "calib_tokens": 262_144,
         "held_out_windows": 140, "held_out_text": "wikitext2 (validation)"}


def test_a_small_offline_run_lists_every_difference():
    text = "\n".join(setting_differences(_study(), BUNDLED))
    for part in ("SmolLM2-135M-Instruct", "ranked on 1,024 tokens of bundled in windows of 128",
                 "perplexity on 4 windows of 128 tokens", "no BLiMP", "six hand-made agreement templates",
                 "first word scored after <|endoftext|>", "outside the top 10%", "1 random-control seed"):
        assert part in text, part
    assert "no TSE" not in text and "TSE scored by" not in text  # TSE is there, by the mean


def test_the_papers_setting_leaves_only_the_model():
    study = _study(pair_sets="blimp, tse", pair_score="blimp: sum, tse: mean", rule="from the second token",
                   pool="bottom", seeds=3)
    assert setting_differences(study, PAPER) == [
        "model: EleutherAI/pythia-1.4b-deduped; the follow-up uses 1-8B base models (Pythia, Llama, Qwen, Mistral)"]


def test_scoring_and_ranking_choices_that_differ():
    study = _study(pair_sets="tse", pair_score="sum", pool="bottom", seeds=3, skip_first=1)
    text = "\n".join(setting_differences(study, PAPER))
    assert "TSE scored by sum" in text and "first 1 position(s)" in text and "no BLiMP" in text
    none = setting_differences(_study().drop(columns=["accuracy", "pair_sets", "pair_score", "scoring_rule"]), PAPER)
    assert any("no minimal pairs scored" in d for d in none)
