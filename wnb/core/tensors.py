"""Small facts about tensors that several packages need."""
from __future__ import annotations

import numpy as np
import torch


def tensor_version(x: torch.Tensor) -> int | None:
    """The tensor's in-place modification counter (None for inference-mode tensors, which have none)."""
    try:
        return x._version
    except RuntimeError:
        return None


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array of its own dtype (on the CPU, detached)."""
    return t.detach().cpu().numpy()
