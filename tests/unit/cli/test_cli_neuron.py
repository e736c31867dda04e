"""``wnb neuron`` (one HTML page per neuron and its tables) and ``wnb score --contexts`` on the bundled model."""

import pytest
from helpers import run_cli

LAYER = "model.layers.1.mlp.gate_proj"
SMALL = ["--seq-len", "64", "--windows", "4", "--eval-windows", "1", "-q"]


run = run_cli







@pytest.mark.parametrize("argv, message", [
    (["neuron", "--layer", LAYER, "--neuron", "-1"], "--neuron"),
    (["neuron", "--layer", LAYER, "--neuron", "1", "--skip-first", "-2"], "--skip-first"),
    (["score", "--contexts", "0"], "--contexts"),
    (["score", "--contexts", "5", "--no-cache"], "needs the cache"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    assert run(*argv, "-o", tmp_path / "x") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
