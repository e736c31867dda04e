"""The text probe's HTML: escaped text, inline styles only, values equal a plain-hook run."""
import html
import re

import pytest
import torch
from helpers.highlight import HOSTILE, hook_values

import wnb
import wnb.reading


@pytest.mark.integration
def test_bundled_probe_escapes_and_matches_hooks(bundled):
    layer, neuron = "model.layers.1.mlp.gate_proj", 100
    page = wnb.activation_html(bundled, HOSTILE, layer, neuron)
    assert "<script" not in page.lower()
    assert html.unescape(re.sub(r"<[^>]+>", "", page)) == HOSTILE
    table = wnb.token_activations(bundled, HOSTILE, layer, neuron)
    ids = bundled.tokenizer(HOSTILE, add_special_tokens=False)["input_ids"]
    assert table["token_id"].tolist() == ids
    torch.testing.assert_close(torch.tensor(table["value"].to_numpy()), hook_values(bundled, layer, ids, neuron).double(),
                               rtol=1e-4, atol=1e-4)
