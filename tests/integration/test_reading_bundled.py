"""Token table, differentiating pairs and output effect against direct computations."""

import pytest

import wnb
import wnb.scoring

# ---------------------------------------------------------------- token table


@pytest.mark.integration
def test_bundled_output_effect_decodes_tokens(bundled):
    effect = wnb.output_effect(bundled, "model.layers.1.mlp.gate_proj", 100, k=5)
    column = bundled.model.model.layers[1].mlp.down_proj.weight[:, 100].double()
    ref = bundled.model.lm_head.weight.double() @ column
    top = int(ref.argmax())
    assert effect["token_id"].iloc[0] == top
    assert effect["token"].iloc[0] == bundled.tokenizer.decode([top], clean_up_tokenization_spaces=False)
