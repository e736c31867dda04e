"""The app as a shared server, without a browser: visitor seats (wnb/seats.py) and the kernel culling that
notebooks/voila.json (used by `make app`, and copied by binder/postBuild) configures."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import ROOT

from wnb.app import seats

# a process that claims a seat the way the app notebook does (`from wnb.app import seats`), says so, then
# waits for a line on its input and ends normally (as a kernel does when it is shut down)
CLAIMER = textwrap.dedent("""
    import sys
    from wnb.app import seats
    claim = seats.claim(sys.argv[2], limit=int(sys.argv[3]))
    print("granted" if claim.granted else f"refused {claim.visitors}/{claim.limit}", flush=True)
    if sys.argv[4] == "wait":
        sys.stdin.readline()
""")


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "seats"


def visitor(folder, limit=2, wait=True):
    """A separate process that claims a seat in ``folder``: (process, its first line)."""
    proc = subprocess.Popen([sys.executable, "-c", CLAIMER, str(ROOT / "wnb" / "app" / "seats.py"), str(folder), str(limit),
                             "wait" if wait else "exit"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def seat_files(folder) -> list[Path]:
    return sorted(folder.glob(f"*{seats.SUFFIX}"))


def stop(proc, sig=None):
    """End a visitor normally (a line on its input), or by signal ``sig``."""
    if sig is None:
        proc.stdin.write("end\n")
        proc.stdin.flush()
    else:
        proc.send_signal(sig)
    proc.wait(timeout=30)


def test_the_limit_refuses_the_next_visitor_and_a_release_frees_a_seat(folder):
    first, answer1 = visitor(folder)
    second, answer2 = visitor(folder)
    try:
        assert (answer1, answer2) == ("granted", "granted")
        assert len(seat_files(folder)) == 2
        refused = seats.claim(folder, limit=2)
        assert not refused.granted and (refused.visitors, refused.limit, refused.path) == (2, 2, None)
        assert len(seat_files(folder)) == 2
        page = seats.full_page(refused)
        assert "serving 2 visitors, its limit" in page and "try again in a few minutes" in page
        stop(first)  # a kernel that ends normally gives its seat back (atexit)
        assert len(seat_files(folder)) == 1
        mine = seats.claim(folder, limit=2)
        assert mine.granted and mine.visitors == 2 and mine.path.exists()
        assert seats.claim(folder, limit=2) == mine  # the cell run again: the same seat, not a second
        seats.release(mine)
        assert not mine.path.exists() and len(seat_files(folder)) == 1
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                stop(proc)


def test_a_killed_kernels_seat_is_reclaimed(folder):
    killed, answer = visitor(folder, limit=1)
    assert answer == "granted"
    stop(killed, signal.SIGKILL)  # no atexit: its file stays behind
    assert len(seat_files(folder)) == 1
    mine = seats.claim(folder, limit=1)
    assert mine.granted and seat_files(folder) == [mine.path]
    seats.release(mine)


def test_a_seat_whose_process_id_was_reused_is_free(folder):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder.mkdir()
        record = {"host": seats._HOST, "pid": live.pid, "start": seats._start_time(live.pid)}
        assert record["start"] is not None  # Linux: /proc/<pid>/stat
        (folder / f"x-{live.pid}{seats.SUFFIX}").write_text(json.dumps(record))
        assert not seats.claim(folder, limit=1).granted  # that process lives: its seat is taken
        record["start"] -= 1  # the same id, started at another time: another process
        (folder / f"x-{live.pid}{seats.SUFFIX}").write_text(json.dumps(record))
        mine = seats.claim(folder, limit=1)
        assert mine.granted and seat_files(folder) == [mine.path]
        seats.release(mine)
    finally:
        live.kill()
        live.wait()


def test_a_process_that_exits_gives_its_seat_back(folder):
    proc, answer = visitor(folder, wait=False)
    assert answer == "granted"
    proc.wait(timeout=30)
    assert seat_files(folder) == []


def test_the_default_limit_follows_the_memory(monkeypatch, folder):
    monkeypatch.delenv(seats.MAX_VISITORS_ENV, raising=False)
    assert 0 < seats.available_bytes() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(seats, "available_bytes", lambda: int(3.6 * seats.VISITOR_BYTES))
    assert seats.max_visitors() == 3
    # the private memory of the kernels with seats counts as theirs: (available + held) ÷ per visitor
    me = {"host": seats._HOST, "pid": os.getpid()}
    held = seats._private_bytes(os.getpid())
    assert held > 0
    assert seats.max_visitors([me]) == int((3.6 * seats.VISITOR_BYTES + held) // seats.VISITOR_BYTES)
    monkeypatch.setattr(seats, "available_bytes", lambda: 0)
    assert seats.max_visitors() == 1  # at least one
    monkeypatch.setenv(seats.MAX_VISITORS_ENV, "5")
    assert seats.max_visitors() == 5
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv(seats.MAX_VISITORS_ENV, bad)
        with pytest.raises(ValueError, match="WNB_APP_MAX_VISITORS must be a whole number"):
            seats.claim(folder)


def test_the_seats_folder_is_private(monkeypatch, tmp_path):
    monkeypatch.setenv(seats.SEATS_DIR_ENV, str(tmp_path / "mine"))
    assert seats.seats_folder() == tmp_path / "mine"
    assert (tmp_path / "mine").stat().st_mode & 0o077 == 0
    monkeypatch.delenv(seats.SEATS_DIR_ENV)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert seats.seats_folder() == tmp_path / "wnb-app"


def test_seats_load_without_torch():
    code = ("import sys; from wnb.app import seats; "
            "print(sorted(n for n in ('torch', 'numpy', 'pandas') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "wnb" / "app" / "seats.py")], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_app_notebook_claims_a_seat_before_it_builds_the_app():
    cells = json.loads((ROOT / "notebooks" / "app.ipynb").read_text())["cells"]
    first = "".join(cells[0]["source"])
    assert first.index("seats.claim()") < first.index("import wnb.widgets") < first.index("ww.App(threaded=True)")
    assert "if seat.granted:" in first and "seats.full_page(seat)" in first
    assert "if seat.granted:" in "".join(cells[1]["source"])


def test_voila_culls_kernels_of_closed_pages_within_two_minutes():
    config = json.loads((ROOT / "notebooks" / "voila.json").read_text())["MappingKernelManager"]
    assert 0 < config["cull_idle_timeout"] and config["cull_idle_timeout"] + config["cull_interval"] <= 120
    assert config["cull_connected"] is False and config["cull_busy"] is False  # an open page's kernel stays
    post_build = (ROOT / "binder" / "postBuild").read_text()
    assert "jupyter_server_config.json" in post_build  # Binder's jupyter_server reads culling from there


def test_binder_post_build_copies_the_culling_settings(tmp_path):
    """The postBuild lines that write jupyter_server_config.json, run with a temporary home folder."""
    lines = (ROOT / "binder" / "postBuild").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "jupyter_server_config.json" in line and "python" in line)
    snippet = "\n".join(lines[start:])
    snippet = snippet[:snippet.index("\nEOF") + 4]
    home = tmp_path / "home"
    (home / ".jupyter").mkdir(parents=True)
    (home / ".jupyter" / "jupyter_server_config.json").write_text('{"ServerApp": {"x": 1}}')
    subprocess.run(["bash", "-c", snippet], cwd=ROOT, env={**os.environ, "HOME": str(home)}, check=True)
    written = json.loads((home / ".jupyter" / "jupyter_server_config.json").read_text())
    voila = json.loads((ROOT / "notebooks" / "voila.json").read_text())
    assert written == {"ServerApp": {"x": 1}, "MappingKernelManager": voila["MappingKernelManager"]}
