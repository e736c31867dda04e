"""Sign-specific ablation (issue 12) on the bundled model: time of the default study and where it goes,
the clamp's overhead on a forward pass, and what the bundled model shows.

1. ``study``: ``wnb.sign_ablation_study(lm, calib, held_out)`` at its defaults (first FFN projection of
   every block, fraction 0.01, side negative, random controls for seeds 0, 1, 2, the perplexity-matched
   control) on the app's small and medium budgets (``wnb.app.budgets.BUDGETS``; windows from
   ``token_windows(lm, load_corpus(), seq_len, n_calib, n_eval, seed=0)``), timed end to end and split
   into its parts (WD scoring, one perplexity pass, one scoring of the minimal pairs) timed on their
   own; then the same study with the agreement minimal pairs. Wall and CPU seconds: on a shared machine
   the CPU time is the steadier number.
2. ``clamp``: one forward pass of 8 × 256 tokens dense vs inside ``wnb.sign_ablated``, alternating,
   ``--repeat`` pairs (median ratio of neighbours); target ≤ 1.05×.
3. ``findings`` (medium budget): the study table with minimal pairs, Δ surprisal by token class for the
   Wasserstein ablation and the matched control, the tokens whose NLL rises most, and the depth profile.

    python benchmarks/bench_sign_ablation.py [study clamp findings] [--budgets small medium] [--pairs 100]
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from _util import machine, table

import wnb
import wnb.app
import wnb.app.budgets
import wnb.experiments
from wnb.app.budgets import BUDGETS


def windows(lm, budget: str):
    b = BUDGETS[budget]
    return wnb.token_windows(lm, wnb.load_corpus(), b.seq_len, b.n_calib, b.n_eval, seed=0)


class Clock:
    """Wall and CPU seconds (this process, all threads) of a block: CPU time moves much less than wall
    time when other jobs share the cores."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def study_times(lm, budget: str, pairs) -> list[dict]:
    """The whole default study (and with pairs), and its parts timed on their own."""
    from wnb.experiments.pair_scoring import minimal_pair_scores

    calib, held_out = windows(lm, budget)
    with Clock() as wd:
        scores = wnb.wasserstein_scores(lm, calib, progress=False)
    with Clock() as ppl:
        wnb.token_nll(lm, held_out, progress=False)
    with Clock() as mp:
        minimal_pair_scores(lm, pairs, progress=False)
    rows = [{"budget": budget, "what": "WD of 30 × 1,536 gate_proj neurons", "tokens": calib.numel(),
             "wall s": wd.wall, "CPU s": wd.cpu},
            {"budget": budget, "what": "one perplexity pass (held-out)", "tokens": held_out.numel(),
             "wall s": ppl.wall, "CPU s": ppl.cpu},
            {"budget": budget, "what": f"one scoring of {len(pairs)} agreement pairs", "tokens": "",
             "wall s": mp.wall, "CPU s": mp.cpu}]
    for label, kw in (("default", {}), (f"+ {len(pairs)} agreement pairs", {"pairs": pairs})):
        with Clock() as whole:
            study = wnb.sign_ablation_study(lm, calib, held_out, progress=False, **kw)
        passes = 5 + int(study.loc[study.selection == "matched", "evaluations"].iloc[0])
        model = wd.cpu + passes * ppl.cpu + (len(study) * mp.cpu if kw else 0)
        rows.append({"budget": budget, "what": f"study, {label}: {passes} perplexity passes"
                     + (f" + {len(study)} pair scorings" if kw else ""), "tokens": "",
                     "wall s": whole.wall, "CPU s": whole.cpu, "CPU of the parts": model})
        print(f"{budget} {label}: {whole.wall:.1f} s wall, {whole.cpu:.1f} s CPU", flush=True)
    del scores
    return rows


def clamp_overhead(lm, repeat: int) -> list[dict]:
    """Dense and ablated forward passes alternate (ABAB...), so a change of machine load hits both;
    the ratio is the median of the ratios of neighbouring pairs."""
    import statistics

    calib, held_out = windows(lm, "medium")
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


