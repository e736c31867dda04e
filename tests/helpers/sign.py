"""Shared by the sign tests in tests/unit and tests/integration."""
from __future__ import annotations

import pytest
import torch

import wnb
import wnb.core
import wnb.core.inference


@pytest.fixture(scope="module")
def windows():
    gen = torch.Generator().manual_seed(7)
    return torch.randint(0, 128, (6, 24), generator=gen), torch.randint(0, 128, (6, 24), generator=gen)


@pytest.fixture(scope="module")
def scores(tiny_llama, windows):
    return wnb.wasserstein_scores(tiny_llama, windows[0], progress=False)
