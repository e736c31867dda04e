"""On-disk cache: keyed by everything that changes a result, written atomically, safe to delete.

The location is ``$WNB_CACHE`` if set, else ``$XDG_CACHE_HOME/wnb`` (default ``~/.cache/wnb``).

Entries are safetensors files: the tensors of a result, and in the file's metadata a JSON description
of the rest (dicts, lists, tuples, numbers, strings, DataFrames), the key's parts and a SHA-256 of the
tensors. Nothing in an entry can run code when it is read (no pickle), and an entry whose checksum or
key does not match is rebuilt, never used: cache folders may be copied from other machines.

The entries together are kept under ``$WNB_CACHE_MAX_BYTES`` (default 10 GiB; ``0`` for no limit): after a
write, the least recently used entries (``<cache>/<kind>/<key>.safetensors``; a read marks an entry used by
setting its modification time) are removed until the rest fit. Never removed: the entry just written,
entries read or written within the last ``IN_USE_SECONDS`` (a reader may still be at them), temporaries,
and the folders ``models/`` (the bundled model's converted copy) and ``tasks/``. An entry larger than the
limit by itself is not stored. Several processes may share one cache: an entry another process removed
first is simply gone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

SUFFIX = ".safetensors"
FORMAT = "wnb-cache-1"
TMP_PREFIX = ".wnb-tmp."  # temporaries: .wnb-tmp.<host>.<pid>.<name>.<random> (host without dots: _host_tag)
STALE_SECONDS = 600  # a temporary of a live process of this host whose start time is unknown: kept this long
OTHER_HOST_SECONDS = 86_400  # a temporary of another host (or of an older wnb, which named no host): kept a day
RECYCLED_MARGIN = 60  # a process started this long after a temporary's last write cannot be its writer
MAX_BYTES_ENV = "WNB_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 10 << 30
IN_USE_SECONDS = 90  # an entry read or written this recently is never evicted: a reader may still be at it
UNMANAGED = ("models", "tasks")  # the bundled model's converted copy, lm-eval task folders: never evicted


class CacheWarning(UserWarning):
    """A result could not be stored in the cache (it was still returned)."""


class Uncached:
    """What a ``compute`` of :func:`cached` returns to hand back ``value`` without storing it (e.g. a
    result that assumes the dense model, computed while the model was not dense)."""

    def __init__(self, value: Any):
        self.value = value


def cache_dir() -> Path:
    root = os.environ.get("WNB_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "wnb"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from wnb.errors import WnbError

        raise WnbError(f"the wnb cache folder {path} cannot be created ({exc.strerror}); set WNB_CACHE to a "
                       "folder you can write") from exc
    if path not in _swept:
        _swept.add(path)
        remove_stale_temporaries(path, depth=2)
    return path


_swept: set[Path] = set()


class Key(str):
    """A cache key (a short hash) that remembers the JSON of the parts it was made from."""

    parts: str


def key(**parts: Any) -> Key:
    """A short stable hash of the keyword arguments (JSON with sorted keys; tensors by content)."""

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        return repr(value)

    text = json.dumps(encode(parts), sort_keys=True)
    made = Key(hashlib.sha256(text.encode()).hexdigest()[:20])
    made.parts = text
    return made


def text_digest(text: str) -> str:
    """A text's SHA-256 (hex): what cache keys hold of a corpus, never the text itself (an uploaded file
    must not be kept on the server inside a key's description)."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


# ---------------------------------------------------------------- temporaries

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
    import sys

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
    import socket

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


# ---------------------------------------------------------------- recording (the CLI copies entries)

_recorders: list[list[Path]] = []


@contextlib.contextmanager
def recording() -> Iterator[list[Path]]:
    """Collect the paths of the cache entries read or written inside the block (the CLI copies them
    into its output folder, so results made elsewhere can be opened in the app)."""
    paths: list[Path] = []
    _recorders.append(paths)
    try:
        yield paths
    finally:
        _recorders.remove(paths)


def _record(path: Path) -> None:
    for paths in _recorders:
        if path not in paths:
            paths.append(path)


# ---------------------------------------------------------------- entries

def entry_path(kind: str, cache_key: str) -> Path:
    return cache_dir() / kind / f"{cache_key}{SUFFIX}"