def findings(lm, n_pairs: int) -> None:
    calib, held_out = windows(lm, "medium")
    pairs = wnb.minimal_pairs("agreement", n=n_pairs)
    start = time.perf_counter()
    scores = wnb.wasserstein_scores(lm, calib, progress=False)
    study = wnb.sign_ablation_study(lm, None, held_out, scores=scores, pairs=pairs, progress=False)
    print(f"\n### Study at the defaults, medium budget, {len(pairs)} agreement pairs "
          f"({time.perf_counter() - start:.0f} s)\n")
    cols = ["selection", "seed", "n_neurons", "perplexity", "ppl_low", "ppl_high", "accuracy"]
    cols += [c for c in study.columns if c.startswith("accuracy_")]
    print(table([{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in study[cols].to_dict("records")]))
    print("\nmatched: " + "; ".join(study["note"].dropna()))

    wasserstein = wnb.select_wasserstein(scores, 0.01)
    m = study[study.selection == "matched"].iloc[0]
    matched = wnb.select_matched(wnb.matched_candidates(scores, seed=int(m["seed"])), int(m["per_layer"]))
    dense_nll = wnb.token_nll(lm, held_out, progress=False)
    rows = []
    tables = {}
    for name, neurons in (("wasserstein", wasserstein), ("matched", matched)):
        tables[name] = wnb.token_surprisal(lm, held_out, neurons, dense_nll=dense_nll, progress=False)
    for by in ("group", "token_class"):
        merged = None
        for name, t in tables.items():
            s = wnb.surprisal_by_class(t, by=by)[[by, "n_tokens", "token_share", "delta_nll", "excess_share"]]
            s = s.rename(columns={"delta_nll": f"Δ NLL {name}", "excess_share": f"excess share {name}"})
            merged = s if merged is None else merged.merge(s.drop(columns=["n_tokens", "token_share"]), on=by)
        rows = merged.to_dict("records")
        print(f"\n### Δ NLL per token by {by} (held-out medium windows, {len(tables['wasserstein']):,} tokens)\n")
        print(table(rows))
    top = wnb.top_surprisal_tokens(tables["wasserstein"], n=15, min_count=5)
    print("\n### Tokens whose NLL rises most under the Wasserstein ablation (≥ 5 occurrences)\n")
    print(table([{"token": repr(r["token"]), "class": r["token_class"], "count": r["count"],
                  "dense NLL": r["dense_nll"], "Δ NLL": r["delta_nll"]} for r in top.to_dict("records")]))

    start = time.perf_counter()
    depth = wnb.sign_ablation_depth(lm, None, held_out, scores=scores, progress=False)
    print(f"\n### Depth profile, medium budget ({time.perf_counter() - start:.0f} s)\n")
    single = depth[depth["mode"] == "layer"].set_index("block")
    cumulative = depth[depth["mode"] == "cumulative"].set_index("block")
    print(table([{"block": int(b), "Δ ppl this layer alone": single.loc[b, "delta_perplexity"],
                  "Δ ppl layers 0..l": cumulative.loc[b, "delta_perplexity"]} for b in single.index]))
    print(f"\nsum of the single-layer Δ ppl: {single['delta_perplexity'].sum():.3f}; all layers at once: "
          f"{cumulative['delta_perplexity'].iloc[-1]:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["study", "clamp", "findings"])
    parser.add_argument("--budgets", nargs="+", default=["small", "medium"], choices=list(BUDGETS))
    parser.add_argument("--pairs", type=int, default=100, help="agreement pairs per phenomenon")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    lm = wnb.load_model(device="cpu")
    load = open("/proc/loadavg").read().split()[0]
    print(f"Machine: {machine()}; load average {load}\n")
    if "study" in args.parts:
        pairs = wnb.minimal_pairs("agreement", n=args.pairs)
        rows = [r for b in args.budgets for r in study_times(lm, b, pairs)]
        print(f"\n### Time of the study (load average before: {load})\n")
        print(table(rows))
    if "clamp" in args.parts:
        load = open("/proc/loadavg").read().split()[0]
        print(f"\n### Clamp overhead on one forward pass (load average before: {load})\n")
        print(table(clamp_overhead(lm, args.repeat)))
    if "findings" in args.parts:
        findings(lm, args.pairs)


if __name__ == "__main__":
    main()
