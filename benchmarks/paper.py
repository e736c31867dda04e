"""The paper's setting as one script: WD overview, Fig. 3 ablation, Sparse Expansion k-sweep, and a table.

Default: EleutherAI/pythia-1.4b-deduped, WikiText-2 (calibration from train, perplexity on test),
128 windows x 2048 tokens, layer 1's first FFN projection (dense_h_to_4h), neuron 2402, 90% sparsity,
k = 1, 2, 4, 8, 16 (needs a GPU machine and the network for the model and corpus). ``--small`` runs
the same on the bundled SmolLM2 and the bundled corpus with small budgets, offline on a CPU.

1. overview  streaming WD of every neuron of every FFN layer over all calibration tokens
2. detail    the layer's neuron table: exact WD, mapping difficulty (MD), WD-MD R² (Fig. 2e)
3. ablation  perplexity when 3% of the neurons of every FFN layer, chosen by WD / random / mean /
             variance / weight norm, are pruned to 90% with SparseGPT (Fig. 3)
4. ksweep    the layer expanded into k experts at 90%: RI = err_SparseGPT / err_expansion of the chosen
             neuron (paper: 1.00 / 1.24 / 1.31 / 1.65 / 1.87), of the Wasserstein neurons and the rest,
             and R² of RI on WD, mean and variance (Fig. 7)
5. models    whole-model perplexity of SparseGPT (k = 1) and Sparse Expansion with each k that fits
6. claims    every claim of both papers with its verdict (wnb.run_claims with the papers' own plan,
             ``--small``: the small budget's), as ``wnb claims``: claims.csv and claims.html
Writes CSVs, PNGs and paper_table.md into the output folder (manifest.json as the wnb command does).

    python benchmarks/paper.py --small -o paper-small
    python benchmarks/paper.py --device cuda --dtype bfloat16 -o paper-pythia
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import wnb
import wnb.cli
import wnb.core
from wnb import plots
from wnb.app.claims_page import claims_page
from wnb.cli.run_folder import RunFolder
from wnb.core.stats import r_squared
from wnb.errors import WnbError
from wnb.experiments.claim_runner import claims_frame, run_claims

PAPER_RI = {1: 1.00, 2: 1.24, 4: 1.31, 8: 1.65, 16: 1.87}  # Pythia-1.4B, layer 1 dense_h_to_4h, neuron 2402, 90%
PARTS = ("overview", "detail", "ablation", "ksweep", "models", "claims")
# The authors' code: down_proj's calibration inputs come through the dense gate and up projections
# (block order, not wnb's true-sequential default), and k-means keeps the best of 100 restarts.
PAPER_ORDER = {"true_sequential": False}
PAPER_N_INIT = 100


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="bundled model and corpus, small budgets (CPU, offline)")
    p.add_argument("--model", default="EleutherAI/pythia-1.4b-deduped")
    p.add_argument("--revision", default=None)
    p.add_argument("--corpus", default="wikitext2")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--windows", type=int, default=128, help="calibration windows")
    p.add_argument("--eval-windows", type=int, default=40, help="held-out windows for perplexity")
    p.add_argument("--layer", default=None, help="default: the first FFN projection of block 1")
    p.add_argument("--neuron", type=int, default=2402, help="neuron followed through the k-sweep (--small: top WD)")
    p.add_argument("--sparsity", type=float, default=0.9, help="sparsity of the ablation and the k-sweep (paper 0.9)")
    p.add_argument("--fraction", type=float, default=0.03, help="share of neurons in the ablation (paper 0.03)")
    p.add_argument("--experts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--model-experts", type=int, nargs="+", default=None,
                   help="k of the whole-model perplexity runs (default: --experts; --small: 1 4)")
    p.add_argument("--model-sparsity", type=float, default=0.5, help="sparsity of the whole-model runs")
    p.add_argument("--detail-tokens", type=int, default=131_072, help="tokens of the layer's exact neuron table")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="paper-results")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.small:  # the bundled model and corpus; options given explicitly still win
        small = {"model": None, "corpus": "bundled", "seq_len": 128, "windows": 128, "eval_windows": 16,
                 "neuron": None, "detail_tokens": 1 << 30, "model_experts": [1, 4]}
        for name, value in small.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    args.model_experts = args.model_experts or args.experts
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    return args


def load_windows(lm, args):
    """Calibration windows and held-out windows: WikiText-2 train / test, else disjoint draws of one corpus."""
    if args.corpus in ("wikitext2", "wikitext-2"):
        calib, _ = wnb.token_windows(lm, wnb.load_corpus("wikitext2", "train"), args.seq_len, args.windows, 0, args.seed)
        _, held = wnb.token_windows(lm, wnb.load_corpus("wikitext2", "test"), args.seq_len, 0, args.eval_windows,
                                    args.seed)
        return calib, held
    return wnb.token_windows(lm, wnb.load_corpus(args.corpus), args.seq_len, args.windows, args.eval_windows, args.seed)


def overview(run, lm, calib, args):
    wd = wnb.read_model(lm, calib, wnb.ffn_layers(lm), wd="streaming", batch_size=args.batch_size).scores()
    table = wnb.overview_table(lm, wd, args.fraction)
    table["top_neurons"] = table["top_neurons"].map(lambda v: " ".join(map(str, v)))
    run.table("overview.csv", table, "per layer: streaming WD quantiles and the Wasserstein neurons")
    run.figure("overview.png", plots.wd_overview(wd), "WD of every FFN neuron per block")
    return table


def detail(run, lm, calib, layer, args):
    acts = wnb.capture(lm, [layer], calib, max_tokens=args.detail_tokens, batch_size=args.batch_size)[layer]
    table = wnb.neuron_table(acts.outputs, acts.inputs, wnb.layer_weight(lm, layer), seed=args.seed)
    run.table("detail.csv", table, f"{layer}: exact WD, MD, mean, variance, weight norm per neuron")
    top = wnb.top_neurons(torch.tensor(table.sort_values("neuron")["wd"].to_numpy()), args.fraction).tolist()
    run.figure("detail_wd_vs_md.png", plots.neuron_scatter(table, "wd", "md", highlight=top, title=layer),
               "WD vs MD per neuron (Fig. 2e)")
    return table, r_squared(table["wd"], table["md"])


def ablation(run, lm, calib, held, args):
    table = wnb.ablation(lm, calib, held, fraction=args.fraction, sparsity=args.sparsity, method="sparsegpt",
                         seed=args.seed, batch_size=args.batch_size, **PAPER_ORDER)
    run.table("ablation.csv", table, f"perplexity with {args.fraction:.0%} of every FFN layer's neurons pruned "
              f"to {args.sparsity:.0%}, chosen by each criterion (Fig. 3)")
    run.figure("ablation.png", plots.ablation_bars(table, title=lm.name), "Fig. 3")
    return table


def ksweep(run, lm, calib, held, layer, neuron, args):
    rows, last = [], None
    for k in args.experts:
        start = time.perf_counter()
        study = wnb.study_layer(lm, layer, calib, held, n_experts=k, sparsity=args.sparsity, seed=args.seed,
                                n_init=PAPER_N_INIT)
        ri = wnb.relative_improvement(study)
        top = set(wnb.top_neurons(torch.tensor(ri["wd"].to_numpy()), args.fraction).tolist())
        is_top = ri["neuron"].isin(top)
        fit = wnb.ri_regression(ri).set_index("predictor")["r2"] if k > 1 else pd.Series(dtype=float)
        rows.append({"k": k, "neuron": neuron, "ri_neuron": ri.loc[ri["neuron"] == neuron, "ri"].item(),
                     "paper_ri_neuron_2402": PAPER_RI.get(k), "ri_median_wasserstein": ri.loc[is_top, "ri"].median(),
                     "ri_median_rest": ri.loc[~is_top, "ri"].median(), "r2_wd": fit.get("wd"),
                     "r2_mean": fit.get("mean"), "r2_variance": fit.get("variance"),
                     "seconds": time.perf_counter() - start})
        last = ri
    table = pd.DataFrame(rows)
    run.table("ksweep.csv", table, f"{layer} at {args.sparsity:.0%}: RI per k (neuron, Wasserstein neurons, rest), "
              "R² of RI on WD / mean / variance (Fig. 7)")
    run.figure("ksweep_ri_vs_wd.png", plots.neuron_scatter(last, "wd", "ri", title=f"{layer}, k = {args.experts[-1]}"),
               "per-neuron RI vs WD at the largest k (Fig. 7)")
    return table


def models(run, lm, calib, held, args):
    rows = []
    for k in args.model_experts:
        try:
            part = wnb.expansion_sweep(lm, calib, held, n_experts=(k,), sparsities=(args.model_sparsity,),
                                       dense=not rows, seed=args.seed, batch_size=args.batch_size,
                                       n_init=PAPER_N_INIT, **PAPER_ORDER)
        except WnbError as exc:  # k experts of every layer do not fit: say so in the table
            part = pd.DataFrame([{"method": "expansion", "n_experts": k, "perplexity": float("nan"),
                                  "skipped": str(exc)}])
        rows.append(part)
    table = pd.concat(rows, ignore_index=True)
    run.table("models.csv", table, f"whole-model perplexity, every FFN layer at {args.model_sparsity:.0%}: "
              "dense, SparseGPT (k = 1), Sparse Expansion")
    return table


def claims(run, lm, calib, held, args):
    """Every claim of both papers through the same runner as ``wnb claims``, with the papers' plan."""
    rows = run_claims(lm, calib, held, budget="small" if args.small else "paper", corpus=args.corpus,
                      seed=args.seed)
    run.table("claims.csv", claims_frame(rows), "every claim: statistic, 95% interval, paper's value, verdict, "
              "comparable and the settings that differ")
    run.text("claims.html", claims_page(rows, f"Does it hold on {lm.name}?", f"{args.corpus}, {args.windows} x "
                                        f"{args.seq_len} calibration tokens"), "the claims page")
    return claims_frame(rows)