def cached(kind: str, cache_key: str, compute: Callable[[], Any], enabled: bool = True) -> Any:
    """Return the stored result for (kind, key) or compute, store and return it.

    Results may be tensors, numpy arrays, DataFrames, Series, and dicts, lists and tuples of those,
    strings and numbers. An entry that cannot be read, fails its checksum or was stored under another
    key is treated as missing and rebuilt. Reading an entry marks it used; a write is followed by
    :func:`evict` under the size limit (:func:`max_bytes`), and a result larger than that limit by itself
    is returned without being stored (with a :class:`CacheWarning`).
    """
    if not enabled:
        value = compute()
        return value.value if isinstance(value, Uncached) else value
    limit = max_bytes()  # a bad $WNB_CACHE_MAX_BYTES is refused before the work starts
    path = entry_path(kind, cache_key)
    if path.exists():
        try:
            _touch(path)  # in use from now: eviction in another process leaves it alone while it is read
            value = read_entry(path, kind, cache_key)
            _touch(path)
            _record(path)
            return value
        except Exception:  # unreadable, tampered with, another key's, or evicted meanwhile: rebuild it
            pass
    value = compute()
    if isinstance(value, Uncached):
        return value.value
    try:
        blob = write_entry(value, kind, cache_key)
    except TypeError as exc:
        warnings.warn(f"not cached ({kind}): {exc}", CacheWarning, stacklevel=2)
        return value
    if limit is not None and len(blob) > limit:
        warnings.warn(f"not cached ({kind}): the entry ({_size_text(len(blob))}) is larger than the cache's "
                      f"limit ({_size_text(limit)}, ${MAX_BYTES_ENV})", CacheWarning, stacklevel=2)
        return value
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)
    except OSError as exc:
        warnings.warn(f"not cached ({kind}): cannot write {path} ({exc.strerror})", CacheWarning, stacklevel=2)
        return value
    _touch(path)
    _record(path)
    if limit is not None:
        evict(limit, keep=path)
    return value


# ---------------------------------------------------------------- size limit (least recently used out)

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def max_bytes() -> int | None:
    """The cache's size limit in bytes: ``$WNB_CACHE_MAX_BYTES`` (a number of bytes, or with a K, M, G or T
    suffix in binary units: ``10G``, ``500MiB``), default 10 GiB; ``0`` means no limit (None)."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", text.upper())
    if not match:
        from wnb.errors import WnbError

        raise WnbError(f"${MAX_BYTES_ENV} must be a size such as 10G, 500M or 2147483648 (bytes), or 0 for no "
                       f"limit; got {text[:40]!r}")
    limit = int(float(match.group(1)) * _UNITS[match.group(2)])
    return limit or None


def evict(limit: int, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used cache entries until the entries total at most ``limit`` bytes.

    Never removes ``keep``, an entry used within the last ``IN_USE_SECONDS``, an entry used again while
    this runs, or anything outside ``<cache>/<kind>/<key>.safetensors`` (temporaries, ``models/``,
    ``tasks/``); so the cache may stay above the limit for a while. Entries that vanish meanwhile (another
    process evicted them) count as removed. Returns the paths this call removed.
    """
    entries = _entries(cache_dir())
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


def _touch(path: Path) -> None:
    """Mark an entry used now (its modification time: access times are often not kept)."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:
        pass  # gone, or a read-only cache: it is still read


def _size_text(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"


def write_entry(value: Any, kind: str, cache_key: str) -> bytes:
    """``value`` as the bytes of one safetensors file (see the module docstring); TypeError if a part
    of it is of a type the cache does not store."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(value, tensors, set())
    meta = {"format": FORMAT, "kind": kind, "key": str(cache_key), "parts": getattr(cache_key, "parts", ""),
            "tree": json.dumps(tree), "sha256": _digest(tensors)}
    return save(tensors, metadata=meta)


def read_entry(path: Path, kind: str, cache_key: str) -> Any:
    """The value stored at ``path``; ValueError if it is not wnb's, fails its checksum, or belongs to
    another kind or key."""
    from safetensors.torch import load

    raw = Path(path).read_bytes()
    meta = _metadata(raw)
    if meta.get("format") != FORMAT or meta.get("kind") != kind or meta.get("key") != str(cache_key):
        raise ValueError(f"{path} is not the cache entry of {kind}/{cache_key}")
    parts = meta.get("parts", "")
    expected = getattr(cache_key, "parts", None)
    if expected is not None and parts != expected:
        raise ValueError(f"{path} was stored for other key parts")
    tensors = load(raw)
    if _digest(tensors) != meta.get("sha256"):
        raise ValueError(f"{path} fails its checksum")
    return _decode(json.loads(meta["tree"]), tensors)


def _metadata(raw: bytes) -> dict:
    n = int.from_bytes(raw[:8], "little")
    if not 0 < n <= len(raw) - 8:
        raise ValueError("not a safetensors file")
    return json.loads(raw[8:8 + n]).get("__metadata__") or {}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# JSON tags: a dict with exactly one of these keys is a tagged value.
_T, _ND, _TUPLE, _DICT, _DF, _SERIES, _RANGE, _FLOAT = "$tensor", "$ndarray", "$tuple", "$dict", "$frame", \
    "$series", "$range", "$float"


