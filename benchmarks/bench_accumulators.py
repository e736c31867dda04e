"""The two streaming WD accumulators side by side, for retiring one: :class:`wnb.StreamingWD` (a log-spaced grid
set from the first batch) and the one-pass reader's :class:`wnb.scoring.sketch.NeuronSketch` (bins uniform in
t/(1+|t|)), each fed the same outputs of the bundled model in batches of 2,048 tokens, against the exact WD
(:func:`wnb.wasserstein_to_gaussian`) of the same outputs: the largest and the median error over each layer's
neurons, and each accumulator's bytes per neuron.

    python benchmarks/bench_accumulators.py [--tokens 8192] [--seq-len 512]
"""
from __future__ import annotations

import argparse

from _util import machine, table

import wnb
from wnb.scoring.sketch import NeuronSketch
from wnb.scoring.streaming import StreamingWD
from wnb.scoring.wasserstein import wasserstein_to_gaussian

LAYERS = [f"model.layers.{i}.mlp.{p}" for i in (1, 15, 28) for p in ("gate_proj", "down_proj")]
BATCH = 2048


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    lm = wnb.load_model(device="cpu")
    calib, _ = wnb.token_windows(lm, wnb.load_corpus(), args.seq_len, args.tokens // args.seq_len, 0, seed=0)
    outputs = wnb.capture(lm, LAYERS, calib, inputs=False, progress=False)
    rows = []
    for name in LAYERS:
        y = outputs[name].outputs.float()
        exact = wasserstein_to_gaussian(y).double()
        row = {"layer": name, "tokens": y.shape[0]}
        stream = StreamingWD(n_bins=512)
        for start in range(0, y.shape[0], BATCH):
            stream.update(y[start:start + BATCH])
        err = (stream.wasserstein() - exact).abs()
        row.update({"StreamingWD(512) max err": err.max().item(), "median": err.median().item(),
                    "bytes/neuron": stream.nbytes() // y.shape[1]})
        for bins in (256, 512):
            sketch = NeuronSketch(y.shape[1], args.seq_len, n_bins=bins)
            for start in range(0, y.shape[0], BATCH):
                sketch.update(y[start:start + BATCH].view(-1, args.seq_len, y.shape[1]))
            err = (sketch.results()["wd"] - exact).abs()
            row.update({f"NeuronSketch({bins}) max err": err.max().item(), f"median ({bins})": err.median().item(),
                        f"bytes/neuron ({bins})": sketch.nbytes() // y.shape[1]})
        rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
