"""Equivalence record for the reorganization (issue 20): a fixed script's outputs, written down and compared.

    python benchmarks/equivalence.py record OUT.json [--parts tiny bundled cli app]
    python benchmarks/equivalence.py compare OLD.json NEW.json
    python benchmarks/equivalence.py run BASELINE.json     # record to a temporary file, compare with BASELINE

The script uses only names that stay stable across the reorganization: the public API (``wnb.<name>`` of
``wnb.__all__``), the ``wnb`` console script beside this Python (``PYTHONPATH`` pointing at the checkout
whose ``wnb`` is imported here) and the app through ``wnb.widgets.App``. Parts:

- tiny: random Llama, GPT-NeoX and GPT-2 models built from configs with seed 0 (as tests/conftest.py):
  capture, WD, MD, top neurons, neuron_table, pruned weights (magnitude, Wanda, SparseGPT at 0.5 and
  2:4, SparseGPT 0.5 with bits=4), whole-model ``pruned`` perplexity per method, ``expanded`` (k=2)
  logits, ``layer_scores``, ``overview``, ``read_model`` (streaming), ``study_layer`` + ``relative_improvement``,
  the sign-ablation study (perplexity only: no tokenizer) and the dense weights after it all;
- bundled: the bundled model on 4 + 2 windows of 64 tokens: WD and MD of layer 1's gate_proj,
  SparseGPT 0.5 perplexity (the FFN layers of blocks 0-1), a Sparse Expansion's (k=2, that layer)
  logits on one window;
- cli: ``wnb score | prune | expand | sweep | negative`` on the bundled model with the smallest
  settings, each in its own empty cache: every CSV (timing columns dropped), the PNGs, the manifest
  (timestamps, seconds and paths dropped) and the cache entries written (names, key parts, content);
- app: ``wnb.widgets.App`` on a tiny Llama (start, then the Sparsity and Sparse Expansion tabs' start)
  in an empty cache: the cache entries written (names, key parts, content) and the views' errors.

Arrays are recorded as a SHA-256 of dtype, shape and bytes with a summary (sum, absolute sum, min, max,
NaN count) and their values when small (<= FULL_VALUES), else an evenly spaced sample of SAMPLE values,
so ``compare`` can name the size of a difference (max abs difference, over the sample for large
arrays). Floating results must be bit-identical. Runs single-threaded (``torch.set_num_threads(1)``,
``OMP_NUM_THREADS=1`` for the commands) and seeded.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import wnb

FULL_VALUES = 512
SAMPLE = 128
VOCAB = 128
BUNDLED_LAYER = "model.layers.1.mlp.gate_proj"
SMALL = ["--budget", "small", "--seq-len", "64", "--windows", "4", "--eval-windows", "2", "-q"]
COMMANDS = {  # name -> the command's own arguments after SMALL
    "score": ["score", "--layers", BUNDLED_LAYER, "--detail", BUNDLED_LAYER, "--pairs", "2000"],
    "prune": ["prune", "--method", "sparsegpt", "--sparsity", "0.5", "--layers", BUNDLED_LAYER],
    "expand": ["expand", "--experts", "2", "--layers", BUNDLED_LAYER],
    "sweep": ["sweep", "--methods", "magnitude", "--sparsities", "0.5", "--layers", BUNDLED_LAYER],
    "negative": ["negative", "--layers", "model.layers.0.mlp.gate_proj", BUNDLED_LAYER, "--fraction", "0.02",
                 "--control-seeds", "1", "--pairs-per-phenomenon", "2", "--max-tokens", "128", "--no-depth"],
}
TIMING = re.compile(r"(^|_)seconds$")
RUN_KEYS = ("started", "finished", "stopped", "seconds", "argv")  # manifest keys that differ from run to run
PARTS = ("tiny", "bundled", "cli", "app")


# ---------------------------------------------------------------- recording values

def array_item(a: np.ndarray) -> dict:
    """Hash, summary and values (or a sample) of an array."""
    a = np.ascontiguousarray(a)
    if a.dtype.kind in "OUS":  # text: by content (an object array's bytes are pointers)
        a = np.array([str(v) for v in a.reshape(-1)], dtype=str).reshape(a.shape)
        content = json.dumps(a.reshape(-1).tolist()).encode()
    else:
        content = a.tobytes()
    digest = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + content).hexdigest()
    item = {"kind": "array", "hash": digest, "dtype": a.dtype.str, "shape": list(a.shape)}
    flat = a.reshape(-1)
    if a.dtype.kind in "fiub" and flat.size:
        x = flat.astype(np.float64)
        finite = x[np.isfinite(x)]
        item.update(sum=float(finite.sum()), abs_sum=float(np.abs(finite).sum()), nan=int(np.isnan(x).sum()),
                    min=float(finite.min()) if finite.size else None, max=float(finite.max()) if finite.size else None)
        if flat.size <= FULL_VALUES:
            item["values"] = x.tolist()
        else:
            index = np.linspace(0, flat.size - 1, SAMPLE).astype(np.int64)
            item["sample"] = x[index].tolist()
    elif flat.size <= FULL_VALUES:
        item["values"] = [str(v) for v in flat]
    return item


class Recorder:
    """Named items: arrays (tensors, numpy, DataFrame columns) by hash and summary, the rest by value."""

    def __init__(self):
        self.items: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}

    def add(self, name: str, value) -> None:
        if name in self.items:
            raise KeyError(f"item {name} recorded twice")
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu()
            self.items[name] = array_item((t.float() if t.dtype == torch.bfloat16 else t).numpy())
        elif isinstance(value, np.ndarray):
            self.items[name] = array_item(value)
        elif isinstance(value, pd.DataFrame):
            self.frame(name, value)
        elif isinstance(value, pd.Series):
            self.add(name, value.to_numpy())
        elif isinstance(value, dict):
            for key, part in value.items():
                self.add(f"{name}.{key}", part)
        else:
            self.items[name] = {"kind": "value", "value": plain(value)}

    def frame(self, name: str, frame: pd.DataFrame) -> None:
        self.items[f"{name}.columns"] = {"kind": "value", "value": [str(c) for c in frame.columns]}
        self.items[f"{name}.index"] = array_item(np.asarray(frame.index.astype(str)))
        for column in frame.columns:
            if TIMING.search(str(column)):
                continue  # run-dependent: how long it took
            values = frame[column]
            data = values.to_numpy() if values.dtype.kind in "fiub" else values.astype(str).to_numpy()
            self.items[f"{name}[{column}]"] = array_item(data)

    @contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        print(f"  {name}: {self.seconds[name]} s", file=sys.stderr, flush=True)


def plain(value):
    """A JSON-able copy: numbers, strings, lists and dicts (tuples as lists, numpy scalars as Python's)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def seed_all(seed: int = 0) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def weights_digest(lm) -> str:
    h = hashlib.sha256()
    for name, p in lm.model.state_dict().items():
        h.update(name.encode() + p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- tiny models

def tiny_models(families=("llama", "neox", "gpt2")) -> dict:
    """The tests' tiny random models (tests/conftest.py): 3 blocks, width 32, vocabulary 128, seed 0."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    configs = {
        "llama": lambda: (LlamaForCausalLM, LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=3, num_attention_heads=4,
                                                         num_key_value_heads=2, max_position_embeddings=128)),
        "neox": lambda: (GPTNeoXForCausalLM, GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=3, num_attention_heads=4,
                                                            max_position_embeddings=128)),
        "gpt2": lambda: (GPT2LMHeadModel, GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=128,
                                                     bos_token_id=0, eos_token_id=0)),
    }
    return {family: tiny_model(*configs[family]()) for family in families}


def tiny_model(model_cls, config):
    torch.manual_seed(0)
    return wnb.wrap_model(model_cls(config).eval(), name=model_cls.__name__)


def tiny_windows(seed: int, n: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, 16), generator=torch.Generator().manual_seed(seed))


def record_layer(rec: Recorder, prefix: str, lm, name: str, calib, n_pairs: int) -> dict:
    """Capture, WD, MD, top neurons and the neuron table of one layer; returns the captured activations."""
    seed_all()
    acts = wnb.capture(lm, [name], calib, progress=False)[name]
    rec.add(f"{prefix}.capture.inputs", acts.inputs)
    rec.add(f"{prefix}.capture.outputs", acts.outputs)
    wd = wnb.wasserstein_to_gaussian(acts.outputs)
    rec.add(f"{prefix}.wd", wd)
    rec.add(f"{prefix}.md", wnb.mapping_difficulty(acts.inputs, acts.outputs, n_pairs=n_pairs, seed=0))
    rec.add(f"{prefix}.top_neurons", wnb.top_neurons(wd, fraction=0.1))
    rec.add(f"{prefix}.neuron_table", wnb.neuron_table(acts.outputs, acts.inputs, n_pairs=n_pairs, seed=0))
    return acts


def record_weights(rec: Recorder, prefix: str, lm, name: str, inputs) -> None:
    """``prune_weight`` of the layer by each method at 0.5 and 2:4, and SparseGPT 0.5 with 4 bits."""
    weight = wnb.layer_weight(lm, name).detach().clone()
    for method in ("magnitude", "wanda", "sparsegpt"):
        for sparsity in (0.5, "2:4"):
            seed_all()
            pruned = wnb.prune_weight(weight, inputs, method=method, sparsity=sparsity)
            rec.add(f"{prefix}.prune_weight.{method}.{sparsity}", pruned)
    seed_all()
    rec.add(f"{prefix}.prune_weight.sparsegpt.0.5.bits4", wnb.prune_weight(weight, inputs, "sparsegpt", 0.5, bits=4))


def record_model_runs(rec: Recorder, prefix: str, lm, calib, held_out) -> None:
    """Whole-model pruning perplexity per method, an expansion's logits, and the dense weights after them."""
    dense = weights_digest(lm)
    rec.add(f"{prefix}.perplexity.dense", wnb.perplexity(lm, held_out, progress=False))
    for method in ("magnitude", "wanda", "sparsegpt"):
        seed_all()
        with wnb.pruned(lm, method=method, sparsity=0.5, calib=calib, progress=False):
            rec.add(f"{prefix}.pruned.{method}.perplexity", wnb.perplexity(lm, held_out, progress=False))
    seed_all()
    with wnb.pruned(lm, method="sparsegpt", sparsity="2:4", calib=calib, bits=4, progress=False):
        rec.add(f"{prefix}.pruned.sparsegpt.2:4.bits4.perplexity", wnb.perplexity(lm, held_out, progress=False))
    seed_all()
    with wnb.expanded(lm, n_experts=2, sparsity=0.5, calib=calib, progress=False), torch.no_grad():
        rec.add(f"{prefix}.expanded.k2.logits", lm.model(held_out).logits)
    rec.add(f"{prefix}.dense_weights_restored", weights_digest(lm) == dense)


def record_scores(rec: Recorder, prefix: str, lm, calib, held_out, name: str) -> None:
    """Many-layer scores (exact, overview, streaming), a layer study's RI and the sign-ablation study."""
    seed_all()
    rec.add(f"{prefix}.layer_scores", wnb.layer_scores(lm, calib, progress=False))
    rec.add(f"{prefix}.overview", wnb.overview(lm, calib, progress=False))
    rec.add(f"{prefix}.read_model_streaming", wnb.read_model(lm, calib, wd="streaming", progress=False).scores())
    seed_all()
    study = wnb.study_layer(lm, name, calib, held_out, n_experts=2, sparsity=0.5, progress=False)
    rec.add(f"{prefix}.relative_improvement", wnb.relative_improvement(study))
    seed_all()
    rec.add(f"{prefix}.sign_ablation_study", wnb.sign_ablation_study(lm, calib, held_out, fraction=0.05, seeds=(0,),
                                                                     progress=False))


def record_tiny(rec: Recorder) -> None:
    calib, held_out = tiny_windows(1, 6), tiny_windows(2, 4)
    for family, lm in tiny_models().items():
        prefix = f"tiny.{family}"
        with rec.part(prefix):
            name = wnb.first_ffn_layers(lm)[1]
            rec.add(f"{prefix}.ffn_layers", wnb.ffn_layers(lm))
            acts = record_layer(rec, prefix, lm, name, calib, n_pairs=2000)
            record_weights(rec, prefix, lm, name, acts.inputs)
            record_model_runs(rec, prefix, lm, calib, held_out)
            record_scores(rec, prefix, lm, calib, held_out, name)


# ---------------------------------------------------------------- the bundled model

def record_bundled(rec: Recorder, lm) -> None:
    calib, held_out = wnb.token_windows(lm, wnb.load_corpus(), seq_len=64, n_calib=4, n_eval=2, seed=0)
    rec.add("bundled.windows.calib", calib)
    rec.add("bundled.windows.held_out", held_out)
    record_layer(rec, "bundled.layer1_gate", lm, BUNDLED_LAYER, calib, n_pairs=5000)
    dense = weights_digest(lm)
    rec.add("bundled.perplexity.dense", wnb.perplexity(lm, held_out, progress=False))
    blocks01 = [n for n in wnb.ffn_layers(lm) if n.startswith(("model.layers.0.", "model.layers.1."))]
    seed_all()  # two blocks: block 1 calibrated on the pruned block 0 (the whole model took 45 s more)
    with wnb.pruned(lm, method="sparsegpt", sparsity=0.5, calib=calib, layers=blocks01, progress=False):
        rec.add("bundled.pruned.sparsegpt.0.5.blocks01.perplexity", wnb.perplexity(lm, held_out, progress=False))
    seed_all()
    with wnb.expanded(lm, n_experts=2, sparsity=0.5, calib=calib, layers=[BUNDLED_LAYER], progress=False), \
            torch.no_grad():
        rec.add("bundled.expanded.k2.layer1_gate.logits", lm.model(held_out[:1]).logits)
    rec.add("bundled.dense_weights_restored", weights_digest(lm) == dense)


# ---------------------------------------------------------------- the command

def isolated_cache(root: Path, models: Path) -> Path:
    """An empty cache that still finds the bundled model's converted weights (linked from ``models``)."""
    (root / "models").mkdir(parents=True)
    for entry in sorted(models.iterdir()) if models.is_dir() else []:
        (root / "models" / entry.name).symlink_to(entry.resolve())
    return root


def cache_entries(root: Path) -> dict[str, dict]:
    """``<kind>/<key>`` -> {parts: what the key was made of, content: :func:`entry_digest`} of every cache
    entry under ``root`` (the linked models/ and temporaries left out)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] == "models" or not path.is_file() or ".wnb-tmp." in path.as_posix():
            continue
        entries[relative.as_posix()] = entry_digest(path.read_bytes())
    return entries


def entry_digest(raw: bytes) -> dict:
    """A digest of a safetensors cache entry that ignores what differs from run to run: the order of its
    header (safetensors writes its metadata map in no fixed order) and timing values (``seconds`` columns
    or keys, dropped from the description with the tensors only they use)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    tree = without_timing(json.loads(meta["tree"])) if "tree" in meta else None
    used = sorted(name for name in string_leaves(tree) if name in header)
    h = hashlib.sha256(json.dumps([meta.get("kind"), meta.get("key"), meta.get("parts"), tree]).encode())
    for name in used:
        start, end = header[name]["data_offsets"]
        h.update(f"{name}:{header[name]['dtype']}:{header[name]['shape']};".encode() + raw[8 + n + start:8 + n + end])
    if tree is None:  # not a wnb entry: every tensor
        h.update(json.dumps(header, sort_keys=True).encode() + raw[8 + n:])
    return {"parts": meta.get("parts"), "content": h.hexdigest()}


def without_timing(tree):
    """The entry's description without timing: keys, and [name, value] pairs (DataFrame columns, dicts
    with other keys), whose name matches TIMING."""
    if isinstance(tree, dict):
        return {k: without_timing(v) for k, v in tree.items() if not TIMING.search(k)}
    if isinstance(tree, list):
        return [without_timing(v) for v in tree
                if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and TIMING.search(v[0]))]
    return tree


def string_leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from string_leaves(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from string_leaves(v)
    elif isinstance(tree, str):
        yield tree


def command_env(cache: Path) -> dict[str, str]:
    """The environment of a command: this checkout first on the path, one thread, the given cache."""
    repo = str(Path(wnb.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k not in ("WNB_BUDGET", "WNB_STRICT", "WNB_CACHE_MAX_BYTES")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])), WNB_CACHE=str(cache),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", HF_HUB_OFFLINE="1")
    found = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('wnb').origin)"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    if Path(found).resolve() != Path(wnb.__file__).resolve():
        raise RuntimeError(f"the command would import {found}, not {wnb.__file__}")
    return env