def _encode(value: Any, tensors: dict, seen: set) -> Any:
    if isinstance(value, torch.Tensor):
        return {_T: _store(value, tensors, seen)}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {_ND: "object", "items": [_encode(v, tensors, seen) for v in value.tolist()]}
        return {_ND: _store(torch.from_numpy(_plain_array(value)), tensors, seen), "dtype": str(value.dtype)}
    if isinstance(value, pd.DataFrame):
        return {_DF: [[_encode(c, tensors, seen), _series(value[c] if value.columns.is_unique else value.iloc[:, i],
                                                          tensors, seen)]
                      for i, c in enumerate(value.columns)],
                "index": _index(value.index, tensors, seen)}
    if isinstance(value, pd.Series):
        return {_SERIES: _series(value, tensors, seen), "name": _encode(value.name, tensors, seen),
                "index": _index(value.index, tensors, seen)}
    if isinstance(value, np.generic):
        return _encode(value.item(), tensors, seen)
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, tensors, seen) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors, seen) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, tensors, seen) for k, v in value.items()}
        return {_DICT: [[_encode(k, tensors, seen), _encode(v, tensors, seen)] for k, v in value.items()]}
    if isinstance(value, float) and not np.isfinite(value):
        return {_FLOAT: repr(value)}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"the cache does not store {type(value).__name__} values")


def _plain_array(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "Mm":  # datetimes, durations: their int64 ticks
        return np.ascontiguousarray(a.view(np.int64))
    if a.dtype.kind == "u" and a.dtype.itemsize > 1:
        return np.ascontiguousarray(a.astype(np.int64))
    if a.dtype.kind not in "biuf" and a.dtype != np.bool_:
        raise TypeError(f"the cache does not store numpy arrays of dtype {a.dtype}")
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def _series(s: pd.Series, tensors: dict, seen: set) -> dict:
    dtype = s.dtype
    if isinstance(dtype, np.dtype) and dtype != object:
        return {"values": _encode(s.to_numpy(), tensors, seen), "dtype": str(dtype)}
    return {"values": [_encode(v, tensors, seen) for v in s.astype(object).tolist()], "dtype": str(dtype)}


def _index(index: pd.Index, tensors: dict, seen: set) -> Any:
    if isinstance(index, pd.RangeIndex):
        return {_RANGE: [index.start, index.stop, index.step], "name": _encode(index.name, tensors, seen)}
    if isinstance(index, pd.MultiIndex):
        raise TypeError("the cache does not store DataFrames with a MultiIndex")
    return {"values": _series(index.to_series(), tensors, seen), "name": _encode(index.name, tensors, seen)}


def _store(t: torch.Tensor, tensors: dict, seen: set) -> str:
    if t.layout != torch.strided or t.is_nested:
        raise TypeError("the cache stores dense tensors only")
    t = t.detach().cpu().contiguous()
    ptr = t.untyped_storage().data_ptr()
    if ptr in seen and t.numel():  # safetensors refuses tensors that share memory
        t = t.clone()
    seen.add(t.untyped_storage().data_ptr())
    name = f"t{len(tensors)}"
    tensors[name] = t
    return name


def _decode(tree: Any, tensors: dict) -> Any:
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if _T in tree:
        return tensors[tree[_T]]
    if _ND in tree:
        if tree[_ND] == "object":
            return np.array([_decode(v, tensors) for v in tree["items"]], dtype=object)
        array, dtype = tensors[tree[_ND]].numpy(), np.dtype(tree["dtype"])
        return array.view(dtype) if dtype.kind in "Mm" else array.astype(dtype, copy=False)
    if _TUPLE in tree:
        return tuple(_decode(v, tensors) for v in tree[_TUPLE])
    if _DICT in tree:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in tree[_DICT]}
    if _DF in tree:
        columns = [(_decode(c, tensors), _decode_values(s, tensors)) for c, s in tree[_DF]]
        frame = pd.DataFrame({i: values for i, (_, values) in enumerate(columns)},
                             index=_decode_index(tree["index"], tensors))
        frame.columns = pd.Index([c for c, _ in columns])
        return frame
    if _SERIES in tree:
        return pd.Series(_decode_values(tree[_SERIES], tensors), index=_decode_index(tree["index"], tensors),
                         name=_decode(tree["name"], tensors))
    if _FLOAT in tree:
        return float(tree[_FLOAT])
    return {k: _decode(v, tensors) for k, v in tree.items()}


def _decode_values(s: dict, tensors: dict):
    values = s["values"]
    if isinstance(values, dict) and _ND in values:
        return pd.array(_decode(values, tensors), dtype=s["dtype"]) if s["dtype"] != "object" else \
            _decode(values, tensors)
    out = pd.Series([_decode(v, tensors) for v in values], dtype=object)
    if s["dtype"] != "object":
        with contextlib.suppress(TypeError, ValueError):
            return out.astype(s["dtype"]).array
    return out.array


def _decode_index(tree: dict, tensors: dict) -> pd.Index:
    name = _decode(tree["name"], tensors)
    if _RANGE in tree:
        start, stop, step = tree[_RANGE]
        return pd.RangeIndex(start, stop, step, name=name)
    return pd.Index(_decode_values(tree["values"], tensors), name=name)
