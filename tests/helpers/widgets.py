"""Shared by the widgets tests in tests/unit and tests/integration."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import wnb
import wnb.app
import wnb.app.budgets
import wnb.app.costs
import wnb.app.layers
import wnb.app.session
import wnb.data
import wnb.experiments
import wnb.experiments.sweeps
import wnb.model
import wnb.tracing
import wnb.tracing.nll
import wnb.widgets as ww
from helpers import hooked_outputs as plain_hook
from wnb.app.session import Session

NORMAL_QUANTILES = stats.norm.ppf((np.arange(10**6) + 0.5) / 10**6)


USER_CACHE = wnb.cache_dir()  # before the fixtures point WNB_CACHE at a temporary folder


LAYER = "model.layers.1.mlp.gate_proj"


@pytest.fixture(autouse=True)
def isolated_widget_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WNB_STRICT", raising=False)


@pytest.fixture
def windows():
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 128, (8, 16), generator=g), torch.randint(0, 128, (2, 16), generator=g)


def make_session(lm, windows, seed=0):
    calib, held_out = windows
    return Session(lm=lm, calib=calib, held_out=held_out, budget="small", seed=seed)


def hooked_outputs(lm, name, windows):
    """:func:`helpers.hooked_outputs` as a float64 numpy array."""
    return plain_hook(lm, name, windows).double().numpy()


def table_rows(view):
    """(rank, neuron, wd) parsed from the pick list the user sees."""
    return [tuple(float(v) for v in label.split()[:3]) for label, _ in view.table.options]


@pytest.fixture
def app(tiny_llama, windows):
    app = ww.App(session=make_session(tiny_llama, windows))
    app.start()
    assert app.neurons.last_error is None, app.neurons.last_error
    return app
