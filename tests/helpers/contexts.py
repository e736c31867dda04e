"""Shared by the contexts tests in tests/unit and tests/integration."""
from __future__ import annotations

import numpy as np
import torch


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
