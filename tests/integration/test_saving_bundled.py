"""save_pruned / save_expanded / load_expanded: checkpoints that reload with transformers alone and give the
pruned logits and zeros, compressed-tensors configs the library reads back, expansions restored to identical
logits, and crafted files (a pickle, bad safetensors, a JSON naming other layers) refused without running code."""
from __future__ import annotations

import json

import pytest
import torch
from helpers.saving import (
    logits_of,
    no_grad,  # noqa: F401 (fixtures)
)

import wnb
import wnb.model

# ---------------------------------------------------------------- pruned checkpoints


@pytest.mark.integration
def test_bundled_hf_checkpoint_keeps_tied_embeddings(bundled, tmp_path):
    from transformers import AutoModelForCausalLM

    layers = wnb.ffn_layers(bundled)[:3]
    ids = bundled.tokenizer("The cat sat on the mat because it was warm.", return_tensors="pt").input_ids
    with wnb.pruned(bundled, method="magnitude", sparsity="2:4", layers=layers, progress=False) as report:
        expected = logits_of(bundled, ids)
        path = wnb.save_pruned(bundled, tmp_path / "smol", format="compressed-tensors", report=report)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model(ids).logits, expected)
    raw = json.loads((path / "config.json").read_text())["quantization_config"]["sparsity_config"]
    assert raw["sparsity_structure"] == "2:4" and raw["targets"] == layers
    assert getattr(bundled.model.config, "quantization_config", None) is None  # the live model is unchanged
