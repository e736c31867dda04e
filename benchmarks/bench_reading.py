"""Reading a neuron: neuron_contexts against the capture alone, and its state against the outputs it avoids.

1. Time of ``wnb.neuron_contexts`` (k = 20: every neuron's 20 highest and lowest outputs, moments, outputs
   by position, band samples; the one-pass reader, ``wnb.read_model(..., contexts=20)``, of that layer alone)
   of layer 1 gate_proj over 65,536 tokens against ``wnb.tracing.capture`` of the same layer's outputs alone
   (which keeps them on the CPU); both one pass over the same windows, same batches.
   Runs alternate and each keeps its best time. Target: ratio ≤ 1.15.
   The reader's statistics alone (``wnb.contexts_from_outputs``: the layer's sketch and contexts feed, no
   model) are also timed on the captured outputs, in the same batches.
2. Bytes of the NeuronContexts state (per neuron, and the token windows it keeps to decode contexts)
   against the float32 outputs [tokens, 1536] a capture holds.
3. ``--reselect N``: the app's Entangled neurons view on the small budget (the layer analysed and its
   contexts cached first): seconds from selecting another neuron until every part is redrawn (the three
   figures, the summary and, open, the whole "What it reads" section), median of N neurons, against the
   same with the section closed. Target: ≤ 0.5 s with the section open.

    python benchmarks/bench_reading.py [--tokens 65536] [--repeat 3] [--reselect 10] [--only-reselect]
"""
from __future__ import annotations

import argparse
import time

from _util import machine, table

import wnb
import wnb.app
import wnb.tracing

LAYER = "model.layers.1.mlp.gate_proj"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="windows of 256 tokens per batch")
    parser.add_argument("--reselect", type=int, default=10, help="neurons re-selected in the app view (0: skip)")
    parser.add_argument("--only-reselect", action="store_true", help="time the re-selection only")
    args = parser.parse_args()
    if args.reselect:
        print(table(reselect_rows(args.reselect)))
    if args.only_reselect:
        return
    lm = wnb.load_model(device="cpu")
    n_win = -(-args.tokens // 256)
    windows, _ = wnb.token_windows(lm, wnb.load_corpus(), seq_len=256, n_calib=n_win, n_eval=0, seed=1)
    windows = windows[:n_win]

    def run_capture():
        return wnb.capture(lm, [LAYER], windows, max_tokens=args.tokens, inputs=False, batch_size=args.batch_size,
                           progress=False)[LAYER].outputs

    def run_contexts():
        return wnb.neuron_contexts(lm, LAYER, windows, k=20, max_tokens=args.tokens, batch_size=args.batch_size,
                                   progress=False)

    best = {"capture": float("inf"), "contexts": float("inf")}
    outputs = ctx = None
    run_capture()  # warm-up
    for _ in range(args.repeat):
        for name, fn in (("capture", run_capture), ("contexts", run_contexts)):
            start = time.perf_counter()
            result = fn()
            best[name] = min(best[name], time.perf_counter() - start)
            if name == "capture":
                outputs = result
            else:
                ctx = result
            del result
    batch_tokens = args.batch_size * 256
    t_acc = min(_timed(lambda: wnb.contexts_from_outputs(outputs, windows, k=20, batch_tokens=batch_tokens))
                for _ in range(args.repeat))
    out_bytes = outputs.numel() * outputs.element_size()
    rows = [{"what": f"neuron_contexts k=20, {outputs.shape[0]:,} tokens x {outputs.shape[1]:,} neurons",
             "wnb s": best["contexts"], "baseline": "capture of the outputs alone", "baseline s": best["capture"],
             "ratio": best["contexts"] / best["capture"], "target": "≤ 1.15"},
            {"what": f"contexts_from_outputs: sketch + contexts alone, fed the captured outputs in the same "
                     f"batches of {batch_tokens:,}",
             "wnb s": t_acc, "baseline": "capture of the outputs alone", "baseline s": best["capture"],
             "ratio": t_acc / best["capture"]},
            {"what": "state kept per neuron (k=20, 8 samples x 7 bands, moments, position bins)",
             "wnb MiB": ctx.nbytes() / 2**20, "baseline": "float32 outputs [tokens, neurons]",
             "baseline MiB": out_bytes / 2**20, "ratio": ctx.nbytes() / out_bytes},
            {"what": "state + the token windows (int32) kept to decode contexts",
             "wnb MiB": ctx.nbytes(windows=True) / 2**20, "baseline": "float32 outputs [tokens, neurons]",
             "baseline MiB": out_bytes / 2**20, "ratio": ctx.nbytes(windows=True) / out_bytes}]
    print(f"machine: {machine()}; best of {args.repeat} alternating runs; batches of {args.batch_size} windows x 256")
    print(table(rows))
    print(f"state per neuron: {ctx.nbytes() / outputs.shape[1]:,.0f} bytes (the same for any number of tokens)")


def reselect_rows(n: int) -> list[dict]:
    """Median seconds of re-selecting ``n`` neurons with "What it reads" open and closed."""
    import statistics

    import wnb.widgets as ww
    from wnb.app.session import Session

    app = ww.App(session=Session(budget="small"))
    app.start()
    view = app.neurons
    view.reading_box.selected_index = 0
    view.show(2)  # warm: the contexts and the sign quadrants come from the cache from here on
    times = {}
    for state, index in (("open", 0), ("closed", None)):
        view.reading_box.selected_index = index
        times[state] = []
        for rank in range(3, 3 + n):
            start = time.perf_counter()
            view.show(rank)
            times[state].append(time.perf_counter() - start)
    open_, closed = statistics.median(times["open"]), statistics.median(times["closed"])
    return [{"what": f"re-select a neuron, 'What it reads' open (median of {n})", "wnb s": open_,
             "baseline": "the same with the section closed (figures and summary only)", "baseline s": closed,
             "ratio": open_ / closed, "target": "≤ 0.5 s", "max s": max(times["open"])}]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
