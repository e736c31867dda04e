"""neuron_contexts against brute force: a full sort of a plain-hook capture, tokenizer.decode of the windows."""

import numpy as np
import pytest
import torch

import wnb
import wnb.reading
import wnb.reading.extremes


def hook_outputs(lm, layer, windows):
    """The layer's outputs over the windows from one full forward with a plain PyTorch hook (no nnsight)."""
    seen = []
    handle = lm.model.get_submodule(layer).register_forward_hook(
        lambda mod, args, out: seen.append(out.reshape(-1, out.shape[-1]).detach().clone()))
    with torch.no_grad():
        lm.model(windows)
    handle.remove()
    return torch.cat(seen)


def brute_force(y, k, side, keep=None):
    """Indices ``[k, d]`` of the k highest (lowest) values of each column, ties to the lower index."""
    y = y.double().numpy()
    rows = np.arange(y.shape[0]) if keep is None else np.flatnonzero(keep.numpy())
    cols = []
    for j in range(y.shape[1]):
        v = y[rows, j]
        order = np.lexsort((rows, -v if side == "high" else v))[:k]
        cols.append(rows[order])
    return torch.from_numpy(np.stack(cols, axis=1))


def assert_extremes(ctx, y, k, keep=None):
    for side in ("high", "low"):
        expected = brute_force(y, k, side, keep)
        assert torch.equal(ctx.state[f"{side}_index"], expected), side
        torch.testing.assert_close(ctx.state[f"{side}_values"], y.float()[expected, torch.arange(y.shape[1])],
                                   rtol=0, atol=0)


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
