"""Minimal pairs: the agreement generator, JSONL and BLiMP loading, and scoring by sentence log-prob."""
from __future__ import annotations

import pytest

import wnb
from wnb.experiments import pair_scoring

# ---------------------------------------------------------------- the generator


@pytest.mark.integration
def test_bundled_model_gets_simple_agreement_right(bundled):
    """A working LM prefers 'The author laughs.' to 'The author laugh.'. Conditioned on SmolLM2-Instruct's
    BOS (<|im_start|>, a chat-turn marker) it got 74% of these; after <|endoftext|> (what wnb uses) 98%."""
    tok = bundled.tokenizer
    assert pair_scoring.prefix_ids(tok) == [tok.convert_tokens_to_ids("<|endoftext|>")]
    table = wnb.minimal_pair_accuracy(bundled, wnb.minimal_pairs(n=60, phenomena=["simple", "vp_coordination"]),
                                      progress=False).set_index("phenomenon")
    assert table.loc["simple", "accuracy"] >= 0.9
    assert table.loc["vp_coordination", "accuracy"] >= 0.9