def wnb_command() -> Path:
    script = Path(sys.executable).with_name("wnb")
    if not script.exists():
        raise RuntimeError(f"no wnb console script beside {sys.executable}; pip install -e . first")
    return script


def normalized_manifest(path: Path, out: Path, cache: Path) -> dict:
    """The manifest without what differs from run to run: timestamps, seconds, the folders' paths."""
    text = path.read_text().replace(str(out), "<OUT>").replace(str(cache), "<CACHE>")
    manifest = {k: v for k, v in json.loads(text).items() if k not in RUN_KEYS}
    if "summary" in manifest:
        manifest["summary"] = re.sub(r" \([0-9.]+ s; ", " (", manifest["summary"])
    return manifest


def record_outputs(rec: Recorder, prefix: str, out: Path, cache: Path) -> None:
    """Every CSV (timing columns dropped), PNG and the manifest of an output folder."""
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    rec.add(f"{prefix}.files", files)
    for name in files:
        if name.endswith(".csv"):
            frame = pd.read_csv(out / name)
            rec.add(f"{prefix}.{name}", frame[[c for c in frame.columns if not TIMING.search(str(c))]])
        elif name.endswith(".png"):
            rec.add(f"{prefix}.{name}.sha256", hashlib.sha256((out / name).read_bytes()).hexdigest())
    rec.add(f"{prefix}.manifest", normalized_manifest(out / "manifest.json", out, cache))


