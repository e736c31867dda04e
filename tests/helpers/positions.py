"""Shared by the positions tests in tests/unit and tests/integration."""
from __future__ import annotations

import torch


def hook_outputs(lm, layers, windows):
    """Outputs of ``layers`` from one full forward with plain PyTorch hooks (no nnsight)."""
    seen = {n: [] for n in layers}
    handles = [lm.model.get_submodule(n).register_forward_hook(
        lambda mod, args, out, _n=n: seen[_n].append(out.reshape(-1, out.shape[-1]).detach().clone())) for n in layers]
    with torch.no_grad():
        lm.model(windows)
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def by_hand_without_first(y, seq_len, skip=1):
    return y.view(-1, seq_len, y.shape[1])[:, skip:].reshape(-1, y.shape[1])
