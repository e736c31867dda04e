"""``wnb claims``: listed, and bad arguments refused with exit 2 before the model loads."""
from __future__ import annotations

import pytest
from helpers import run_cli

import wnb.cli.claims
import wnb.model.loading
from wnb import cli


def test_listed_in_help(capsys):
    assert cli.COMMANDS["claims"].run is wnb.cli.claims.run
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "claims" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--only", "W9"], "invalid choice: 'W9'"),
    (["--only"], "expected at least one argument"),
    (["--budget", "huge"], "invalid choice: 'huge'"),
    (["--eval-windows", "0"], "--eval-windows must be at least 1"),
])
def test_bad_arguments_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr(wnb.model.loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    assert run_cli("claims", *argv, "-o", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_lower_case_ids_are_read_as_the_registrys():
    args = cli.build_parser().parse_args(["claims", "--only", "w3", "n2"])
    assert args.only == ["W3", "N2"]
