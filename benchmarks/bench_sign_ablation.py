"""Sign-specific ablation (issues 12 and 21) on the bundled model: the time of the tab's Run at each budget,
the clamp's overhead on a forward pass, and what the bundled model shows.

1. ``run``: what the Negative differentiation tab's Run does at its defaults (``wnb.widgets.negative.APP_DEFAULTS``:
   the first FFN projection of every block, fraction 0.01, side negative, the default controls — random, matched
   and, since it is one, the mirror —, agreement pairs), through a session on an empty cache of its own (as a
   first visit: each result is computed once and then read back by the next step): the statistics the set is
   ranked on (WD over every calibration token of the study's windows and its halves, as the tab's
   ``sign_stability``), the study, Δ surprisal. ``PYTHONPATH=<an older checkout>`` times that code the same way
   (``--label``; before issue 21 the first step is ``sign_scores``). Wall and CPU seconds of this process: on a
   shared machine the CPU time is the steadier number.
2. ``clamp``: one forward pass of 8 × 256 tokens dense vs inside ``wnb.sign_ablated``, alternating,
   ``--repeat`` pairs (median ratio of neighbours); target ≤ 1.05×.
3. ``findings`` (medium budget, the study's windows): the study with every control, agreement and TSE pairs,
   the set's stability, Δ surprisal by token class, and the depth profile with the pairs per phenomenon.
4. ``mirror`` (the same windows and pairs as ``findings``): dense, the Wasserstein ablation and its mirror (the
   same neurons, the positive side clamped) alone: whether the effect is specific to the sign.

    python benchmarks/bench_sign_ablation.py [run clamp findings mirror] [--budgets small medium large] [--pairs 20]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import pandas as pd
import torch
from _util import machine, table

import wnb
from wnb.app.budgets import BUDGETS
from wnb.app.session import Session
from wnb.experiments.sign_statistics import study_words
from wnb.scoring.selection import DEFAULT_CONTROLS
from wnb.widgets.negative import APP_DEFAULTS, negative_layers


class Clock:
    """Wall and CPU seconds (this process, all threads) of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def run_times(budget: str, label: str) -> list[dict]:
    """The tab's Run at ``budget``'s defaults on an empty cache, split into its three steps."""
    os.environ["WNB_CACHE"] = tempfile.mkdtemp(prefix="wnb-bench-sign-")
    session = Session(budget=budget)
    session.lm, session.calib  # loading the model and cutting the windows are not the Run's
    windows = session.sign_windows() if hasattr(session, "sign_windows") else (session.calib, session.held_out)
    layers = negative_layers(session, "all", None)
    seeds, n_pairs = APP_DEFAULTS[budget]
    before = load()
    with Clock() as whole:
        pairs = session.sign_pairs("agreement", n_pairs)
        with Clock() as scores:  # the tab's first step: WD and its halves in one pass (before issue 21: WD)
            if hasattr(session, "sign_stability"):
                session.sign_stability(layers, 0.01, progress=False)
            else:
                session.sign_scores(layers, progress=False)
        with Clock() as study_clock:
            study = session.sign_ablation(layers, 0.01, "negative", DEFAULT_CONTROLS, seeds, pairs, progress=False)
        m = study[study["selection"] == "matched"]
        with Clock() as surprisal:
            session.sign_surprisal(layers, 0.01, "negative", matched=int(m["per_layer"].iloc[0]),
                                   matched_seed=int(m["seed"].iloc[0]), progress=False)
    passes = 2 + seeds + int(m["evaluations"].iloc[0]) + int((study["selection"] == "mirror").any())
    common = {"code": label, "budget": budget, "windows": f"{windows[0].shape[0]} + {windows[1].shape[0]} × "
              f"{windows[0].shape[1]}", "load before": before}
    rows = [{**common, "step": "WD of 30 × 1,536 gate_proj" + (" (and halves)" if "top_overlap" in study else ""),
             "wall s": scores.wall, "CPU s": scores.cpu},
            {**common, "step": f"study: {passes} perplexity passes + {len(study)} scorings of {len(pairs)} pairs",
             "wall s": study_clock.wall, "CPU s": study_clock.cpu},
            {**common, "step": "Δ surprisal", "wall s": surprisal.wall, "CPU s": surprisal.cpu},
            {**common, "step": "**Run**", "wall s": whole.wall, "CPU s": whole.cpu}]
    print(f"{label} {budget}: Run {whole.wall:.1f} s wall, {whole.cpu:.1f} s CPU (load {before})", flush=True)
    return rows


def clamp_overhead(lm, repeat: int) -> list[dict]:
    """Dense and ablated forward passes alternate (ABAB...), so a change of machine load hits both;
    the ratio is the median of the ratios of neighbouring pairs."""
    import statistics

    b = BUDGETS["medium"]
    calib, held_out = wnb.token_windows(lm, wnb.load_corpus(), b.seq_len, b.n_calib, b.n_eval, seed=0)
    ids = held_out[:8]
    scores = wnb.wasserstein_scores(lm, calib, progress=False)

    def forward():
        with Clock() as c, torch.no_grad():
            lm.model(ids)
        return c

    rows = []
    for fraction in (0.01, 0.10):
        neurons = wnb.select_wasserstein(scores, fraction)
        for side in ("negative", "both"):
            forward()  # warm-up
            dense, ablated = [], []
            for _ in range(repeat):
                dense.append(forward())
                with wnb.sign_ablated(lm, neurons, side=side):
                    ablated.append(forward())
            rows.append({"selection": f"top {fraction:.0%} of 30 gate_proj ({sum(len(i) for i in neurons.values())})",
                         "side": side, "tokens": ids.numel(),
                         "dense wall s (best)": min(c.wall for c in dense),
                         "ablated wall s (best)": min(c.wall for c in ablated),
                         "ratio wall": statistics.median(a.wall / d.wall for a, d in zip(ablated, dense)),
                         "ratio CPU": statistics.median(a.cpu / d.cpu for a, d in zip(ablated, dense)),
                         "target": "≤ 1.05"})
    return rows


