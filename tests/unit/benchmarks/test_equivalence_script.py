"""benchmarks/equivalence.py (issue 20): what a record holds, how two records are compared, the cache-entry
digest that ignores safetensors' header order and timing values, and that the tiny part records the same
items twice."""
from __future__ import annotations

import json
import struct

import equivalence as eq
import numpy as np
import pandas as pd
import torch


def record_of(items: dict, parts=("tiny",)) -> dict:
    rec = eq.Recorder()
    for name, value in items.items():
        rec.add(name, value)
    return {"meta": {"parts": list(parts), "wnb": "here", "date": "now"}, "items": rec.items}


def test_arrays_frames_and_text():
    frame = pd.DataFrame({"layer": ["a", "b"], "wd": [0.5, 0.25], "seconds": [1.0, 2.0]})
    rec = record_of({"tiny.x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "tiny.t": frame})["items"]
    assert rec["tiny.x"]["shape"] == [2, 3] and rec["tiny.x"]["sum"] == 15.0 and rec["tiny.x"]["values"][-1] == 5.0
    assert rec["tiny.t.columns"]["value"] == ["layer", "wd", "seconds"] and "tiny.t[seconds]" not in rec
    again = record_of({"tiny.t": frame.copy()})["items"]  # text hashed by content, not by object address
    assert again["tiny.t[layer]"]["hash"] == rec["tiny.t[layer]"]["hash"]
    big = eq.array_item(np.arange(10_000, dtype=np.float64))
    assert "values" not in big and len(big["sample"]) == eq.SAMPLE and big["max"] == 9999.0


def test_compare_names_each_difference():
    old = record_of({"tiny.w": np.zeros(4), "tiny.ppl": 12.5, "tiny.keys": ["a", "b"], "tiny.same": 1})
    new = record_of({"tiny.w": np.array([0.0, 0.0, 1e-7, 0.0]), "tiny.ppl": 12.75, "tiny.keys": ["a", "c"],
                     "tiny.same": 1, "tiny.extra": 0})
    lines = eq.compare(old, new)
    assert len(lines) == 4
    assert lines[0] == "tiny.extra: only in the new record"
    assert lines[1].startswith("tiny.keys:") and "only old: ['b']" in lines[1] and "only new: ['c']" in lines[1]
    assert lines[2] == "tiny.ppl: 12.5 -> 12.75 (difference 0.25)"
    assert lines[3].startswith("tiny.w: max abs difference 1e-07 (1 of 4 values differ)")
    assert eq.compare(old, old) == []
    nan = record_of({"tiny.n": float("nan"), "tiny.a": np.array([np.nan, 1.0])})
    assert eq.compare(nan, json.loads(json.dumps(nan))) == []  # NaN equals NaN in a record
    other_part = record_of({"app.x": 1}, parts=("app",))
    assert eq.report(old, other_part) == 2  # nothing in common to compare


def raw_entry(meta: dict, data: dict[str, np.ndarray]) -> bytes:
    """A safetensors file written by hand, its header keys in the given order."""
    header, offset, blobs = {"__metadata__": meta}, 0, []
    for name, array in data.items():
        blob = array.astype(np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def test_entry_digest_ignores_header_order_and_timing():
    tree = {"$df": [["wd", {"values": {"$nd": "t0"}}], ["seconds", {"values": {"$nd": "t1"}}]], "seconds": 3.5}
    meta = {"format": "wnb-cache-1", "kind": "sweep", "key": "abc", "parts": "{}", "tree": json.dumps(tree)}
    data = {"t0": np.array([0.5, 0.25]), "t1": np.array([1.0, 2.0])}
    first = eq.entry_digest(raw_entry(meta, data))
    reordered = dict(reversed(list(meta.items())))
    slower = {**meta, "tree": json.dumps({**tree, "seconds": 9.0})}
    assert eq.entry_digest(raw_entry(reordered, data)) == first
    assert eq.entry_digest(raw_entry(slower, {"t0": data["t0"], "t1": np.array([5.0, 6.0])})) == first
    changed = eq.entry_digest(raw_entry(meta, {"t0": np.array([0.5, 0.125]), "t1": data["t1"]}))
    assert changed["content"] != first["content"] and changed["parts"] == "{}"


def test_tiny_part_is_deterministic(tmp_path):
    assert eq.main(["record", str(tmp_path / "a.json"), "--parts", "tiny"]) == 0
    assert eq.main(["record", str(tmp_path / "b.json"), "--parts", "tiny"]) == 0
    assert eq.main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    items = json.loads((tmp_path / "a.json").read_text())["items"]
    assert items["tiny.llama.dense_weights_restored"]["value"] is True
    assert {"tiny.llama.wd", "tiny.gpt2.expanded.k2.logits", "tiny.neox.pruned.wanda.perplexity"} <= set(items)
