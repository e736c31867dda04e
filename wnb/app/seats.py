"""Seats of the app server: each app kernel claims one before it loads a model, so a full server answers the
next visitor with a short page instead of running out of memory.

A seat is a file ``<host>-<pid>.seat`` in the seats folder (``$WNB_APP_SEATS_DIR``, else
``$XDG_RUNTIME_DIR/wnb-app``, else ``<temp folder>/wnb-app-<uid>``) holding the kernel's host, process id
and process start time. A seat is taken while that process lives: the kernel gives it back when it ends
(``atexit``), and the file of a kernel that was killed (or whose process id now names another process) is
removed by the next claim. Seats of another host cannot be checked and count as taken. Claims take a lock
on the folder, so two visitors arriving together cannot both take the last seat.

The limit is ``$WNB_APP_MAX_VISITORS``, else what the memory holds: (memory available now + the private
memory of the kernels holding seats) ÷ ``VISITOR_BYTES``, at least 1, so the limit does not shrink as
visitors load their models. "Available" is the smaller of the machine's MemAvailable and the container's
(cgroup) headroom; "private" is a process's anonymous resident memory (RssAnon): file pages such as the
model's weights are shared between kernels and already counted as available.

Standard library only: the app notebook loads this file before wnb itself (whose import brings in torch,
about 0.3 GiB), so the kernel of a refused visitor stays small.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MAX_VISITORS_ENV = "WNB_APP_MAX_VISITORS"
SEATS_DIR_ENV = "WNB_APP_SEATS_DIR"
VISITOR_BYTES = 3 << 29  # 1.5 GiB: an app kernel with the bundled model, with room for a job (README)
SUFFIX = ".seat"


_HOST = socket.gethostname()


@dataclass(frozen=True)
class Claim:
    """The answer to :func:`claim`: ``granted``, how many kernels hold seats (this one included when granted),
    the limit, and the seat's file (None when refused)."""

    granted: bool
    visitors: int
    limit: int
    path: Path | None = None


def seats_folder(folder: Path | str | None = None) -> Path:
    """The folder of seat files: ``folder`` if given, else from the environment (see the module's text);
    created private to this user."""
    chosen = str(folder or "").strip() or os.environ.get(SEATS_DIR_ENV, "").strip()
    runtime = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if chosen:
        folder = Path(chosen).expanduser()
    elif runtime and os.path.isdir(runtime):
        folder = Path(runtime) / "wnb-app"
    else:
        folder = Path(tempfile.gettempdir()) / f"wnb-app-{_uid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.is_symlink() or (hasattr(os, "getuid") and folder.stat().st_uid != os.getuid()):
        raise ValueError(f"the seats folder {folder} belongs to another user; set ${SEATS_DIR_ENV} to a folder "
                         "of your own")
    return folder


def claim(folder: Path | str | None = None, limit: int | None = None) -> Claim:
    """Take a seat for this process if fewer than ``limit`` (default :func:`max_visitors`) are taken.

    A process that already holds a seat keeps it (the notebook cell ran again). A granted seat is given back
    when the process ends, or by :func:`release`.
    """
    folder = seats_folder(folder)
    mine = folder / _seat_name(_HOST, os.getpid())
    with _locked(folder):
        live = _live_seats(folder)
        if limit is None:
            limit = max_visitors(live.values())
        if mine in live:
            return Claim(True, len(live), limit, mine)
        if len(live) >= limit:
            return Claim(False, len(live), limit)
        tmp = mine.with_name(f".{mine.name}.tmp")
        tmp.write_text(json.dumps(_record(os.getpid())))
        os.replace(tmp, mine)
    atexit.register(release, mine, os.getpid())
    return Claim(True, len(live) + 1, limit, mine)


def release(seat: Path | str | Claim | None, pid: int | None = None) -> None:
    """Give a seat back (its file is removed); only the process that claimed it does (``pid``, default this
    process), so a forked child ending does not free its parent's seat."""
    path = seat.path if isinstance(seat, Claim) else seat
    if path is None or (pid is not None and pid != os.getpid()):
        return
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()


def max_visitors(seats=()) -> int:
    """``$WNB_APP_MAX_VISITORS``, else what the memory holds: (memory available now + the private memory of
    the processes holding ``seats``) ÷ ``VISITOR_BYTES``, at least 1."""
    text = os.environ.get(MAX_VISITORS_ENV, "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"${MAX_VISITORS_ENV} must be a whole number of visitors, at least 1; got {text[:40]!r}")
        return int(text)
    held = sum(_private_bytes(seat["pid"]) for seat in seats if seat.get("host") == _HOST)
    return max(1, (available_bytes() + held) // VISITOR_BYTES)


def full_page(claim: Claim) -> str:
    """The HTML shown instead of the app when every seat is taken."""
    visitors = f"{claim.visitors} visitor{'s' if claim.visitors != 1 else ''}"
    return ("<div class='wnb-server-full' style='max-width:640px;margin:48px auto;font-family:sans-serif'>"
            "<h2>wnb · Wasserstein neurons</h2>"
            f"<p><b>This server is busy: it is serving {visitors}, its limit.</b> Each visitor's session holds a "
            "language model in memory, so no more fit for now.</p>"
            "<p>Please try again in a few minutes: a seat frees up a minute or two after a visitor closes their "
            "page. <a href=''>Try again</a></p></div>")


def available_bytes() -> int:
    """Memory available now: MemAvailable, capped by the cgroup's limit minus its usage (containers)."""
    found = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            limit = int(Path(limit_file).read_text().strip())  # "max": no limit (ValueError)
            if limit < 1 << 60:
                found.append(max(0, limit - int(Path(usage_file).read_text().strip())))
    return min(found) if found else 4 << 30


# ---------------------------------------------------------------- seat files


def _uid() -> str:
    return str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")


def _seat_name(host: str, pid: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9.-]', '_', host)[:64]}-{pid}{SUFFIX}"


def _record(pid: int) -> dict:
    return {"host": _HOST, "pid": pid, "start": _start_time(pid)}


def _live_seats(folder: Path) -> dict[Path, dict]:
    """The seats whose processes live; the files of the others are removed."""
    live = {}
    for path in folder.glob(f"*{SUFFIX}"):
        try:
            seat = json.loads(path.read_text())
        except (OSError, ValueError):
            seat = None  # unreadable: not a seat
        if isinstance(seat, dict) and _alive(seat):
            live[path] = seat
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return live


def _alive(seat: dict) -> bool:
    if seat.get("host") != _HOST:
        return True  # another machine's: cannot tell
    pid = seat.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name != "nt":  # os.kill(pid, 0) would end the process on Windows
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, another user's
    start = _start_time(pid)
    return start is None or seat.get("start") is None or start == seat["start"]


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused process id."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _private_bytes(pid: int) -> int:
    """A process's anonymous resident memory (Linux; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the folder's lock file (POSIX ``flock``; elsewhere no lock)."""
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
