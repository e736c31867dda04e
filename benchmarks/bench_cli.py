"""Streaming WD against the authors' per-neuron scipy loop, and whole-model runs of the ``wnb`` command.

1. Streaming WD (the reader's NeuronSketch, fed batch by batch) of the bundled model's layer-1 gate_proj over
   ``--tokens`` tokens vs the authors' method: scipy.stats.wasserstein_distance per neuron against a
   random N(0, 1) sample of the same size (measured on ``--scipy-neurons`` neurons, scaled to the layer);
   the exact wnb WD for reference; largest difference to the exact WD; state bytes vs kept outputs.
2. ``wnb score`` / ``prune`` / ``expand`` of every FFN layer of the bundled model: wall time and peak
   memory of the command in a fresh process.

    python benchmarks/bench_cli.py [--tokens 65536] [--skip-commands] [--experts 4]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _util import machine, table, timed
from bench_core import authors_wd

import wnb
import wnb.scoring
from wnb.scoring.reader import read_outputs
from wnb.scoring.sketch import sketch_bytes

LAYER = "model.layers.1.mlp.gate_proj"
SEQ_LEN = 256


def outputs_of_layer(tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The token windows and layer 1 gate_proj's outputs ``[tokens, 1536]`` over them."""
    lm = wnb.load_model(device="cpu")
    windows, _ = wnb.token_windows(lm, wnb.load_corpus(), seq_len=SEQ_LEN, n_calib=-(-tokens // SEQ_LEN), n_eval=0,
                                   seed=1)
    return windows, wnb.capture(lm, [LAYER], windows, max_tokens=tokens, inputs=False, progress=False)[LAYER].outputs


def streamed(outputs: torch.Tensor, windows: torch.Tensor, batch_windows: int = 8) -> torch.Tensor:
    """Streaming WD of the outputs, fed to the layer's sketch in the batches a reading pass feeds (whole windows)."""
    stats, _ = read_outputs(outputs, windows, batch_windows=batch_windows)
    return stats["wd"]


def streaming_rows(tokens: int, scipy_neurons: int) -> tuple[list[dict], str]:
    windows, y = outputs_of_layer(tokens)
    n, m = y.shape
    t_stream, wd = timed(lambda: streamed(y, windows), repeat=3)
    t_exact, exact = timed(lambda: wnb.wasserstein_to_gaussian(y), repeat=2)
    start = time.perf_counter()
    authors_wd(y[:, :scipy_neurons].numpy(), seed=0)
    t_scipy = (time.perf_counter() - start) * m / scipy_neurons
    err = (wd - exact).abs()
    rows = [
        {"what": f"WD of {m} neurons x {n:,} tokens", "wnb s": t_stream, "baseline": "scipy per neuron vs random "
         f"N(0,1) ({scipy_neurons} neurons timed, scaled)", "baseline s": t_scipy, "ratio": t_stream / t_scipy,
         "target": "≤ 1/20"},
        {"what": "same, exact wnb WD (keeps the outputs)", "wnb s": t_exact, "baseline": "scipy loop", "baseline s": t_scipy,
         "ratio": t_exact / t_scipy, "target": "-"},
    ]
    kept = y.numel() * 4
    note = (f"streaming vs exact WD: largest |difference| {err.max():.1e}, median {err.median():.1e}; "
            f"streaming state {sketch_bytes(m, SEQ_LEN, max_windows=len(windows)) / 2**20:.1f} MiB for any number of tokens vs {kept / 2**20:.0f} MiB of "
            f"kept float32 outputs here; at the paper's scale (28,672 neurons x 262,144 tokens) "
            f"{sketch_bytes(28_672, 2048, max_windows=128) / 2**20:.0f} MiB vs {28_672 * 262_144 * 4 / 2**30:.0f} GiB")
    return rows, note


def command_rows(experts: int) -> list[dict]:
    rows = []
    runs = {
        "score": ["score", "--wd", "exact"],
        "score (streaming)": ["score", "--wd", "streaming"],
        "prune": ["prune", "--method", "sparsegpt", "--sparsity", "0.5"],
        "expand": ["expand", "--experts", str(experts), "--sparsity", "0.5"],
    }
    work = Path(tempfile.mkdtemp(prefix="wnb-bench-cli-"))
    try:
        for label, argv in runs.items():
            out = work / label.replace(" ", "_").replace("(", "").replace(")", "")
            code = ("import sys, time; from wnb.cli import main; t = time.perf_counter(); "
                    f"rc = main({argv + ['--budget', 'medium', '--detail', 'none', '--no-cache', '-q', '-o', str(out)]!r}); "
                    "print('SECONDS', time.perf_counter() - t); "
                    "print('PEAK', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]); "
                    "sys.exit(rc)")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"wnb {label} failed:\n{proc.stderr[-3000:]}")
            lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("SECONDS", "PEAK")))
            summary = next(line for line in proc.stdout.splitlines() if line.startswith("wnb "))
            rows.append({"command": f"wnb {label}", "seconds": float(lines["SECONDS"]),
                         "peak RSS MiB": int(lines["PEAK"]) / 1024, "summary": summary.split(": ", 1)[1].split(" (")[0]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--scipy-neurons", type=int, default=256)
    parser.add_argument("--experts", type=int, default=4, help="k of the whole-model wnb expand run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the WD comparison (default 1: one core each, as the scipy loop)")
    parser.add_argument("--skip-commands", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, note = streaming_rows(args.tokens, args.scipy_neurons)
    print(f"Machine: {machine()}\n")
    print(table(rows))
    print(f"\n{note}\n")
    if not args.skip_commands:
        print("Whole-model runs of the bundled model (budget medium: 32 x 256 calibration tokens, 16 x 256 held out; "
              f"score: 1,024 tokens per layer; every FFN layer; expand: k = {args.experts}):\n")
        print(table(command_rows(args.experts)))


if __name__ == "__main__":
    main()
