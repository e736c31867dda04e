"""Joint sparsity + quantization on the bundled model: perplexity and effective bits per weight.

Every FFN layer pruned sequentially (true-sequential) with SparseGPT at 2:4 and 50%, and expanded with
Sparse Expansion (k = 4 and 16) at 50%, each without and with ``bits`` (default 4, one min-max grid per
output channel, or per ``--group-size`` columns) quantized inside the SparseGPT sweep. Perplexity on the
budget's held-out windows with its 95% bootstrap interval over windows; effective bits per FFN weight
(:func:`wnb.model_effective_bits`: values + mask + scales/zeros); for Sparse Expansion also the bits all
k experts store per dense weight (k × that; the routers' PCA bases and centroids are left out).

    python benchmarks/bench_quantize.py [--budget small] [--bits 4] [--group-size 128] [--ks 4,16]
"""
from __future__ import annotations

import argparse
import time

import torch
from _util import machine, table

import wnb
import wnb.app
import wnb.compression
import wnb.compression.sparsity
import wnb.tracing
from wnb.app.budgets import BUDGETS
from wnb.compression.quantize import quant_label
from wnb.tracing.nll import perplexity_interval


def ppl_cell(ppl: dict) -> str:
    return f"{ppl['perplexity']:.2f} [{ppl['ppl_low']:.2f}, {ppl['ppl_high']:.2f}]"


def run(lm, calib, held, bits: int, group_size: int | None, ks) -> list[dict]:
    rows = []
    dense = perplexity_interval(lm, held, progress=False)
    rows.append({"method": "dense", "sparsity": "0%", "quantization": "none", "perplexity [95% CI]": ppl_cell(dense),
                 "vs dense": 1.0, "bits / weight": 16.0, "build s": 0.0})
    print(rows[-1], flush=True)
    runs = [("SparseGPT", 1, "2:4"), ("SparseGPT", 1, 0.5)] + [("Sparse Expansion", k, 0.5) for k in ks]
    for method, k, sparsity in runs:
        for b in (None, bits):
            g = group_size if b is not None else None
            start = time.perf_counter()
            if k == 1:
                context = wnb.pruned(lm, "sparsegpt", sparsity, calib, progress=False, bits=b, group_size=g)
            else:
                context = wnb.expanded(lm, k, sparsity, calib, progress=False, bits=b, group_size=g)
            with context:
                build = time.perf_counter() - start
                ppl = perplexity_interval(lm, held, progress=False)
            eff = wnb.model_effective_bits(lm, b, sparsity, g)
            row = {"method": method if k == 1 else f"{method} k = {k}", "sparsity": wnb.compression.sparsity.sparsity_label(sparsity),
                   "quantization": quant_label(b, g) or "none", "perplexity [95% CI]": ppl_cell(ppl),
                   "vs dense": ppl["perplexity"] / dense["perplexity"], "bits / weight": eff, "build s": build}
            if k > 1:
                row["all experts, bits / dense weight"] = k * eff
            rows.append(row)
            print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="small", choices=list(BUDGETS), help="the app's token budgets")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=None, help="columns per grid (default: one per row)")
    parser.add_argument("--ks", default="4,16", help="expert counts of Sparse Expansion")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b = BUDGETS[args.budget]
    lm = wnb.load_model(device="cpu")
    calib, held = wnb.token_windows(lm, wnb.load_corpus(), b.seq_len, b.n_calib, b.n_eval, seed=0)
    print(f"Machine: {machine()}; budget {args.budget}: {b.n_calib} x {b.seq_len} calibration tokens, "
          f"{b.n_eval} x {b.seq_len} held out\n", flush=True)
    start = time.perf_counter()
    rows = run(lm, calib, held, args.bits, args.group_size, [int(k) for k in args.ks.split(",")])
    print(f"\n{table(rows)}\n\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
