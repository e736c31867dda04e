"""The cache's size limit: least recently used entries out.

The entries together are kept under ``$WNB_CACHE_MAX_BYTES`` (default 10 GiB; ``0`` for no limit): after a
write, the least recently used entries (``<cache>/<kind>/<key>.safetensors``; a read marks an entry used by
setting its modification time) are removed until the rest fit. Never removed: the entry just written,
entries read or written within the last ``IN_USE_SECONDS`` (a reader may still be at them), temporaries,
and the folders ``models/`` (the bundled model's converted copy) and ``tasks/``. An entry larger than the
limit by itself is not stored. Several processes may share one cache: an entry another process removed
first is simply gone.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from wnb.core.codec import SUFFIX
from wnb.core.files import TMP_PREFIX
from wnb.errors import WnbError

MAX_BYTES_ENV = "WNB_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 10 << 30
IN_USE_SECONDS = 90  # an entry read or written this recently is never evicted: a reader may still be at it
UNMANAGED = ("models", "tasks")  # the bundled model's converted copy, lm-eval task folders: never evicted
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def max_bytes() -> int | None:
    """The cache's size limit in bytes: ``$WNB_CACHE_MAX_BYTES`` (a number of bytes, or with a K, M, G or T
    suffix in binary units: ``10G``, ``500MiB``), default 10 GiB; ``0`` means no limit (None)."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", text.upper())
    if not match:
        raise WnbError(f"${MAX_BYTES_ENV} must be a size such as 10G, 500M or 2147483648 (bytes), or 0 for no "
                       f"limit; got {text[:40]!r}")
    limit = int(float(match.group(1)) * _UNITS[match.group(2)])
    return limit or None


def evict(root: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used cache entries of the cache at ``root`` until the entries total at
    most ``limit`` bytes.

    Never removes ``keep``, an entry used within the last ``IN_USE_SECONDS``, an entry used again while
    this runs, or anything outside ``<cache>/<kind>/<key>.safetensors`` (temporaries, ``models/``,
    ``tasks/``); so the cache may stay above the limit for a while. Entries that vanish meanwhile (another
    process evicted them) count as removed. Returns the paths this call removed.
    """
    entries = _entries(root)
    total = sum(size for _, size, _ in entries)
    removed: list[Path] = []
    recent = time.time_ns() - int(IN_USE_SECONDS * 1e9)
    for used, size, path in sorted(entries):
        if total <= limit or used > recent:
            break  # sorted by last use: the rest are in use too
        if keep is not None and path == Path(keep):
            continue
        try:
            if path.stat().st_mtime_ns != used:
                continue  # read again since the scan
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass  # another process removed it first
        except OSError:
            continue  # not ours to remove (a read-only copy): it stays counted
        total -= size
    return removed


def _entries(root: Path) -> list[tuple[int, int, Path]]:
    """``(last use in ns, size, path)`` of every evictable entry under ``root``."""
    found = []
    try:
        kinds = [k for k in os.scandir(root) if k.name not in UNMANAGED and not k.name.startswith((".", TMP_PREFIX))]
    except OSError:
        return found
    for kind in kinds:
        try:
            if not kind.is_dir(follow_symlinks=False):
                continue
            files = list(os.scandir(kind.path))
        except OSError:
            continue
        for f in files:
            if not f.name.endswith(SUFFIX) or f.name.startswith((".", TMP_PREFIX)):
                continue
            try:
                if f.is_file(follow_symlinks=False):
                    st = f.stat(follow_symlinks=False)
                    found.append((st.st_mtime_ns, st.st_size, Path(f.path)))
            except OSError:
                continue  # vanished meanwhile
    return found


def mark_used(path: Path) -> None:
    """Mark an entry used now (its modification time: access times are often not kept)."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:
        pass  # gone, or a read-only cache: it is still read


def size_text(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
