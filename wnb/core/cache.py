"""On-disk cache: keyed by everything that changes a result, written atomically, safe to delete.

The location is ``$WNB_CACHE`` if set, else ``$XDG_CACHE_HOME/wnb`` (default ``~/.cache/wnb``). An
entry is one safetensors file (:mod:`wnb.core.codec`: nothing in it can run code when read), written
whole or not at all (:mod:`wnb.core.files`); the entries together stay under a size limit, least
recently used out (:mod:`wnb.core.eviction`). An entry whose checksum or key does not match is rebuilt,
never used: cache folders may be copied from other machines.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from wnb.core.codec import SUFFIX, read_entry, write_entry
from wnb.core.eviction import MAX_BYTES_ENV, evict, mark_used, max_bytes, size_text
from wnb.core.files import atomic_path, remove_stale_temporaries
from wnb.errors import WnbError


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


_MISSING = object()


def lookup(kind: str, cache_key: str, default: Any = None) -> Any:
    """The stored result for (kind, key), or ``default`` when there is none (or it cannot be used:
    unreadable, tampered with, another key's, evicted meanwhile). Nothing is computed."""
    path = entry_path(kind, cache_key)
    if not path.exists():
        return default
    try:
        mark_used(path)  # in use from now: eviction in another process leaves it alone while it is read
        value = read_entry(path, kind, cache_key)
        mark_used(path)
    except Exception:
        return default
    _record(path)
    return value


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
    found = lookup(kind, cache_key, _MISSING)
    if found is not _MISSING:
        return found
    value = compute()
    if isinstance(value, Uncached):
        return value.value
    try:
        blob = write_entry(value, kind, cache_key)
    except TypeError as exc:
        warnings.warn(f"not cached ({kind}): {exc}", CacheWarning, stacklevel=2)
        return value
    if limit is not None and len(blob) > limit:
        warnings.warn(f"not cached ({kind}): the entry ({size_text(len(blob))}) is larger than the cache's "
                      f"limit ({size_text(limit)}, ${MAX_BYTES_ENV})", CacheWarning, stacklevel=2)
        return value
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)
    except OSError as exc:
        warnings.warn(f"not cached ({kind}): cannot write {path} ({exc.strerror})", CacheWarning, stacklevel=2)
        return value
    mark_used(path)
    _record(path)
    if limit is not None:
        evict(cache_dir(), limit, keep=path)
    return value
