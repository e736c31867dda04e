"""Sparse Expansion on the bundled model: speed of routed layers, build time, perplexity, RI vs WD.

1. forward: a routed layer (k = 16: PCA routing + one grouped matmul per expert) vs the dense layer on
   the same held-out tokens (target ≤ 1.5×), for gate_proj (576 → 1536) and down_proj (1536 → 576).
2. build: time to build one block's expanded FFN with k = 16 (router fits + 16 SparseGPT experts per
   layer; gate and up share a router) vs plain SparseGPT of the same layers.
3. ppl: whole-model perplexity of SparseGPT vs expansion with k = 4 and 16 at 50%, 70% and 2:4.
4. ri: per-neuron RI = err_SparseGPT / err_expansion for one layer at 90%, regressed on WD, output mean
   and variance, and RI of the Wasserstein neurons (top 3% by WD) vs the rest, for k = 4 and 16 and two
   calibration sizes (``--calib`` and ``--ri-calib`` windows): experts need many tokens each.

    python benchmarks/bench_expand.py [--parts forward,build,ppl,ri] [--calib 32] [--eval 16] [--ri-calib 512]
                                        [--sparsities 0.5,0.7,2:4]
"""
from __future__ import annotations

import argparse
import time

import torch
from _util import machine, table, timed

import wnb
import wnb.compression
import wnb.compression.sparsity
from wnb.compression.expansion import build_experts, expand_layer
from wnb.compression.prune import prune_weight
from wnb.compression.router import Router

BLOCK = 5
LAYER = "model.layers.1.mlp.gate_proj"


def bench_forward(lm, calib, held):
    rows = []
    for leaf in ("gate_proj", "down_proj"):
        name = f"model.layers.{BLOCK}.mlp.{leaf}"
        x_calib = wnb.capture(lm, [name], calib, outputs=False, progress=False)[name].inputs
        x = wnb.capture(lm, [name], held, outputs=False, progress=False)[name].inputs
        dense = lm.model.get_submodule(name)
        routed = expand_layer(wnb.layer_weight(lm, name), x_calib, dense.bias, n_experts=16, sparsity=0.5)
        x3 = x.reshape(held.shape[0], held.shape[1], -1)
        with torch.no_grad():
            t_dense, _ = timed(lambda: dense(x3), repeat=7)
            t_routed, _ = timed(lambda: routed(x3), repeat=7)
            t_route, _ = timed(lambda: routed.router.predict(x3.clone()), repeat=7)
        rows.append({"layer": f"block {BLOCK} {leaf}", "tokens": x.shape[0], "dense ms": 1e3 * t_dense,
                     "expanded ms": 1e3 * t_routed, "of which routing ms": 1e3 * t_route,
                     "ratio": t_routed / t_dense})
    return rows


def bench_build(lm, calib):
    names = [f"model.layers.{BLOCK}.mlp.{leaf}" for leaf in ("gate_proj", "up_proj", "down_proj")]
    acts = wnb.capture(lm, names, calib, outputs=False, progress=False)
    rows = []
    router_time = {}
    for name in names:
        x = acts[name].inputs
        weight = wnb.layer_weight(lm, name).detach()
        t_sgpt, _ = timed(lambda: prune_weight(weight, x, "sparsegpt", 0.5), repeat=1)
        shared = name.endswith("up_proj")
        if shared:  # gate and up share one router: nothing to fit
            t_router = 0.0
            router = router_time["gate"]
        else:
            start = time.perf_counter()
            router = Router.fit(x, 16)
            t_router = time.perf_counter() - start
            router_time["gate"] = router
        start = time.perf_counter()
        build_experts(weight, x, router.predict(x), 16, 0.5)
        t_experts = time.perf_counter() - start
        rows.append({"layer": name.rsplit(".", 1)[1], "in x out": "x".join(map(str, weight.shape[::-1])),
                     "SparseGPT s": t_sgpt, "router fit s": t_router, "16 experts s": t_experts,
                     "ratio": (t_router + t_experts) / t_sgpt})
    return rows


