"""The one-pass reader against the bare forward over the same tokens (issue 23).

Bundled model, medium calibration budget (32 × 256 bundled-corpus tokens, ``token_windows(seed=0)``), all
90 FFN linear layers. In one process (the model loaded once, its load excluded from every time), side by
side and alternating, best of ``--repeat``:

1. the bare forward: ``lm.model(ids, use_cache=False)`` over the same batches of windows the reader uses;
2. the forward truncated after the deepest FFN layer (a plain hook raising an exception, as the reader
   stops): what the reader itself can skip; and the same pass through nnsight (``wnb.capture`` of the 90
   layers' outputs with a no-op ``on_batch``, one trace per batch ending in ``tracer.stop()``), which the
   reader's plain hooks replace;
3. ``wnb.read_model(lm, calib, wd="streaming")``: streaming WD, sign statistics, moments, positions;
4. the same with ``contexts=20``: top and bottom 20 with their tokens, band samples.

Wall and CPU seconds (this process, every thread) are both kept, each the best of the runs: on a machine
other jobs share, CPU seconds with one thread (``--threads 1``) are the steadiest measure of the work.
Targets: (3) ≤ 1.5 × (1); (4) ≤ 2 × (1). Peak memory beside the model: each of (1), (3), (4) once more in a
fresh process, peak resident memory (VmHWM) minus that of loading the model, cutting the windows and one
two-token forward (the bundled weights are mapped lazily: the first forward brings them into memory); the
reader's own statement (``plan_read(...).total_bytes``) beside it. Target < 1 GiB.

    python benchmarks/bench_reader.py [--repeat 2] [--windows 32] [--no-memory] [--profile]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from _util import machine, peak_rss_mib, table

import wnb
from wnb.reading.reader import plan_read

SETUP = """
import torch, wnb
torch.set_num_threads({threads})
lm = wnb.load_model(device="cpu")
calib, _ = wnb.token_windows(lm, wnb.load_corpus(), seq_len=256, n_calib={windows}, n_eval=16, seed=0)
with torch.no_grad():
    lm.model(calib[:1, :2])  # every weight in memory (the bundled copy is mapped lazily): part of the model
"""
RUN = {
    "load": "",
    "bare forward": """
from wnb.reading.reader import plan_read
b = plan_read(lm, calib, wd="streaming").batch_windows
with torch.no_grad():
    for s in range(0, calib.shape[0], b):
        lm.model(calib[s:s + b], use_cache=False)
""",
    "read": "wnb.read_model(lm, calib, wd='streaming', progress=False)",
    "read + contexts 20": "wnb.read_model(lm, calib, wd='streaming', contexts=20, progress=False)",
}


class _Stop(Exception):
    pass


def truncated(lm, calib, batch):
    """The forward over the same batches, stopped after the deepest FFN layer by a no-op hook."""
    last = wnb.ffn_layers(lm)[-1]

    def stop(mod, inputs, output):
        raise _Stop

    handle = lm.model.get_submodule(last).register_forward_hook(stop)
    try:
        with torch.no_grad():
            for s in range(0, calib.shape[0], batch):
                try:
                    lm.model(calib[s:s + batch], use_cache=False)
                except _Stop:
                    pass
    finally:
        handle.remove()


def bare(lm, calib, batch):
    with torch.no_grad():
        for s in range(0, calib.shape[0], batch):
            lm.model(calib[s:s + batch], use_cache=False)


def timings(lm, calib, repeat: int) -> dict[str, tuple[float, float]]:
    """Best wall and best CPU seconds (this process, all threads) of each run, alternating."""
    batch = plan_read(lm, calib, wd="streaming").batch_windows
    runs = {"bare forward": lambda: bare(lm, calib, batch),
            "truncated forward": lambda: truncated(lm, calib, batch),
            "nnsight pass (capture, no-op on_batch)": lambda: wnb.capture(
                lm, wnb.ffn_layers(lm), calib, batch_size=batch, inputs=False, progress=False, on_batch=lambda b: None),
            "read": lambda: wnb.read_model(lm, calib, wd="streaming", progress=False),
            "read + contexts 20": lambda: wnb.read_model(lm, calib, wd="streaming", contexts=20, progress=False)}
    bare(lm, calib, batch)  # warm-up
    best = {name: (float("inf"), float("inf")) for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
            print(f"  {name}: {wall:.1f} s wall, {cpu:.1f} s CPU (load {os.getloadavg()[0]:.1f})", flush=True)
    return best


def memory(windows: int, threads: int) -> dict[str, float]:
    setup = SETUP.format(threads=threads, windows=windows)
    peaks = {name: peak_rss_mib(setup + code) for name, code in RUN.items()}
    return {name: peaks[name] - peaks["load"] for name in RUN if name != "load"}


def profile(lm, calib) -> None:
    """Where the reader's time goes: torch's operators, top 15 by self time (contexts on)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    with prof(activities=[ProfilerActivity.CPU]) as p:
        wnb.read_model(lm, calib, wd="streaming", contexts=20, progress=False)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--windows", type=int, default=32, help="calibration windows of 256 tokens")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory runs")
    parser.add_argument("--profile", action="store_true", help="print the reader's operator profile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = wnb.load_model(device="cpu")
    calib, _ = wnb.token_windows(lm, wnb.load_corpus(), seq_len=256, n_calib=args.windows, n_eval=16, seed=0)
    plans = {"read": plan_read(lm, calib, wd="streaming"),
             "read + contexts 20": plan_read(lm, calib, wd="streaming", contexts=20)}
    print(f"{machine()}; {calib.numel():,} tokens, {len(wnb.ffn_layers(lm))} FFN layers")
    for name, plan in plans.items():
        print(f"{name}: {plan.describe()}")
    if args.profile:
        profile(lm, calib)
    best = timings(lm, calib, args.repeat)
    peaks = {} if args.no_memory else memory(args.windows, args.threads)
    rows = []
    (bare_wall, bare_cpu), (cut_wall, _) = best["bare forward"], best["truncated forward"]
    for name, (wall, cpu) in best.items():
        target = {"read": "≤ 1.5", "read + contexts 20": "≤ 2"}.get(name, "")
        row = {"what": name, "wall s": round(wall, 1), "CPU s": round(cpu, 1),
               "× bare forward (wall)": round(wall / bare_wall, 2), "× bare forward (CPU)": round(cpu / bare_cpu, 2),
               "× truncated forward (wall)": round(wall / cut_wall, 2), "target": target}
        if name in plans:
            row["stated MiB"] = round(plans[name].total_bytes / 2**20)
        if name in peaks:
            row["peak MiB beside the model"] = round(peaks[name])
        rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
