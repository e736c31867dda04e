"""The app as a shared server, against a real Voila server and headless Chromium (Debian's package).

Voila serves notebooks/app.ipynb with the project's voila.json, the small budget, an empty cache (that still
finds the bundled model's converted copy), its own seats folder, a limit of one visitor, and culling
shortened on the command line (CULL_S idle, checked every INTERVAL_S) so the test stays short. Pages are
closed without their `beforeunload` event, as when a tab crashes or a laptop sleeps (or a visitor leaves
before the app has loaded): then only culling can end their kernels. Checks: the kernel of a closed page
ends within the culling time; an open page's kernel outlives it, however idle, and still answers; a second
visitor while the seat is taken gets the "server full" page from a small kernel; the seat is free again
once the first page is closed, and given back when its kernel ends. The memory of one app kernel after its
first plot, and of a "server full" page's kernel, is written to test-output/kernels/memory.txt (README).
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]
OUT = ROOT / "test-output" / "kernels"
CULL_S, INTERVAL_S = 15, 3
GONE_S = CULL_S + INTERVAL_S + 15  # idle time, one check, and the kernel's own shutdown (at most ~5 s + kill)
READY_S = 240  # first plot on an empty cache, on a busy 2-core machine
FULL_TEXT = "serving 1 visitor, its limit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A Voila process serving the app; its log, port and the helpers the tests ask it through."""

    def __init__(self, tmp: Path, name: str, extra_args=(), env=None):
        import wnb

        cache = tmp / "cache"
        (cache / "models").mkdir(parents=True)
        real = wnb.model.bundled.bundled_cache()
        (cache / "models" / real.name).symlink_to(real)
        self.seats = tmp / "seats"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "WNB_BUDGET": "small", "WNB_CACHE": str(cache), "WNB_APP_SEATS_DIR": str(self.seats),
               "WNB_APP_MAX_VISITORS": "1", **(env or {})}
        env.pop("WNB_STRICT", None)
        OUT.mkdir(parents=True, exist_ok=True)
        self.log_path = OUT / f"{name}.log"
        self.log = open(self.log_path, "w")
        voila = Path(sys.executable).with_name("voila")
        self.proc = subprocess.Popen(
            [str(voila), "app.ipynb", "--no-browser", "--Voila.ip=127.0.0.1", f"--port={self.port}",
             f"--Voila.config_file_paths={ROOT / 'notebooks'}", *extra_args],
            cwd=ROOT / "notebooks", env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"Voila did not start (exit code {self.proc.poll()}); see {self.log_path}")
                time.sleep(0.3)

    def stop(self):
        kernels = self.kernel_pids()
        try:  # Voila shuts its kernels down as it stops
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for kernel, pid in kernels.items():  # kernels run in sessions of their own: end any left over
            try:
                if kernel in (Path(f"/proc/{pid}") / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        self.log.close()

    def kernel_exists(self, kernel_id: str) -> bool:
        """Through Voila's REST API (GET /api/kernels/<id>)."""
        try:
            with urllib.request.urlopen(f"{self.url}api/kernels/{kernel_id}", timeout=10) as reply:
                return json.load(reply)["id"] == kernel_id
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    def kernel_pids(self) -> dict[str, int]:
        """{kernel id: process id} of the kernel processes this server started: its children whose command
        lines name a connection file, kernel-<id>.json."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            match = re.search(r"kernel-([0-9a-f-]{36})\.json", cmdline)
            if match and parent == self.proc.pid:
                found[match.group(1)] = int(entry.name)
        return found

    def wait_gone(self, kernel_id: str, timeout: float) -> float:
        """Seconds until the kernel is gone from the REST API and its process has ended; fails after timeout."""
        start = time.monotonic()
        while self.kernel_exists(kernel_id) or kernel_id in self.kernel_pids():
            if time.monotonic() - start > timeout:
                pytest.fail(f"kernel {kernel_id} still there {timeout:.0f} s later; see {self.log_path}")
            time.sleep(0.5)
        return time.monotonic() - start

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()


def kernel_id(page) -> str:
    return page.evaluate("() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")


def memory(pid: int) -> dict[str, int]:
    """VmRSS (resident), RssAnon (private) and RssFile (file pages, shared: the model's weights, libraries)
    of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name = line.split(":")[0]
        if name in ("VmRSS", "RssAnon", "RssFile"):
            found[name] = int(line.split()[1]) * 1024
    return found


def gib(sizes: dict[str, int]) -> str:
    return ", ".join(f"{name} {size / 2**30:.2f} GiB" for name, size in sizes.items())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (Debian's chromium package)")
    server = Server(tmp_path_factory.mktemp("kernels"), "voila",
                    [f"--MappingKernelManager.cull_idle_timeout={CULL_S}",
                     f"--MappingKernelManager.cull_interval={INTERVAL_S}"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def open_app(browser, server):
    """A visitor's page with the app's first plot drawn: (page, kernel id)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1900})
    page.goto(server.url, timeout=READY_S * 1000)
    page.wait_for_selector(".wnb-neurons .wnb-histogram img", timeout=READY_S * 1000)
    return page, kernel_id(page)


def test_closed_pages_lose_their_kernels_and_a_full_server_says_so(server, browser):
    # the first visitor takes the one seat and sees the app
    first, first_kernel = open_app(browser, server)
    loaded = time.monotonic()
    assert f"idle durations > {CULL_S} seconds at {INTERVAL_S} second intervals" in server.log_text()
    pids = server.kernel_pids()
    assert list(pids) == [first_kernel]
    app_memory = memory(pids[first_kernel])

    # a second visitor meanwhile: the "server full" page, from a kernel that loaded no model
    second = browser.new_page()
    second.goto(server.url, timeout=READY_S * 1000)
    second.wait_for_selector(f".wnb-server-full >> text={FULL_TEXT}", timeout=120 * 1000)
    assert second.locator(".wnb-neurons").count() == 0
    second_kernel = kernel_id(second)
    second.screenshot(path=str(OUT / "server_full.png"))
    assert set(server.kernel_pids()) == {first_kernel, second_kernel}
    full_memory = memory(server.kernel_pids()[second_kernel])
    assert full_memory["VmRSS"] < 0.25 * app_memory["VmRSS"]  # no torch, no model
    report = (f"app kernel after its first plot (bundled model, small budget, empty cache): {gib(app_memory)}\n"
              f"kernel of a 'server full' page: {gib(full_memory)}\n")
    (OUT / "memory.txt").write_text(report)
    print(report)
    second.close()  # no beforeunload: only culling ends its kernel
    took = server.wait_gone(second_kernel, GONE_S)
    print(f"closed page's kernel gone {took:.1f} s after the page closed")

    # the first page stays open and idle past the culling time: its kernel lives and still answers
    time.sleep(max(0.0, CULL_S + 2 * INTERVAL_S - (time.monotonic() - loaded)))
    assert server.kernel_exists(first_kernel) and list(server.kernel_pids()) == [first_kernel]
    before = first.locator(".wnb-neurons .wnb-histogram img").first.get_attribute("src")
    first.select_option(".wnb-neurons .wnb-table select", index=3)
    first.wait_for_function("([old]) => { const i = document.querySelector('.wnb-neurons .wnb-histogram img');"
                            " return i && i.getAttribute('src') !== old; }", arg=[before], timeout=120 * 1000)
    first.close()
    took = server.wait_gone(first_kernel, GONE_S)
    print(f"first page's kernel gone {took:.1f} s after the page closed")

    # its seat is free again: the next visitor's kernel takes it (its seat file appears), and that visitor
    # leaves while the app is still starting, before the page's widgets (and their beforeunload) exist
    third = browser.new_page()
    third.goto(server.url, wait_until="commit", timeout=READY_S * 1000)
    third.wait_for_selector("#jupyter-config-data", state="attached", timeout=READY_S * 1000)
    third_kernel = kernel_id(third)
    deadline = time.monotonic() + 120
    while not list(server.seats.glob(f"*-{server.kernel_pids().get(third_kernel, 0)}.seat")):
        assert time.monotonic() < deadline, "the next visitor's kernel took no seat"
        time.sleep(0.2)
    third.close()
    server.wait_gone(third_kernel, GONE_S + 60)  # it finishes starting the app first, then idles
    assert server.kernel_pids() == {}
    assert list(server.seats.glob("*.seat")) == []  # given back as the kernel ended
    from wnb.app import seats

    free = seats.claim(server.seats, limit=1)
    assert free.granted
    seats.release(free)


def test_voila_takes_culling_from_the_projects_voila_json(tmp_path):
    """Without command-line settings the server culls as notebooks/voila.json says (the page is fetched
    while the one seat is taken by this test process, so its kernel loads no model)."""
    config = json.loads((ROOT / "notebooks" / "voila.json").read_text())["MappingKernelManager"]
    from wnb.app import seats

    server = Server(tmp_path, "voila_config")
    try:
        mine = seats.claim(server.seats, limit=1)
        assert mine.granted
        with urllib.request.urlopen(server.url, timeout=120) as reply:
            page = reply.read().decode()
        assert FULL_TEXT in page
        assert (f"idle durations > {config['cull_idle_timeout']} seconds at {config['cull_interval']} second "
                "intervals") in server.log_text()
        seats.release(mine)
    finally:
        server.stop()