STUDY_COLUMNS = ["selection", "seed", "side", "n_neurons", "wd_rank_median", "perplexity", "delta_perplexity", "delta_ppl_low",
                 "delta_ppl_high", "nll_verdict", "w_delta_perplexity", "w_delta_ppl_low", "w_delta_ppl_high",
                 "w_nll_verdict", "accuracy", "acc_low", "acc_high", "delta_accuracy", "delta_acc_low",
                 "delta_acc_high", "mcnemar_p", "w_delta_accuracy", "w_delta_acc_low", "w_delta_acc_high",
                 "w_mcnemar_p", "w_acc_verdict"]


def print_study(study: pd.DataFrame) -> None:
    """The study's main columns, its accuracy per phenomenon, and the study in words."""
    print(table([{k: (None if pd.isna(v) else v) for k, v in r.items()}
                 for r in study[[c for c in STUDY_COLUMNS if c in study]].to_dict("records")]))
    phenomena = [c for c in study.columns if c.startswith("accuracy_")]
    print("\n" + table([{k: (None if pd.isna(v) else v) for k, v in r.items()}
                        for r in study[["selection", "seed"] + phenomena].to_dict("records")]))
    print("\n" + study_words(study))


def findings(n_pairs: int, depth_pairs: int) -> None:
    from wnb.scoring.stability import (
        stability_words,  # issue 21's: not in older checkouts the run part times
    )

    session = Session(budget="medium", use_cache=os.environ.get("WNB_BENCH_CACHE") == "1")
    layers = negative_layers(session, "all", None)
    calib, held_out = session.sign_windows()
    pairs = session.sign_pairs(("agreement", "tse"), n_pairs)
    controls = ("random", "matched", "mirror", "variance", "tokens", "positions")
    with Clock() as clock:
        study = session.sign_ablation(layers, 0.01, "negative", controls, 3, pairs, progress=False)
    print(f"\n### Study, medium budget ({calib.shape[0]} + {held_out.shape[0]} windows of {calib.shape[1]}), "
          f"{len(pairs)} pairs ({clock.wall:.0f} s)\n")
    print(f"scored by {study['pair_score'].iloc[0]}, {study['scoring_rule'].iloc[0]}; stability: "
          f"{stability_words(study.iloc[1], 0.01)}\n")
    print_study(study)
    print("\nmatched: " + "; ".join(study["note"].dropna()))
    m = study[study.selection == "matched"].iloc[0]
    surprisal = session.sign_surprisal(layers, 0.01, "negative", matched=int(m["per_layer"]),
                                       matched_seed=int(m["seed"]), progress=False)
    print("\n### Δ NLL by group\n")
    print(table(surprisal["by_group"].to_dict("records")))
    depth_set = session.sign_pairs(("agreement", "tse"), depth_pairs)
    with Clock() as clock:
        depth = session.sign_depth(layers, 0.01, "negative", depth_set, progress=False)
    print(f"\n### Depth profile, {len(depth_set)} pairs per step ({clock.wall:.0f} s)\n")
    keep = ["mode", "block", "delta_perplexity", "delta_ppl_low", "delta_ppl_high", "delta_accuracy", "mcnemar_p"]
    keep += [c for c in depth.columns if c.startswith("delta_accuracy_")]
    print(table([{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in depth[keep].to_dict("records")]))


def mirror(n_pairs: int) -> None:
    """Dense, the Wasserstein ablation and its mirror on ``findings``' windows and pairs: the study's
    ``w_delta_*`` on the mirror row are this side's effect − the other side's, paired."""
    session = Session(budget="medium", use_cache=os.environ.get("WNB_BENCH_CACHE") == "1")
    layers = negative_layers(session, "all", None)
    pairs = session.sign_pairs(("agreement", "tse"), n_pairs)
    with Clock() as clock:
        study = session.sign_ablation(layers, 0.01, "negative", ("mirror",), 3, pairs, progress=False)
    print(f"\n### The mirror, medium budget, {len(pairs)} pairs ({clock.wall:.0f} s)\n")
    print_study(study)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["run", "clamp", "findings"])
    parser.add_argument("--budgets", nargs="+", default=["small", "medium"], choices=list(BUDGETS))
    parser.add_argument("--label", default="this checkout", help="the code timed, for the run table")
    parser.add_argument("--pairs", type=int, default=20, help="pairs per phenomenon (findings' study)")
    parser.add_argument("--depth-pairs", type=int, default=5, help="pairs per phenomenon (findings' depth profile)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 makes CPU seconds a steadier measure on a shared "
                             "machine, where waiting threads spin")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}; load average {load()}\n")
    if "run" in args.parts:
        rows = [r for b in args.budgets for r in run_times(b, args.label)]
        print("\n### Time of the tab's Run (empty cache)\n")
        print(table(rows))
    if "clamp" in args.parts:
        print(f"\n### Clamp overhead on one forward pass (load average before: {load()})\n")
        print(table(clamp_overhead(wnb.load_model(device="cpu"), args.repeat)))
    if "findings" in args.parts:
        findings(args.pairs, args.depth_pairs)
    if "mirror" in args.parts:
        mirror(args.pairs)


if __name__ == "__main__":
    main()
