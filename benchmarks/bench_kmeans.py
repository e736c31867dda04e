"""k-means restarts: the inertia each seeding reaches on the bundled model's router inputs.

The authors' code clusters with scikit-learn-style greedy k-means++ and n_init=100. wnb's default is
greedy k-means++ with 10 restarts and up to 300 Lloyd iterations (wnb.kmeans); its earlier default was
plain k-means++ (one candidate per centroid), 4 restarts, 100 iterations. For each layer and k this
prints the best inertia of each setting relative to the best of 100 greedy restarts (1.000 = as low),
and the seconds it took, on the PCA projection a Router fits (d_in / 32 dims, 8,192 calibration tokens).

    python benchmarks/bench_kmeans.py [--tokens 8192] [--layers model.layers.1.mlp.gate_proj ...]
"""
from __future__ import annotations

import argparse
import time

from _util import machine, table

import wnb
import wnb.compression
from wnb.compression.router import _pca, pca_dim

SETTINGS = {
    "plain, 4 restarts, 100 it (old default)": dict(greedy=False, n_init=4, max_iter=100),
    "greedy, 4 restarts, 300 it": dict(greedy=True, n_init=4, max_iter=300),
    "greedy, 10 restarts, 300 it (default)": dict(greedy=True, n_init=10, max_iter=300),
    "plain, 100 restarts, 100 it": dict(greedy=False, n_init=100, max_iter=100),
    "greedy, 100 restarts, 300 it (authors')": dict(greedy=True, n_init=100, max_iter=300),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--layers", nargs="+", default=["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.down_proj",
                                                   "model.layers.15.mlp.gate_proj"])
    p.add_argument("--k", type=int, nargs="+", default=[4, 8, 16])
    args = p.parse_args(argv)
    lm = wnb.load_model(device="cpu")
    seq = 256
    calib, _ = wnb.token_windows(lm, wnb.load_corpus(), seq_len=seq, n_calib=args.tokens // seq, n_eval=1, seed=0)
    acts = wnb.capture(lm, args.layers, calib, outputs=False, progress=False)
    rows = []
    for name in args.layers:
        x = acts[name].inputs
        mean, comps = _pca(x, pca_dim(x.shape[1], 32))
        z = (x - mean) @ comps
        for k in args.k:
            results = {}
            for label, kw in SETTINGS.items():
                start = time.perf_counter()
                results[label] = (wnb.kmeans(z, k, seed=0, **kw).inertia, time.perf_counter() - start)
            ref = results["greedy, 100 restarts, 300 it (authors')"][0]
            for label, (inertia, seconds) in results.items():
                rows.append({"layer": name.removeprefix("model."), "k": k, "setting": label, "inertia": inertia,
                             "vs authors'": round(inertia / ref, 4), "seconds": seconds})
    print(f"k-means on router inputs, {args.tokens} tokens, PCA d_in/32 ({machine()})\n")
    print(table(rows))


if __name__ == "__main__":
    main()
