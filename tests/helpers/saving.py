"""Shared by the saving tests in tests/unit and tests/integration."""
from __future__ import annotations

import pytest
import torch

ct = pytest.importorskip("compressed_tensors")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def logits_of(lm, ids):
    return lm.model(ids).logits
