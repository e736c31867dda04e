"""The Voila app in headless Chromium (Debian's package, `make chromium`; never `playwright install`).

Starts Voila on notebooks/app.ipynb on a free port of 127.0.0.1 with the small budget, waits for the
widgets, changes the neuron and the layer like a user, checks the plots change and that no error or
traceback reaches the page, and saves screenshots under test-output/browser/.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]
SHOTS = ROOT / "test-output" / "browser"
READY_S = 240  # first start on a cold cache: model conversion + one capture, on a busy 2-core machine
STEP_S = 120
# Python's error names, Voila's cell-error banner, and a widget view whose model is gone (a closed
# progress bar left in an output area); plain words such as "error after pruning" are fine.
BAD_TEXT = re.compile(r"Traceback|\b[A-Z]\w*Error\b|\bException\b|There was an error|Loading widget|"
                      r"Error displaying widget")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def voila_url():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (Debian's chromium package)")
    port = free_port()
    env = {**os.environ, "WNB_BUDGET": "small"}
    env.pop("WNB_STRICT", None)  # the app as users get it: errors shown in panels
    voila = Path(sys.executable).with_name("voila")
    SHOTS.mkdir(parents=True, exist_ok=True)
    log = open(SHOTS / "voila.log", "w")
    proc = subprocess.Popen([str(voila), "app.ipynb", "--no-browser", "--Voila.ip=127.0.0.1", f"--port={port}",
                             f"--Voila.config_file_paths={ROOT / 'notebooks'}"],
                            cwd=ROOT / "notebooks", env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Voila did not start (exit code {proc.poll()})")
                time.sleep(0.3)
        yield url
    finally:
        # Voila and the kernels it started share one process group, led by proc.pid.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


@pytest.fixture(scope="module")
def page(voila_url):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1900})
        page.goto(voila_url, timeout=READY_S * 1000)
        yield page
        browser.close()


def src(page, part: str, view: str = "neurons") -> str:
    return page.locator(f".wnb-{view} .wnb-{part} img").first.get_attribute("src")


def wait_changed(page, part: str, before: str, view: str = "neurons") -> str:
    page.wait_for_function(
        "([sel, old]) => { const i = document.querySelector(sel); return i && i.getAttribute('src') !== old; }",
        arg=[f".wnb-{view} .wnb-{part} img", before], timeout=STEP_S * 1000)
    return src(page, part, view)


def check_no_errors(page, scope: str = "body"):
    errors = page.locator(f"{scope} .wnb-error")
    assert errors.count() == 0, errors.all_inner_texts()
    assert page.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    # the corpus (Python's documentation) itself says "AttributeError": leave out the texts it shows
    text = page.evaluate("""([sel]) => { const node = document.querySelector(sel).cloneNode(true);
        node.querySelectorAll('.wnb-reading, .wnb-expert-reading').forEach(n => n.remove());
        document.body.appendChild(node); const text = node.innerText; node.remove(); return text; }""", [scope])
    assert not BAD_TEXT.search(text), BAD_TEXT.search(text).group(0) + " on the page"
    errors_in_reading = page.locator(f"{scope} .wnb-reading .wnb-error, {scope} .wnb-expert-reading .wnb-error")
    assert errors_in_reading.count() == 0


def summary(page, view: str = "neurons") -> str:
    return page.inner_text(f".wnb-{view} .wnb-summary")


def test_app_in_chromium(page):
    # ready: the neuron table is filled and the histogram of the rank-1 neuron is drawn
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", timeout=READY_S * 1000)
    page.wait_for_selector(".wnb-neurons .wnb-table select option", state="attached", timeout=STEP_S * 1000)
    assert page.locator(".wnb-neurons .wnb-table select option").count() == 200
    assert page.locator(".wnb-neurons .wnb-pairs img").count() == 1
    assert page.locator(".wnb-neurons .wnb-wd-md img").count() == 1
    assert "rank 1 of 1536" in summary(page)
    assert page.locator(".wnb-neurons .wnb-layer select").input_value() == "FFN · model.layers.1.mlp.gate_proj"
    page.screenshot(path=str(SHOTS / "1_start.png"), full_page=True)
    check_no_errors(page)

    # another neuron, picked in the table
    hist, pairs, wd_md = src(page, "histogram"), src(page, "pairs"), src(page, "wd-md")
    fifth = page.locator(".wnb-neurons .wnb-table select option").nth(4).inner_text().split()
    page.select_option(".wnb-neurons .wnb-table select", index=4)
    hist = wait_changed(page, "histogram", hist)
    wait_changed(page, "pairs", pairs)
    wait_changed(page, "wd-md", wd_md)  # the selected neuron is circled there too
    page.wait_for_function("() => document.querySelector('.wnb-neurons .wnb-summary').innerText"
                           ".includes('rank 5 of')", timeout=STEP_S * 1000)
    assert f"neuron {fifth[1]}" in summary(page)
    page.wait_for_function("([n]) => document.querySelector('.wnb-neurons').innerText.includes(`_neuron${n}_small_seed0.png`)",
                           arg=[fifth[1]], timeout=STEP_S * 1000)  # the download links follow the neuron
    page.screenshot(path=str(SHOTS / "2_neuron.png"), full_page=True)

    # another neuron, typed into the neuron box
    box = page.locator(".wnb-neurons .wnb-neuron input")
    box.fill("7")
    box.press("Enter")
    hist = wait_changed(page, "histogram", hist)
    page.wait_for_function("() => document.querySelector('.wnb-neurons .wnb-summary').innerText"
                           ".includes('neuron 7 ')", timeout=STEP_S * 1000)

    # another layer: a down_proj with 576 neurons
    page.select_option(".wnb-neurons .wnb-layer select", label="FFN · model.layers.3.mlp.down_proj")
    page.wait_for_function("() => document.querySelector('.wnb-neurons .wnb-summary').innerText"
                           ".includes('of 576')", timeout=STEP_S * 1000)
    wait_changed(page, "histogram", hist)
    page.wait_for_function("() => document.querySelector('.wnb-neurons .wnb-downloads').innerText"
                           ".includes('wd_md_model.layers.3')", timeout=STEP_S * 1000)
    assert "rank 1 of 576" in summary(page)
    page.screenshot(path=str(SHOTS / "3_layer.png"), full_page=True)
    check_no_errors(page)

    # a wrong layer name gives a readable message in the panel, not a traceback
    other = page.locator(".wnb-neurons .wnb-other-layer input")
    other.fill("model.layers.3.mlp.gate_prj")
    other.press("Enter")
    page.wait_for_selector(".wnb-neurons .wnb-error", timeout=STEP_S * 1000)
    message = page.inner_text(".wnb-neurons .wnb-error")
    assert "is not a linear layer" in message and "model.layers.3.mlp.gate_proj" in message
    assert "Traceback" not in page.inner_text("body")
    page.screenshot(path=str(SHOTS / "4_error.png"), full_page=True)


def test_reading_a_neuron(page):
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", timeout=READY_S * 1000)
    page.click(".wnb-reading-box >> text=What it reads")
    tails = ".wnb-neurons .wnb-tails span[title]"  # highlighted tokens carry their value on hover
    page.wait_for_selector(tails, timeout=STEP_S * 1000)
    text = page.inner_text(".wnb-neurons .wnb-tails")
    assert "Highest outputs" in text and "Lowest outputs" in text
    assert page.locator(tails).count() >= 2
    before = page.inner_text(".wnb-neurons .wnb-tails")
    page.select_option(".wnb-neurons .wnb-table select", index=2)  # click another neuron: the section follows
    page.wait_for_function("([old]) => document.querySelector('.wnb-neurons .wnb-tails').innerText !== old",
                           arg=[before], timeout=STEP_S * 1000)
    page.fill(".wnb-neurons .wnb-probe-text textarea", "The <b>cat</b> & the dog sat on the mat.")
    page.click(".wnb-neurons button:has-text('Highlight')")
    page.wait_for_selector(".wnb-neurons .wnb-probe span[title]", timeout=STEP_S * 1000)
    probe = page.inner_text(".wnb-neurons .wnb-probe")
    assert "<b>cat</b>" in probe and "&" in probe  # shown as text, not as markup
    assert page.locator(".wnb-neurons .wnb-probe b").count() == 0
    page.screenshot(path=str(SHOTS / "4b_reading.png"), full_page=True)
    check_no_errors(page, ".wnb-neurons")


def test_sparsity_and_expansion_tabs(page):
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", timeout=READY_S * 1000)
    page.click("text=Sparsity")
    page.wait_for_selector(".wnb-sparsity .wnb-pruned-histogram img", timeout=READY_S * 1000)
    page.wait_for_selector(".wnb-sparsity .wnb-errors img", timeout=STEP_S * 1000)
    before = src(page, "pruned-histogram", "sparsity")
    page.click(".wnb-sparsity >> text=magnitude")
    wait_changed(page, "pruned-histogram", before, "sparsity")
    page.wait_for_function("() => document.querySelector('.wnb-sparsity .wnb-summary').innerText"
                           ".includes('magnitude 50%')", timeout=STEP_S * 1000)
    page.wait_for_function("() => document.querySelector('.wnb-sparsity .wnb-downloads').innerText"
                           ".includes('_magnitude_50pct_small_seed0.csv')", timeout=STEP_S * 1000)
    page.screenshot(path=str(SHOTS / "5_sparsity.png"), full_page=True)
    check_no_errors(page, ".wnb-sparsity")
    page.click("text=Sparse Expansion")
    page.wait_for_selector(".wnb-expansion .wnb-experts img", timeout=READY_S * 1000)
    page.wait_for_selector(".wnb-expansion .wnb-ri img", timeout=STEP_S * 1000)
    page.wait_for_selector(".wnb-expansion .wnb-change img", timeout=STEP_S * 1000)
    page.screenshot(path=str(SHOTS / "6_expansion.png"), full_page=True)
    check_no_errors(page, ".wnb-expansion")


def test_cancel_a_running_sweep(page):
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", state="attached", timeout=READY_S * 1000)
    page.click("text=Sparsity")
    page.wait_for_selector(".wnb-sparsity .wnb-pruned-histogram img", timeout=READY_S * 1000)
    page.select_option(".wnb-sparsity .wnb-scope select", label="every FFN layer")  # a long sweep
    run = page.locator(".wnb-sparsity button", has_text="Run sweep")
    run.click()
    # the size guard may ask first (its estimate says how long); then the second press goes ahead
    page.wait_for_function("() => { const v = document.querySelector('.wnb-sparsity');"
                           " return v.innerText.includes('Press Run sweep again') || /run \\d+ of \\d+: (dense|magn)/"
                           ".test(v.querySelector('.wnb-job').innerText); }", timeout=STEP_S * 1000)
    if "Press Run sweep again" in page.inner_text(".wnb-sparsity"):
        page.screenshot(path=str(SHOTS / "7a_sweep_estimate.png"), full_page=True)
        page.locator(".wnb-sparsity button", has_text="Run sweep").click()
    cancel = page.locator(".wnb-sparsity button", has_text="Cancel")
    cancel.wait_for(timeout=STEP_S * 1000)
    page.wait_for_function("() => document.querySelector('.wnb-sparsity .wnb-job').innerText.includes('run ')",
                           timeout=STEP_S * 1000)  # the job's bar counts its runs
    page.screenshot(path=str(SHOTS / "7_sweep_running.png"), full_page=True)
    cancel.click()
    page.wait_for_function("() => document.querySelector('.wnb-sparsity').innerText.includes('cancelled')",
                           timeout=STEP_S * 1000)
    page.locator(".wnb-sparsity button", has_text="Run sweep").wait_for(timeout=STEP_S * 1000)
    page.screenshot(path=str(SHOTS / "8_sweep_cancelled.png"), full_page=True)
    check_no_errors(page, ".wnb-sparsity")


def dense_entries() -> dict[str, float]:
    """The cache entries that assume the dense model, with their modification times."""
    from wnb.core import cache

    root = cache.cache_dir()
    return {str(p.relative_to(root)): p.stat().st_mtime for kind in ("capture", "neuron_table", "held_capture",
                                                                      "pruned_weight", "overview", "layer_study")
            for p in (root / kind).glob("*.safetensors")}


def test_the_tab_is_inert_while_its_sweep_runs(page):
    """While a sweep holds the pruned model, changing the same tab's layer and method does nothing on the
    server: the controls come back, nothing is written under a dense key, and what the page shows
    afterwards is what it showed before (the dense model's)."""
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", state="attached", timeout=READY_S * 1000)
    page.click(".lm-TabBar-tab >> text=Sparsity")
    page.wait_for_selector(".wnb-sparsity .wnb-pruned-histogram img", timeout=READY_S * 1000)
    layer = page.locator(".wnb-sparsity .wnb-layer select").input_value()
    shown = page.inner_text(".wnb-sparsity .wnb-summary")
    page.select_option(".wnb-sparsity .wnb-scope select", label="every FFN layer")  # a long sweep
    page.locator(".wnb-sparsity button", has_text="Run sweep").click()
    page.wait_for_function("() => { const v = document.querySelector('.wnb-sparsity');"
                           " return v.innerText.includes('Press Run sweep again') || /run \\d+ of \\d+: (dense|magn)/"
                           ".test(v.querySelector('.wnb-job').innerText); }", timeout=STEP_S * 1000)
    if "Press Run sweep again" in page.inner_text(".wnb-sparsity"):  # the size guard asked: the second press
        page.locator(".wnb-sparsity button", has_text="Run sweep").click()
    page.wait_for_function("() => /run [2-9]\\d* of/.test(document.querySelector('.wnb-sparsity .wnb-job')"
                           ".innerText)", timeout=READY_S * 1000)  # past the dense run: the model is pruned now
    before = dense_entries()
    other = "model.layers.5.mlp.gate_proj"
    page.evaluate("""([sel, value]) => { const s = document.querySelector(sel); s.disabled = false;
        s.value = value; s.dispatchEvent(new Event('change', {bubbles: true})); }""",
                  [".wnb-sparsity .wnb-layer select", other])  # the page may send it even while disabled
    page.click(".wnb-sparsity >> text=wanda")
    page.wait_for_function("() => document.querySelector('.wnb-sparsity .wnb-status').innerText"
                           ".includes('not now')", timeout=STEP_S * 1000)
    page.wait_for_function("([sel, value]) => document.querySelector(sel).value === value",
                           arg=[".wnb-sparsity .wnb-layer select", layer], timeout=STEP_S * 1000)
    page.screenshot(path=str(SHOTS / "7b_inert_while_running.png"), full_page=True)
    page.locator(".wnb-sparsity button", has_text="Cancel").click()
    page.wait_for_function("() => document.querySelector('.wnb-sparsity').innerText.includes('cancelled')",
                           timeout=STEP_S * 1000)
    after = dense_entries()
    assert {k: v for k, v in after.items() if before.get(k) != v} == {}  # nothing written under a dense key
    assert page.locator(".wnb-sparsity .wnb-layer select").input_value() == layer
    assert page.inner_text(".wnb-sparsity .wnb-summary") == shown
    page.select_option(".wnb-sparsity .wnb-scope select", label="the selected layer only")


def test_overview_layer_map_opens_a_layer(page):
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", state="attached", timeout=READY_S * 1000)
    page.click(".lm-TabBar-tab >> text=Model overview")
    page.locator(".wnb-overview button", has_text="Compute overview").click()
    page.wait_for_selector(".wnb-overview .wnb-layer-map .wnb-map-cell", timeout=READY_S * 1000)
    assert page.locator(".wnb-overview .wnb-layer-map .wnb-map-cell").count() == 90  # 30 blocks x 3 kinds
    page.wait_for_function("() => document.querySelector('.wnb-overview .wnb-status').innerText"
                           ".includes('first-token (attention sink) neurons')", timeout=STEP_S * 1000)
    page.screenshot(path=str(SHOTS / "10_overview.png"), full_page=True)
    check_no_errors(page, ".wnb-overview")
    page.locator(".wnb-overview .wnb-map-cell[title^='model.layers.11.mlp.down_proj']").click()
    page.wait_for_function("() => document.querySelector('.wnb-neurons .wnb-summary').innerText"
                           ".includes('of 576')", timeout=STEP_S * 1000)
    page.wait_for_function("() => document.querySelector('.wnb-neurons .wnb-downloads').innerText"
                           ".includes('model.layers.11.mlp.down_proj')", timeout=STEP_S * 1000)
    check_no_errors(page, ".wnb-neurons")


def test_negative_differentiation_tab(page):
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", state="attached", timeout=READY_S * 1000)
    page.click(".lm-TabBar-tab >> text=Negative differentiation")
    page.locator(".wnb-negative button", has_text="Run").first.wait_for(timeout=STEP_S * 1000)
    page.locator(".wnb-negative button:text-is('Run')").click()
    page.wait_for_selector(".wnb-negative .wnb-negative-perplexity img", timeout=READY_S * 1000)
    page.wait_for_selector(".wnb-negative .wnb-negative-pairs img", timeout=STEP_S * 1000)
    page.wait_for_selector(".wnb-negative .wnb-negative-surprisal img", timeout=STEP_S * 1000)
    study = page.inner_text(".wnb-negative .wnb-negative-study")
    assert "wasserstein" in study and "matched" in study and "random" in study
    assert "study_sign_ablation" in page.inner_text(".wnb-negative .wnb-downloads")
    page.locator(".wnb-negative").screenshot(path=str(SHOTS / "11_negative.png"))
    check_no_errors(page, ".wnb-negative")


def test_downstream_tasks_in_the_expansion_tab(page):
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", state="attached", timeout=READY_S * 1000)
    page.click(".lm-TabBar-tab >> text=Sparse Expansion")
    page.wait_for_selector(".wnb-expansion .wnb-experts img", timeout=READY_S * 1000)
    page.fill(".wnb-expansion .wnb-tasks input[type=number]", "12")
    page.locator(".wnb-expansion button", has_text="Score tasks").click()
    page.wait_for_selector(".wnb-expansion .wnb-task-plot img", timeout=READY_S * 1000)
    text = page.inner_text(".wnb-expansion .wnb-tasks")
    assert "wnb_agreement" in text and "sparsegpt" in text and "expansion" in text
    page.locator(".wnb-expansion .wnb-tasks").screenshot(path=str(SHOTS / "12_tasks.png"))
    check_no_errors(page, ".wnb-expansion")


def test_settings_row_fits_an_800_pixel_window(page, voila_url):
    narrow = page.context.browser.new_page(viewport={"width": 800, "height": 1200})  # a second visitor
    try:
        narrow.goto(voila_url, timeout=READY_S * 1000)
        narrow.wait_for_selector(".wnb-neurons .wnb-histogram img", timeout=READY_S * 1000)
        narrow.screenshot(path=str(SHOTS / "9_narrow.png"))
        for control in ("model", "corpus", "budget", "seed"):
            box = narrow.locator(f".wnb-settings .wnb-setting-{control}").bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 800, (control, box)
        apply = narrow.locator(".wnb-settings button", has_text="Apply").bounding_box()
        assert apply["width"] >= 100 and apply["x"] + apply["width"] <= 800, apply
        check_no_errors(narrow)
    finally:
        narrow.close()