def markdown(lm, layer, neuron, args, parts) -> str:
    lines = [f"# {lm.name}: the paper's setting", "",
             f"Corpus {args.corpus}, {args.windows} x {args.seq_len} calibration tokens, {args.eval_windows} held-out "
             f"windows; layer `{layer}`; seed {args.seed}. Calibration in the paper's order (block by block, "
             f"each block's layers on the block as it entered: `true_sequential=False`); k-means keeps the best of "
             f"{PAPER_N_INIT} restarts, as the authors' code.", ""]
    if "overview" in parts:
        t = parts["overview"]
        lines += ["## WD overview (streaming, every FFN layer)", "",
                  f"Median over layers of the median WD {t['wd_median'].median():.3f}; the Wasserstein neurons "
                  f"(top {args.fraction:.0%}) average {t['top_over_median'].median():.1f}x their layer's median "
                  f"(range {t['top_over_median'].min():.1f}-{t['top_over_median'].max():.1f}x).", ""]
    if "detail" in parts:
        table, r2 = parts["detail"]
        row = table.iloc[0]
        lines += [f"## {layer}", "", f"Most entangled neuron {int(row['neuron'])} (WD {row['wd']:.3f}); WD-MD R² = "
                  f"{r2:.2f} over {len(table)} neurons (paper Fig. 2e: strongly correlated).", ""]
    if "ablation" in parts:
        lines += [f"## Fig. 3: {args.fraction:.0%} of neurons per FFN layer pruned to {args.sparsity:.0%}", "",
                  "| criterion | perplexity |", "|---|---|"]
        lines += [f"| {r.criterion} | {r.perplexity:.2f} |" for r in parts["ablation"].itertuples()]
        lines += ["", "Paper: choosing the neurons by WD hurts perplexity far more than any other criterion.", ""]
    if "ksweep" in parts:
        lines += [f"## Sparse Expansion of `{layer}` at {args.sparsity:.0%} (RI = err SparseGPT / err expansion)", "",
                  f"| k | RI neuron {neuron} | paper, Pythia-1.4B neuron 2402 | median RI, Wasserstein neurons | "
                  "median RI, rest | R² RI~WD | R² RI~mean | R² RI~variance |", "|---|---|---|---|---|---|---|---|"]
        for r in parts["ksweep"].itertuples():
            lines.append(f"| {r.k} | {r.ri_neuron:.2f} | {_num(r.paper_ri_neuron_2402)} | {r.ri_median_wasserstein:.2f} "
                         f"| {r.ri_median_rest:.2f} | {_num(r.r2_wd)} | {_num(r.r2_mean)} | {_num(r.r2_variance)} |")
        lines.append("")
    if "models" in parts:
        lines += [f"## Whole model, every FFN layer at {args.model_sparsity:.0%}", "", "| model | experts | perplexity |",
                  "|---|---|---|"]
        lines += [f"| {r.method} | {int(r.n_experts)} | {r.perplexity:.2f} |" for r in parts["models"].itertuples()]
        lines.append("")
    if "claims" in parts:
        lines += ["## Claims (wnb claims)", "", "| claim | statistic [95%] | verdict | comparable |",
                  "|---|---|---|---|"]
        lines += [f"| {r.id} | {r.value:+.3g} [{r.low:+.3g}, {r.high:+.3g}] | {r.verdict} | {r.comparable} |"
                  for r in parts["claims"].itertuples()]
        lines.append("")
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.output)
    RunFolder.check(out, args.overwrite)
    run = RunFolder(out, "paper", list(sys.argv[1:] if argv is None else argv))
    run.start(vars(args))
    try:
        lm = wnb.load_model(args.model, device=args.device, dtype=args.dtype, revision=args.revision)
        calib, held = load_windows(lm, args)
        layer = args.layer or wnb.first_ffn_layers(lm)[1]
        run.note(model={"name": lm.name, "device": str(lm.device), "dtype": str(lm.dtype)}, layer=layer)
        results = {}
        neuron = args.neuron
        if "overview" in args.parts:
            results["overview"] = overview(run, lm, calib, args)
        if "detail" in args.parts:
            results["detail"] = detail(run, lm, calib, layer, args)
        if neuron is None:  # --small: follow the layer's most entangled neuron
            outputs = wnb.capture(lm, [layer], calib, inputs=False, progress=False)[layer].outputs
            neuron = int(wnb.top_neurons(wnb.wasserstein_to_gaussian(outputs), k=1))
        if "ablation" in args.parts:
            results["ablation"] = ablation(run, lm, calib, held, args)
        if "ksweep" in args.parts:
            results["ksweep"] = ksweep(run, lm, calib, held, layer, neuron, args)
        if "models" in args.parts:
            results["models"] = models(run, lm, calib, held, args)
        if "claims" in args.parts:
            results["claims"] = claims(run, lm, calib, held, args)
        text = markdown(lm, layer, neuron, args, results)
        run.text("paper_table.md", text, "the tables in the form of the paper's")
        print(text)
        run.finish(f"paper setting on {lm.name}: {', '.join(results)}")
        return 0
    except KeyboardInterrupt:
        run.fail("interrupted")
        return 130
    except BaseException as exc:
        run.fail(f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    sys.exit(main())
