"""The Claims tab of the Voila app and the claims page (``wnb claims``' claims.html) in headless Chromium: a
claim run from the tab draws its verdict, figure and downloads without an error; the page renders its
chips and figures and asks the network for nothing."""
from __future__ import annotations

import pytest
from helpers import run_cli
from test_browser import (  # noqa: F401
    READY_S,
    SHOTS,
    STEP_S,
    check_no_errors,
    page,
    voila_url,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_claims_tab(page):  # noqa: F811
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", state="attached", timeout=READY_S * 1000)
    page.click(".lm-TabBar-tab >> text=Claims")
    page.wait_for_selector(".wnb-claims .wnb-claims-table table", timeout=STEP_S * 1000)
    assert "not yet run" in page.inner_text(".wnb-claims .wnb-claims-table") or "holds" in page.inner_text(
        ".wnb-claims .wnb-claims-table")
    choice = ".wnb-claims .wnb-claim-choice select"
    value = page.evaluate("sel => [...document.querySelector(sel).options].map(o => o.value)"
                          ".find(v => v.startsWith('W2 '))", choice)  # "W2 · <the claim>" (shown with &nbsp;)
    page.select_option(choice, value=value)
    # a claim already cached (W1, by an earlier test sharing the cache) shows its figure at once: wait for the
    # kernel to show W2 before Run, and for Run's own words after it
    page.wait_for_function("() => document.querySelector('.wnb-claims .wnb-claim-section').innerText"
                           ".startsWith('W2')", timeout=STEP_S * 1000)
    page.locator(".wnb-claims button", has_text="Run this claim").click()
    page.wait_for_function("() => document.querySelector('.wnb-claims .wnb-status').innerText"
                           ".includes('done: W2')", timeout=READY_S * 1000)
    page.wait_for_selector(".wnb-claims .wnb-claim-figure img", timeout=STEP_S * 1000)
    section = page.inner_text(".wnb-claims .wnb-claim-section")
    assert "W2" in section and "rule" in section and ("comparable" in section)
    assert ".html" in page.inner_text(".wnb-claims .wnb-downloads")
    page.locator(".wnb-claims").screenshot(path=str(SHOTS / "20_claims.png"))
    check_no_errors(page, ".wnb-claims")
    page.locator(".wnb-claims button", has_text="Show in its tab").click()
    page.wait_for_selector(".wnb-neurons", state="visible", timeout=STEP_S * 1000)


def test_claims_page_is_self_contained(tmp_path, page):  # noqa: F811
    out = tmp_path / "claims"
    assert run_cli("claims", "--seq-len", "64", "--windows", "4", "--eval-windows", "2", "--budget", "small",
                   "--only", "W2", "N1", "-q", "--no-cache", "-o", out) == 0
    requests = []
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab = page.context.browser.new_page(viewport={"width": 1200, "height": 1600})  # a context of its own
    try:
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto((out / "claims.html").as_uri())
        assert tab.locator(".chip").count() >= 2 + 5  # the table's two rows and the legend
        assert tab.locator("section img").count() == 2
        assert all(tab.evaluate("img => img.naturalWidth", img.element_handle()) > 0
                   for img in tab.locator("section img").all())
        tab.screenshot(path=str(SHOTS / "21_claims_page.png"), full_page=True)
    finally:
        tab.close()
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
