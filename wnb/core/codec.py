"""How a cache entry is stored: one safetensors file holding the tensors of a result, and in its
metadata a JSON description of the rest (dicts, lists, tuples, numbers, strings, DataFrames, Series),
the key's parts and a SHA-256 of the tensors. Nothing in an entry can run code when it is read (no
pickle); an entry whose checksum, kind or key does not match is refused.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

SUFFIX = ".safetensors"
FORMAT = "wnb-cache-1"


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
    # object columns and pandas' nullable dtypes (Int64, boolean, string): missing values are stored as null
    return {"values": [None if v is pd.NA or v is None else _encode(v, tensors, seen) for v in s.astype(object).tolist()],
            "dtype": str(dtype)}


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
