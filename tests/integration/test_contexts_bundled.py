"""neuron_contexts against brute force: a full sort of a plain-hook capture, tokenizer.decode of the windows."""

import pytest
from helpers.contexts import assert_extremes, hook_outputs

import wnb
import wnb.reading
import wnb.reading.extremes


@pytest.mark.integration
def test_bundled_layer1_gate_proj_against_hooks_and_decode(bundled, bundled_windows):
    calib, _ = bundled_windows
    windows = calib[:8]
    layer = "model.layers.1.mlp.gate_proj"
    ctx = wnb.neuron_contexts(bundled, layer, windows, k=20, width=5, batch_size=3, progress=False)
    y = hook_outputs(bundled, layer, windows)
    assert_extremes(ctx, y, 20)
    tok = bundled.tokenizer
    for side in ("high", "low"):
        for row in ctx.top(7, side).itertuples():
            ids = windows[row.window].tolist()
            p = row.position
            assert row.token == tok.decode(ids[p:p + 1], clean_up_tokenization_spaces=False)
            assert row.left == tok.decode(ids[max(0, p - 5):p], clean_up_tokenization_spaces=False)
            assert row.right == tok.decode(ids[p + 1:p + 6], clean_up_tokenization_spaces=False)
