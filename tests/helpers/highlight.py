"""Shared by the highlight tests in tests/unit and tests/integration."""
from __future__ import annotations

import torch

HOSTILE = 'Hi <script>alert(1)</script> & "you" &amp; <b>bold</b>\nnext'


def hook_values(lm, layer, ids, neuron):
    seen = []
    handle = lm.model.get_submodule(layer).register_forward_hook(lambda m, a, o: seen.append(o[0, :, neuron].clone()))
    with torch.no_grad():
        lm.model(torch.tensor([ids]))
    handle.remove()
    return seen[0]
