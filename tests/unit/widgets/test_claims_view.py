"""The Claims tab driven like a user on a tiny Llama: lazy start, one claim run alone, every claim at once,
the table and downloads equal to the session's rows, the link to the claim's tab, and the cache (a new tab
shows what was computed without computing again)."""
from __future__ import annotations

import base64
import io
import re

import pandas as pd
import pytest
import torch

import wnb.experiments.claim_runner
import wnb.widgets as ww
from wnb.app.session import Session
from wnb.experiments.claim_runner import claims_frame
from wnb.experiments.claims import IDS


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WNB_STRICT", raising=False)


@pytest.fixture
def session(tiny_llama):
    g = torch.Generator().manual_seed(5)
    calib, held = torch.randint(0, 128, (8, 16), generator=g), torch.randint(0, 128, (3, 16), generator=g)
    return Session(lm=tiny_llama, calib=calib, held_out=held, budget="small")


def csv_from_link(value: str) -> pd.DataFrame:
    match = re.search(r'download="(claims_[^"]*\.csv)" href="data:text/csv;base64,([^"]+)"', value)
    assert match, value[:300]
    return pd.read_csv(io.BytesIO(base64.b64decode(match.group(2))))


def test_the_tab_is_listed_and_computes_nothing_when_opened(session, monkeypatch):
    app = ww.App(session=session)
    assert app.TITLES[5] == "Claims" and app.tabs.children[5] is app.claims
    monkeypatch.setattr(wnb.app.claims, "run_claim", lambda *a, **k: pytest.fail("a claim ran on opening the tab"))
    app.tabs.selected_index = 5
    assert app.claims.last_error is None, app.claims.last_error
    assert app.claims.rows == {} and "not yet run" in app.claims.table.value
    assert "0 of 13 claims cached" in app.claims.status.value


def test_one_claim_then_all_and_the_links(session, monkeypatch):
    app = ww.App(session=session)
    app.tabs.selected_index = 5
    view = app.claims
    view.choice.value = "W2"
    view.run_one.click()
    assert view.last_error is None, view.last_error
    assert list(view.rows) == ["W2"]
    row = session.claim_row("W2")  # cached: the same row
    assert row["verdict"] in view.table.value and "W2" in view.section.value
    assert view.pngs and "claim_W2" in view.pngs
    table = csv_from_link(view.downloads.value)
    assert table["id"].tolist() == ["W2"]
    assert table["value"].iloc[0] == pytest.approx(claims_frame([row])["value"].iloc[0])
    assert "Does it hold on" in base64.b64decode(
        re.search(r'href="data:text/html;base64,([^"]+)"', view.downloads.value).group(1)).decode()
    view.choice.value = "W3"
    view.goto.click()
    assert app.tabs.selected_index == app.TITLES.index("Sparsity")
    app.tabs.selected_index = 5
    view.run_all.click()
    assert view.last_error is None, view.last_error
    assert list(view.rows) == list(IDS) or set(view.rows) == set(IDS)
    verdicts = {r["id"]: r["verdict"] for r in view.rows.values()}
    assert verdicts["N3"] == "not run" and "tokenizer" in view.rows["N3"]["reason"]  # the tiny Llama has none
    assert csv_from_link(view.downloads.value)["id"].tolist() == list(IDS)
    # a new tab on the same session shows every claim from the cache, computing nothing
    monkeypatch.setattr(wnb.app.claims, "run_claim", lambda *a, **k: pytest.fail("computed again"))
    again = ww.App(session=Session(lm=session.lm, calib=session.calib, held_out=session.held_out, budget="small"))
    again.tabs.selected_index = 5
    assert set(again.claims.rows) == set(IDS) and again.claims.last_error is None


def test_the_estimate_counts_only_claims_not_cached(session):
    cost = session.claims_cost(["W1", "N2"])
    assert not cost["cached"] and cost["runs"] == 2 and cost["seconds"] > 0
    session.claim_row("W1", progress=False)
    assert session.claims_cost(["W1"]) == {"cached": True, "large": False}
    assert wnb.experiments.claim_runner.PLANS[session.claims_plan().name] is session.claims_plan()
