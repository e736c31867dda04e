"""Time the Voila app in headless Chromium and measure its kernel's memory.

For each token budget: start Voila on notebooks/app.ipynb with an empty analysis cache (the bundled
model already converted to float32, as `make app` and Binder leave it) and time until the first
histogram is on the page (cold); stop, start again on the same cache (warm). Then, on the warm app:
re-select neurons in the table (time until the histogram, pair and WD-vs-MD plots are all redrawn),
switch to a layer never captured, compute the model overview, open the Sparsity tab (prune the default
layer) and the Sparse Expansion tab (16 experts), and sample the kernel's resident memory
(RSS of Voila's child processes) every 0.1 s throughout. Prints a table of each number against its
target (ratio ≤ 1 meets it).

    .venv/bin/python benchmarks/bench_app.py [--budgets small medium] [--reselect 6]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]
TARGETS = {"cold start → first plot (s)": 30.0, "warm start → first plot (s)": 10.0,
           "neuron re-selection (s)": 1.0, "peak kernel memory (GiB)": 2.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Voila:
    """Voila on the app in its own process group; kernel memory sampled in a thread."""

    def __init__(self, budget: str, cache: Path):
        self.port = free_port()
        env = {**os.environ, "WNB_BUDGET": budget, "WNB_CACHE": str(cache)}
        env.pop("WNB_STRICT", None)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("voila")), "app.ipynb", "--no-browser", "--Voila.ip=127.0.0.1",
             f"--port={self.port}", f"--Voila.config_file_paths={ROOT / 'notebooks'}"],
            cwd=ROOT / "notebooks", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Voila did not start")
                time.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.port}/"

    def _sample(self):
        parent = psutil.Process(self.proc.pid)
        while not self._stop.is_set():
            try:
                for child in parent.children(recursive=True):
                    try:
                        self.peak = max(self.peak, child.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            time.sleep(0.1)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def src(page, part):
    return page.locator(f".wnb-neurons .wnb-{part} img").first.get_attribute("src")


def wait_all_changed(page, before: dict, timeout_s=300):
    page.wait_for_function(
        """(old) => Object.entries(old).every(([part, s]) => {
               const i = document.querySelector('.wnb-neurons .wnb-' + part + ' img');
               return i && i.getAttribute('src') !== s; })""",
        arg=before, timeout=timeout_s * 1000)


def first_plot(browser, voila: Voila) -> float:
    page = browser.new_page(viewport={"width": 1400, "height": 1900})
    page.goto(voila.url, timeout=300_000)
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", timeout=300_000)
    page.wait_for_selector(".wnb-neurons .wnb-wd-md img", timeout=300_000)
    seconds = time.perf_counter() - voila.t0
    return seconds, page


def interact(page, reselect: int) -> dict:
    times = []
    parts = ("histogram", "pairs", "wd-md")
    for i in range(reselect):
        before = {p: src(page, p) for p in parts}
        t = time.perf_counter()
        page.select_option(".wnb-neurons .wnb-table select", index=i + 1)
        wait_all_changed(page, before)
        times.append(time.perf_counter() - t)
    before = {p: src(page, p) for p in parts}
    t = time.perf_counter()
    page.select_option(".wnb-neurons .wnb-layer select", label="model.layers.20.mlp.up_proj")
    wait_all_changed(page, before, 600)
    layer_s = time.perf_counter() - t
    page.click("text=Model overview")
    t = time.perf_counter()
    page.click("text=Compute overview")
    page.wait_for_selector(".wnb-overview-plot img", timeout=900_000)
    overview_s = time.perf_counter() - t
    t = time.perf_counter()
    page.click("text=Sparsity")
    page.wait_for_selector(".wnb-sparsity .wnb-errors img", timeout=900_000)
    sparsity_s = time.perf_counter() - t
    t = time.perf_counter()
    page.click("text=Sparse Expansion")
    page.wait_for_selector(".wnb-expansion .wnb-change img", timeout=900_000)
    expansion_s = time.perf_counter() - t
    return {"reselect": times, "layer": layer_s, "overview": overview_s, "sparsity": sparsity_s,
            "expansion": expansion_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", default=["small", "medium"])
    parser.add_argument("--reselect", type=int, default=6)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    import wnb
    from wnb.model.bundled import BUNDLED

    wnb.load_model(device="cpu")  # make sure the float32 copy exists in the user cache
    models = wnb.cache_dir() / "models"
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        for budget in args.budgets:
            cache = Path(tempfile.mkdtemp(prefix=f"wnb-bench-{budget}-"))
            (cache / "models").mkdir()
            os.symlink(models / f"{BUNDLED}-float32", cache / "models" / f"{BUNDLED}-float32")
            try:
                voila = Voila(budget, cache)
                cold, page = first_plot(browser, voila)
                page.close()
                voila.stop()
                cold_peak = voila.peak
                voila = Voila(budget, cache)
                warm, page = first_plot(browser, voila)
                more = interact(page, args.reselect)
                page.close()
                voila.stop()
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            peak = max(cold_peak, voila.peak) / 2**30
            rows.append((budget, cold, warm, statistics.median(more["reselect"]), max(more["reselect"]),
                         more["layer"], more["overview"], more["sparsity"], more["expansion"], peak))
        browser.close()

    load = os.getloadavg()[0]
    print(f"\nVoila app on the bundled model, {os.cpu_count()} CPU cores, load average {load:.1f} at the end\n")
    print("| budget | cold start → first plot (s) | warm start → first plot (s) | neuron re-selection, "
          "median / max (s) | new layer (s) | model overview (s) | Sparsity tab (s) | Sparse Expansion tab (s) "
          "| peak kernel memory (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b, cold, warm, med, worst, layer, ov, sp, ex, peak in rows:
        print(f"| {b} | {cold:.1f} ({cold / 30:.2f}× target) | {warm:.1f} ({warm / 10:.2f}×) | "
              f"{med:.2f} / {worst:.2f} ({med / 1:.2f}×) | {layer:.1f} | {ov:.1f} | {sp:.1f} | {ex:.1f} | "
              f"{peak:.2f} ({peak / 2:.2f}×) |")
    print("\nTargets: cold ≤ 30 s, warm ≤ 10 s, re-selection ≤ 1 s, memory < 2 GiB; ratio = measured / target.")
    print("Everything after the first plot runs on the warm app with a cold cache for that view.")


if __name__ == "__main__":
    main()
