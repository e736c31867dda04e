"""Shared by the cli tests in tests/unit and tests/integration."""
from __future__ import annotations

import json

import wnb
import wnb.app
import wnb.app.costs
import wnb.app.layers
import wnb.app.session
import wnb.cli
import wnb.compression
import wnb.experiments
import wnb.model
import wnb.model.bundled
import wnb.model.lm
import wnb.tracing
from helpers import run_cli

GATE, UP, DOWN = (f"model.layers.1.mlp.{leaf}" for leaf in ("gate_proj", "up_proj", "down_proj"))


SMALL = ["--seq-len", "64", "--windows", "4", "--eval-windows", "1", "-q"]


run = run_cli


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def windows(seq_len=64, n_calib=4, n_eval=1, seed=0):
    lm = wnb.load_model(device="cpu")
    return lm, *wnb.token_windows(lm, wnb.load_corpus(), seq_len, n_calib, n_eval, seed)
