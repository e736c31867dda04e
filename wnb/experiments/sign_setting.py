"""What differs between a run of the sign study and the follow-up's setting (Kong et al., ICLR 2026;
PAPER.md §8), in words, so that every result is read next to the settings that may explain a
difference: the model, the text the Wasserstein set is ranked on, the held-out text, the minimal pairs
and how they are scored, the controls."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

PAPER_SEQ_LEN = 2048
PAPER_TOKENS = 100_000  # the follow-up ranks on 10^5 to 5·10^5 WikiText-2 train tokens
PAPER_SEEDS = 3


def setting_differences(study: pd.DataFrame, setting: Mapping) -> list[str]:
    """The ways a :func:`wnb.sign_ablation_study` run differs from the follow-up's setting, one sentence each.

    ``setting``: ``model`` (its name), ``corpus`` (the calibration text), ``seq_len``, ``calib_tokens`` (the
    tokens WD was ranked on), ``held_out_windows`` and ``held_out_text`` (e.g. ``"wikitext2 (validation)"``);
    the rest (pairs, their scoring, the controls, seeds, positions left out) is read from the table."""
    out = [f"model: {setting['model']}; the follow-up uses 1-8B base models (Pythia, Llama, Qwen, Mistral)"]
    corpus, seq_len, tokens = setting["corpus"], int(setting["seq_len"]), int(setting["calib_tokens"])
    if corpus not in ("wikitext2", "wikitext-2") or seq_len != PAPER_SEQ_LEN or tokens < PAPER_TOKENS:
        out.append(f"Wasserstein set ranked on {tokens:,} tokens of {corpus} in windows of {seq_len}; the follow-up: "
                   "1-5·10^5 tokens of WikiText-2 train in 2048-token windows")
    skip = int(study["skip_first"].iloc[0]) if "skip_first" in study else 0
    if skip:
        out.append(f"the first {skip} position(s) of every window left out of the ranking; the follow-up keeps them")
    text = str(setting["held_out_text"])
    if "wikitext2 (validation)" not in text or seq_len != PAPER_SEQ_LEN:
        out.append(f"perplexity on {int(setting['held_out_windows'])} windows of {seq_len} tokens of {text}; the "
                   "follow-up: every 2048-token window of WikiText-2 validation")
    out += _pair_differences(study)
    out += _control_differences(study)
    return out


def _pair_differences(study: pd.DataFrame) -> list[str]:
    if "accuracy" not in study:
        return ["no minimal pairs scored; the follow-up scores BLiMP and TSE"]
    sets = set(str(study["pair_sets"].iloc[0]).split(", "))
    out = []
    if "blimp" not in sets:
        out.append("no BLiMP (it needs a network); the follow-up scores all 67 paradigms × 1,000 pairs")
    if "tse" not in sets:
        out.append("no TSE (Marvin & Linzen's constructions); the follow-up scores them")
    if "agreement" in sets:
        out.append("wnb's six hand-made agreement templates are not one of the follow-up's sets")
    score = str(study["pair_score"].iloc[0])
    if "tse" in sets and "tse: mean" not in score and score != "mean":
        out.append(f"TSE scored by {score}; the follow-up by the mean log-probability per token")
    rule = str(study["scoring_rule"].iloc[0])
    if rule.startswith("after"):
        out.append(f"each sentence's first word scored {rule}; the follow-up leaves it unscored where the tokenizer "
                   "adds no BOS itself (Pythia, Qwen, SmolLM2)")
    return out


def _control_differences(study: pd.DataFrame) -> list[str]:
    out = []
    matched = study[study["selection"] == "matched"]
    if len(matched) and matched["pool"].iloc[0] != "bottom":
        out.append("matched control drawn outside the top 10% by WD; the follow-up's code selects from the bottom of "
                   "the ranking (its matching protocol is not published)")
    seeds = int((study["selection"] == "random").sum())
    if seeds < PAPER_SEEDS:
        out.append(f"{seeds} random-control seed(s); a spread over seeds needs at least {PAPER_SEEDS}")
    return out