def bench_ppl(lm, calib, held, sparsities=(0.5, 0.7, "2:4"), ks=(4, 16)):
    rows = [{"method": "dense", "sparsity": "0%", "perplexity": wnb.perplexity(lm, held, progress=False),
             "build s": 0.0, "vs SparseGPT": float("nan")}]
    for s in sparsities:
        start = time.perf_counter()
        with wnb.pruned(lm, "sparsegpt", s, calib, progress=False):
            build = time.perf_counter() - start
            base = wnb.perplexity(lm, held, progress=False)
        label = wnb.compression.sparsity.sparsity_label(s)
        rows.append({"method": "SparseGPT", "sparsity": label, "perplexity": base, "build s": build,
                     "vs SparseGPT": 1.0})
        for k in ks:
            start = time.perf_counter()
            with wnb.expanded(lm, k, s, calib, progress=False):
                build = time.perf_counter() - start
                ppl = wnb.perplexity(lm, held, progress=False)
            rows.append({"method": f"expansion k={k}", "sparsity": label, "perplexity": ppl, "build s": build,
                         "vs SparseGPT": ppl / base})
            print(rows[-1], flush=True)
    return rows


def bench_ri(lm, calib, held, sparsity=0.9, k=16):
    study = wnb.study_layer(lm, LAYER, calib, held, n_experts=k, sparsity=sparsity, progress=False)
    ri = wnb.relative_improvement(study)
    reg = wnb.ri_regression(ri)
    reg.insert(0, "calib tokens", calib.numel())
    reg.insert(1, "k", k)
    top = wnb.top_neurons(torch.tensor(ri["wd"].values), fraction=0.03).numpy()
    rest = ri.drop(index=top)
    summary = {"calib tokens": calib.numel(), "k": k, "median RI": ri["ri"].median(),
               "median RI, top 3% WD": ri.loc[top, "ri"].median(), "median RI, rest": rest["ri"].median(),
               "mean rel. error SparseGPT": (ri["rmse_sparsegpt"] / ri["variance"] ** 0.5).mean(),
               "mean rel. error expansion": (ri["rmse_expansion"] / ri["variance"] ** 0.5).mean()}
    change = wnb.entanglement_change(study, neurons=top, n_pairs=20_000)
    summary["median WD change, top 3%"] = (change["wd_ratio"] - 1).median()
    summary["median MD change, top 3%"] = (change["md_ratio"] - 1).median()
    return reg.to_dict("records"), [summary]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="forward,build,ppl,ri")
    parser.add_argument("--calib", type=int, default=32, help="calibration windows of 128 tokens")
    parser.add_argument("--eval", type=int, default=16, help="held-out windows of 128 tokens")
    parser.add_argument("--sparsities", default="0.5,0.7,2:4", help="sparsities of the ppl part")
    parser.add_argument("--ri-calib", type=int, default=512, help="calibration windows of 128 tokens, second RI run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    lm = wnb.load_model(device="cpu")
    calib, held = wnb.token_windows(lm, wnb.load_corpus(), seq_len=128, n_calib=args.calib, n_eval=args.eval, seed=0)
    print(f"Machine: {machine()}; {args.calib} x 128 calibration tokens, {args.eval} x 128 held-out\n")
    if "forward" in parts:
        print("Forward, k = 16, 50%:\n" + table(bench_forward(lm, calib, held)) + "\n", flush=True)
    if "build" in parts:
        print(f"Build, block {BLOCK}, k = 16, 50%:\n" + table(bench_build(lm, calib)) + "\n", flush=True)
    if "ri" in parts:
        regs, summaries = [], []
        # one draw: its first --calib windows are the small set, its held-out windows are disjoint from both
        big, ri_held = wnb.token_windows(lm, wnb.load_corpus(), seq_len=128, n_calib=args.ri_calib, n_eval=args.eval,
                                         seed=0)
        for windows in (big[:args.calib], big):
            for k in (4, 16):
                reg, summary = bench_ri(lm, windows, ri_held, k=k)
                regs += reg
                summaries += summary
        print(f"RI of {LAYER} at 90%, held-out {ri_held.numel():,} tokens:\n" + table(summaries) + "\n\n"
              "Regression of RI on each predictor:\n" + table(regs) + "\n", flush=True)
    if "ppl" in parts:
        sparsities = [s if ":" in s else float(s) for s in args.sparsities.split(",")]
        print("Perplexity:\n" + table(bench_ppl(lm, calib, held, sparsities)) + "\n", flush=True)


if __name__ == "__main__":
    main()
