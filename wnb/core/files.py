"""Files written whole or not at all: atomic replacement, SHA-256 of a file, and the clean-up of the
temporaries a killed writer left behind.

A temporary is named ``.wnb-tmp.<host>.<pid>.<name>.<random>`` so that a later run, on this or another
host sharing the folder, can tell whether its writer is gone.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

TMP_PREFIX = ".wnb-tmp."  # temporaries: .wnb-tmp.<host>.<pid>.<name>.<random> (host without dots: _host_tag)
STALE_SECONDS = 600  # a temporary of a live process of this host whose start time is unknown: kept this long
OTHER_HOST_SECONDS = 86_400  # a temporary of another host (or of an older wnb, which named no host): kept a day
RECYCLED_MARGIN = 60  # a process started this long after a temporary's last write cannot be its writer


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    Works for a file or a folder, so a reader never sees a half-written result. An existing folder is
    never deleted before the new one is in place: on Linux the two are swapped in one step
    (``renameat2(RENAME_EXCHANGE)``); elsewhere the old folder is renamed aside, the new one renamed in
    (the old one put back if that fails), and only then is the old one deleted. The temporary folder's
    name (``.wnb-tmp.<host>.<pid>.<name>.<random>``) lets a later run remove it if this process is killed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{_host_tag()}.{os.getpid()}.{path.name[:100]}.",
                                dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.exists() and not path.is_symlink() and (path.is_dir() or target.is_dir()):
            _swap_in(target, path, tmp / f"{path.name}.old")
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, path: Path, aside: Path) -> None:
    """Put ``new`` at ``path`` (which exists); what was at ``path`` ends at ``new`` or ``aside`` (to be deleted)."""
    if _exchange(new, path):
        return
    os.replace(path, aside)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(aside, path)
        raise


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where it is not available
    (another system, an old C library or kernel, a file system without it) or fails: nothing was changed."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _renameat2():
    import ctypes

    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes (read in 8 MiB pieces), as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def remove_stale_temporaries(folder: Path, depth: int = 0) -> list[Path]:
    """Remove the temporaries :func:`atomic_path` left in ``folder`` (and ``depth`` levels below) when
    their writer was killed: only folders of wnb's own naming (:func:`_is_stale` says which). Never raises
    for a name, however odd. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        try:
            if entry.is_symlink() or not entry.is_dir():
                continue
            if entry.name.startswith(TMP_PREFIX):
                if _is_stale(entry):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
            elif depth > 0:
                removed += remove_stale_temporaries(entry, depth - 1)
        except (OSError, ValueError):
            continue
    return removed


def _host_tag() -> str:
    """This machine's name as it appears in temporaries' names: letters, digits, ``-`` and ``_`` kept, every
    other character (the dots of a domain name too) written ``%XX``, so the name splits at dots; a long
    name is shortened to a hash."""

    host = socket.gethostname() or "localhost"
    tag = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "".join(f"%{b:02X}" for b in c.encode())
                  for c in host)
    return tag if len(tag) <= 64 else "h" + hashlib.sha256(host.encode()).hexdigest()[:16]


def _is_stale(tmp: Path) -> bool:
    """Whether a temporary's writer is gone. ``.wnb-tmp.<host>.<pid>.…`` of this host: when no process
    ``pid`` runs; when one does, not while it started before the temporary was last written (its writer),
    but when it started well after (a recycled pid), and otherwise (start time unknown) after
    ``STALE_SECONDS`` untouched. Of another host, whose processes cannot be seen from here, and of an
    older wnb's ``.wnb-tmp.<pid>.…``: after ``OTHER_HOST_SECONDS`` untouched. Names of no such form are
    never stale."""
    parts = tmp.name[len(TMP_PREFIX):].split(".")
    ours = len(parts) >= 3 and parts[0] == _host_tag() and _pid(parts[1]) is not None
    if not ours and not ((len(parts) >= 3 and _pid(parts[1]) is not None) or _pid(parts[0]) is not None):
        return False
    age = _untouched_seconds(tmp)
    if age is None:
        return False
    if not ours:
        return age > OTHER_HOST_SECONDS
    pid = _pid(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    except (OSError, OverflowError, ValueError):
        return False
    started, written = _process_start(pid), time.time() - age
    if started is not None and started < written:
        return False  # running since before the last write: its writer
    if started is not None and started > written + RECYCLED_MARGIN:
        return True  # started after its writer's last write: the pid was reused
    return age > STALE_SECONDS


def _pid(text: str) -> int | None:
    """A process id written in ASCII digits, within what systems use (never 0: kill(0) means our group)."""
    if not (0 < len(text) <= 10 and text.isascii() and text.isdigit()):
        return None
    pid = int(text)
    return pid if 0 < pid < 2 ** 31 else None


def _untouched_seconds(tmp: Path) -> float | None:
    """Seconds since anything in the temporary folder was last modified (None if it cannot be read)."""
    try:
        newest = tmp.stat().st_mtime
        for root, dirs, files in os.walk(tmp):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    except OSError:
        return None
    return time.time() - newest


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch, rounded down), from Linux's /proc; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return started if started <= time.time() + 1 else None  # in the future: this system's clocks disagree
