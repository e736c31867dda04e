"""Accuracy of the streaming WD (:class:`wnb.NeuronSketch`, the one-pass reader's accumulator) against the exact WD
(:func:`wnb.wasserstein_to_gaussian`) of the same outputs: the largest and the median error over each layer's
neurons and the bytes per neuron, for 256 and 512 bins.

1. The bundled model's outputs (6 layers), fed in batches of 2,048 tokens in the corpus's order, and again with
   the windows sorted so that the first batch holds the windows where the layer is quietest (the grid is set
   from the first batch: the hardest order a corpus could give).
2. Synthetic neurons whose first windows are far narrower than the rest (a Student-t(4) neuron whose first
   2,048 outputs (the first batch) are 10, 100 or 1,000 times narrower; a quiet neuron with rare late spikes of 50 std).

    python benchmarks/bench_sketch.py [--tokens 8192] [--seq-len 512]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from _util import machine, table

import wnb
from wnb.scoring.sketch import NeuronSketch
from wnb.scoring.wasserstein import wasserstein_to_gaussian

LAYERS = [f"model.layers.{i}.mlp.{p}" for i in (1, 15, 28) for p in ("gate_proj", "down_proj")]
BATCH = 2048
SEQ = 32  # the synthetic windows


def errors(y: torch.Tensor, seq_len: int, exact: torch.Tensor) -> dict:
    """Largest and median |streaming − exact| and bytes per neuron, 256 and 512 bins; ``y [windows, seq, d]``."""
    row = {}
    per_batch = max(1, BATCH // seq_len)
    for bins in (256, 512):
        sketch = NeuronSketch(y.shape[2], seq_len, n_bins=bins)
        for part in y.split(per_batch):
            sketch.update(part)
        err = (sketch.results()["wd"] - exact).abs()
        row.update({f"max err ({bins})": err.max().item(), f"median ({bins})": err.median().item(),
                    f"bytes/neuron ({bins})": sketch.nbytes() // y.shape[2]})
    return row


def bundled_rows(tokens: int, seq_len: int) -> list[dict]:
    lm = wnb.load_model(device="cpu")
    calib, _ = wnb.token_windows(lm, wnb.load_corpus(), seq_len, tokens // seq_len, 0, seed=0)
    outputs = wnb.capture(lm, LAYERS, calib, inputs=False, progress=False)
    rows = []
    for name in LAYERS:
        y = outputs[name].outputs.float().view(-1, seq_len, outputs[name].outputs.shape[1])
        exact = wasserstein_to_gaussian(y.reshape(-1, y.shape[2])).double()
        quiet_first = y[torch.argsort(y.std(dim=1).mean(dim=1))]
        for order, windows in (("corpus", y), ("quietest windows first", quiet_first)):
            rows.append({"outputs": name, "order": order, **errors(windows, seq_len, exact)})
    return rows


def synthetic_rows() -> list[dict]:
    rng = np.random.default_rng(0)
    n, early = SEQ * 640, BATCH  # the first batch is all narrow
    cases = {}
    for ratio in (10, 100, 1000):
        cases[f"t(4), first {early} outputs {ratio}x narrower"] = np.concatenate(
            [rng.normal(0, 1 / ratio, early), rng.standard_t(4, n - early)])
    spikes = rng.normal(0, 0.01, n)
    spikes[early:][rng.random(n - early) < 1e-3] = 50.0
    cases["quiet, rare spikes after the first batch"] = spikes
    rows = []
    for name, column in cases.items():
        y = torch.from_numpy(column).float()[:, None]
        rows.append({"outputs": name, "order": "as made",
                     **errors(y.view(-1, SEQ, 1), SEQ, wasserstein_to_gaussian(y).double())})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    print(table(bundled_rows(args.tokens, args.seq_len) + synthetic_rows()))


if __name__ == "__main__":
    main()