def record_cli(rec: Recorder, work: Path, models: Path) -> None:
    script = wnb_command()
    for command, argv in COMMANDS.items():
        with rec.part(f"cli.{command}"):
            cache, out = isolated_cache(work / f"cache-{command}", models), work / f"out-{command}"
            done = subprocess.run([str(script), *argv, *SMALL, "-o", str(out)], env=command_env(cache),
                                  capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"wnb {command} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            record_outputs(rec, f"cli.{command}", out, cache)
            rec.add(f"cli.{command}.cache", cache_entries(cache))


# ---------------------------------------------------------------- the app

@contextmanager
def environment(**values):
    """Environment variables set (None: unset) inside the block, restored after it."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def record_app(rec: Recorder, work: Path, models: Path) -> None:
    """The app on a fresh tiny Llama in an empty cache: start, then the Sparsity and Sparse Expansion tabs."""
    import wnb.widgets

    cache = isolated_cache(work / "cache-app", models)
    with environment(WNB_CACHE=str(cache), WNB_STRICT=None, WNB_BUDGET=None):
        session_cls = type(wnb.widgets.Settings(budget="small").session)  # wherever the Session class lives
        gen = torch.Generator().manual_seed(5)
        calib = torch.randint(0, VOCAB, (8, 16), generator=gen)  # as tests/unit/widgets/test_widgets.py
        held_out = torch.randint(0, VOCAB, (2, 16), generator=gen)
        lm = tiny_models(["llama"])["llama"]
        seed_all()
        app = wnb.widgets.App(session=session_cls(lm=lm, calib=calib, held_out=held_out, budget="small", seed=0))
        app.start()
        app.sparsity.start()
        app.expansion.start()
        for view in ("neurons", "sparsity", "expansion"):
            rec.add(f"app.{view}.last_error", getattr(app, view).last_error)
        rec.add("app.cache", cache_entries(cache))


# ---------------------------------------------------------------- record and compare

def record(path: Path, parts=PARTS) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = record_parts(parts)
    finally:
        torch.set_num_threads(threads)
    write(path, data)
    return data


def record_parts(parts) -> dict:
    seed_all()
    rec, begin = Recorder(), time.perf_counter()
    models = wnb.cache_dir() / "models"  # the user's cache: the bundled model's converted weights
    with tempfile.TemporaryDirectory(prefix="wnb-equivalence-") as tmp:
        with environment(WNB_CACHE=str(Path(tmp) / "api-cache")):
            if "tiny" in parts:
                record_tiny(rec)
            if "bundled" in parts:
                with rec.part("bundled"):
                    with environment(WNB_CACHE=str(models.parent)):
                        lm = wnb.load_model(device="cpu")
                    record_bundled(rec, lm)
        if "cli" in parts:
            record_cli(rec, Path(tmp), models)
        if "app" in parts:
            with rec.part("app"):
                record_app(rec, Path(tmp), models)
    meta = {"wnb": str(Path(wnb.__file__).resolve().parent), "torch": torch.__version__, "parts": list(parts),
            "seconds": {**rec.seconds, "total": round(time.perf_counter() - begin, 1)},
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    return {"meta": meta, "items": rec.items}


def write(path: Path, data: dict) -> None:
    """JSON with one item per line, sorted by name (diff-friendly)."""
    items = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(data["items"].items())]
    path.write_text('{"meta": ' + json.dumps(data["meta"], sort_keys=True) + ',\n "items": {\n' + ",\n".join(items)
                    + "\n }}\n")


def same(a: dict, b: dict) -> bool:
    if a.get("kind") == "array" and b.get("kind") == "array":
        return a["hash"] == b["hash"]
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN equals NaN here


def describe(name: str, a: dict, b: dict) -> str:
    """One line (or a few) saying how an item differs."""
    if a.get("kind") != "array" or b.get("kind") != "array":
        return f"{name}: {short(a.get('value', a))} -> {short(b.get('value', b))}" + scalar_delta(a, b)
    if (a["dtype"], a["shape"]) != (b["dtype"], b["shape"]):
        return f"{name}: {a['dtype']} {a['shape']} -> {b['dtype']} {b['shape']}"
    where, key = ("", "values") if "values" in a and "values" in b else (" on the sample", "sample")
    if key not in a or key not in b or a["dtype"][1] not in "fiub":
        return f"{name}: contents differ (hash)"
    x, y = np.array(a[key], dtype=np.float64), np.array(b[key], dtype=np.float64)
    both = np.isfinite(x) & np.isfinite(y)
    delta = float(np.abs(x[both] - y[both]).max()) if both.any() else 0.0
    changed = int((~((x == y) | (np.isnan(x) & np.isnan(y)))).sum())
    return (f"{name}: max abs difference {delta:.3g}{where} ({changed} of {x.size} values differ); "
            f"sum {a.get('sum')!r} -> {b.get('sum')!r}, max {a.get('max')!r} -> {b.get('max')!r}")


def scalar_delta(a: dict, b: dict) -> str:
    x, y = a.get("value"), b.get("value")
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        return f" (difference {y - x:.3g})" if math.isfinite(x) and math.isfinite(y) else ""
    if isinstance(x, dict) and isinstance(y, dict):
        keys = sorted(set(x) ^ set(y)) + sorted(k for k in set(x) & set(y) if x[k] != y[k])
        return f"\n    keys differing: {', '.join(map(str, keys[:10]))}" + (" ..." if len(keys) > 10 else "")
    if isinstance(x, list) and isinstance(y, list):
        sx, sy = set(map(str, x)), set(map(str, y))
        return f"\n    only old: {sorted(sx - sy)[:5]}\n    only new: {sorted(sy - sx)[:5]}"
    return ""


def short(value, width: int = 100) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[:width] + "..."


def compare(old: dict, new: dict) -> list[str]:
    """Every differing item, by name (an empty list: identical)."""
    a, b = old["items"], new["items"]
    parts = set(old["meta"]["parts"]) & set(new["meta"]["parts"])  # a partial record: only what both hold
    lines = []
    for name in sorted(n for n in set(a) | set(b) if n.split(".")[0] in parts):
        if name not in b:
            lines.append(f"{name}: only in the old record")
        elif name not in a:
            lines.append(f"{name}: only in the new record")
        elif not same(a[name], b[name]):
            lines.append(describe(name, a[name], b[name]))
    return lines


def report(old: dict, new: dict) -> int:
    if not set(old["meta"]["parts"]) & set(new["meta"]["parts"]):
        print(f"nothing to compare: the records hold the parts {old['meta']['parts']} and {new['meta']['parts']}")
        return 2
    differences = compare(old, new)
    for line in differences:
        print(line)
    parts = [p for p in PARTS if p in old["meta"]["parts"] and p in new["meta"]["parts"]]
    compared = [n for n in set(old["items"]) | set(new["items"]) if n.split(".")[0] in parts]
    print(f"{len(differences)} of {len(compared)} items ({', '.join(parts)}) differ "
          f"(old: {old['meta']['wnb']}, {old['meta']['date']}; new: {new['meta']['wnb']}, {new['meta']['date']})")
    return int(bool(differences))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    rec = sub.add_parser("record", help="run the fixed script and write its record")
    rec.add_argument("out", type=Path)
    cmp = sub.add_parser("compare", help="compare two records; exit 1 when any item differs")
    cmp.add_argument("old", type=Path)
    cmp.add_argument("new", type=Path)
    run = sub.add_parser("run", help="record to a temporary file and compare with a baseline record")
    run.add_argument("baseline", type=Path)
    for p in (rec, run):
        p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to record (default: all)")
    args = parser.parse_args(argv)
    if args.action == "compare":
        return report(json.loads(args.old.read_text()), json.loads(args.new.read_text()))
    if args.action == "record":
        data = record(args.out, args.parts)
        print(f"{len(data['items'])} items in {data['meta']['seconds']['total']} s -> {args.out}")
        return 0
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        new = record(Path(tmp.name), args.parts)
    print(f"recorded in {new['meta']['seconds']['total']} s: {tmp.name}")
    return report(json.loads(args.baseline.read_text()), new)


if __name__ == "__main__":
    sys.exit(main())
