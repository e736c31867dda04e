"""``wnb negative``: the follow-up's sign ablation of the Wasserstein neurons against random and matched
controls — perplexity and minimal pairs with paired statistics, Δ surprisal by token class, the depth
profile."""
from __future__ import annotations

import argparse

import pandas as pd

from wnb import plots
from wnb.cli import setup
from wnb.cli.options import LAYERS_HELP, real, whole
from wnb.cli.run_folder import RunFolder
from wnb.cli.setup import layer_set
from wnb.compression.clamp import SIDES, check_side
from wnb.errors import WnbError
from wnb.experiments.minimal_pairs import minimal_pairs
from wnb.experiments.sign_statistics import study_words
from wnb.scoring.selection import CONTROLS, MATCHED_EXCLUDE


def add_parser(sub, parents) -> None:
    """``wnb negative``'s options."""
    p = sub.add_parser("negative", parents=parents, help="sign ablation of the Wasserstein neurons (the follow-up)",
                       description="The follow-up's experiment (Kong et al., 'Negative Pre-activations Differentiate "
                       "Syntax', ICLR 2026): zero only the negative outputs of the top --fraction of each layer's "
                       "neurons by WD and compare held-out perplexity and minimal-pair accuracy with random neurons "
                       "of the same count and a perplexity-matched set of non-Wasserstein neurons; Δ surprisal by "
                       "token class; the ablation one layer at a time and cumulatively. Training checkpoints: "
                       "--revision. Writes study.csv, surprisal_*.csv, top_tokens.csv, depth.csv and PNG figures.")
    p.add_argument("--layers", nargs="+", default=["first-ffn"], metavar="LAYER",
                   help=LAYERS_HELP.replace("(default: ffn)", "(default: first-ffn, as the follow-up)"))
    below = f"the share of each layer's neurons ablated, below the {MATCHED_EXCLUDE:.0%} the matched control leaves out"
    p.add_argument("--fraction", type=real(0, MATCHED_EXCLUDE, high_open=True,
                                            why=f"{below}; the follow-up uses 0.01"),
                   default=0.01, help="share of each layer's neurons ablated, by WD "
                   "(follow-up: 0.01; below 0.1, the share the matched control leaves out)")
    p.add_argument("--side", default="negative", choices=SIDES,
                   help="negative: y -> max(y, 0) (the follow-up's), positive: y -> min(y, 0), both: y -> 0")
    p.add_argument("--controls", nargs="*", default=list(CONTROLS), choices=CONTROLS,
                   help="random (same count per layer, one set per seed) and matched (non-Wasserstein neurons, "
                        "count bisected to the Wasserstein ablation's perplexity); none: give the flag alone")
    p.add_argument("--control-seeds", type=whole(1), default=3,
                   help="random control sets, seeds --seed .. --seed + N - 1; the matched control uses --seed "
                        "(default 3)")
    p.add_argument("--tolerance", type=real(0, 1, high_open=True), default=0.02,
                   help="the matched control's perplexity within this share of the target (default 0.02)")
    p.add_argument("--minimal-pairs", default="agreement", metavar="SOURCE",
                   help="agreement (wnb's agreement constructions, offline), tse (Marvin & Linzen's constructions, "
                        "offline), knowledge (facts and sums, offline), blimp (needs a network), a JSONL file of "
                        "{good, bad, phenomenon}, or none (default: agreement)")
    p.add_argument("--pairs-per-phenomenon", type=whole(1), default=100,
                   help="minimal pairs per phenomenon (TSE: per construction; BLiMP: per paradigm), drawn with "
                        "--seed (default 100)")
    p.add_argument("--max-tokens", type=whole(1), default=None,
                   help="calibration tokens the WD is computed over (default: all of them, as the follow-up)")
    p.add_argument("--depth", action=argparse.BooleanOptionalAction, default=True,
                   help="also the depth profile: each layer alone and layers 0..l (2 perplexity passes per layer; "
                        "--no-depth skips it)")
    p.add_argument("--depth-pairs", action="store_true",
                   help="score the minimal pairs at every step of the depth profile too (slow)")


def validate(args) -> None:
    """``wnb negative``'s own checks, before the model loads."""
    setup.validate(args, measures_perplexity=True)
    check_side(args.side)  # --fraction, --control-seeds, --pairs-per-phenomenon, --tolerance: their argparse types
    minimal_pairs_of(args)  # BLiMP offline, an empty or malformed file: said before the model loads


def run(args, run: RunFolder, session) -> str:

    lm = session.lm
    layers = layer_set(lm, args.layers)
    progress = not args.quiet
    pairs = minimal_pairs_of(args)
    if pairs is not None and lm.tokenizer is None:
        raise WnbError(f"{lm.name} has no tokenizer, which minimal pairs need; pass --minimal-pairs none")
    tokens = args.max_tokens
    controls = tuple(args.controls)
    run.note(negative={"layers": len(layers), "wd_tokens": min(tokens or session.calib.numel(), session.calib.numel()),
                       "pairs": 0 if pairs is None else len(pairs),
                       "control_seeds": [args.seed + i for i in range(args.control_seeds)]})
    study = session.sign_ablation(layers, args.fraction, args.side, controls, args.control_seeds, pairs, tokens,
                                  args.tolerance, progress=progress)
    run.table("study.csv", study, "one row per ablation: dense, wasserstein (top fraction by WD), random (one per "
              "seed), matched (perplexity-matched non-Wasserstein neurons): neurons, perplexity with its 95% interval, "
              "paired differences over the same held-out windows (delta_*: this row - dense; w_delta_*: the "
              "Wasserstein row - this control) with 95% bootstrap intervals and verdicts, each control's spread over "
              "its seeds (*_seeds_mean/sd/min/max)"
              + (", minimal-pair accuracy per phenomenon with Wilson intervals (acc_low/acc_high) and McNemar p "
                 "(mcnemar_p vs dense, w_mcnemar_p Wasserstein vs this control)" if pairs is not None else ""))
    if pairs is not None:
        run.table("minimal_pairs.csv", pd.DataFrame(pairs), "the minimal pairs scored (good, bad, phenomenon)")
    what = f"{lm.name}: {args.side} side, top {args.fraction:.1%} of {len(layers)} layer(s)"
    run.figure("perplexity.png", plots.sign_ablation_bars(study, title=what), "held-out perplexity per ablation")
    if pairs is not None:
        run.figure("minimal_pairs.png", plots.minimal_pair_bars(study, title=what),
                   "minimal-pair accuracy per phenomenon and selection")
    matched = study[study["selection"] == "matched"]
    surprisal = session.sign_surprisal(layers, args.fraction, args.side, tokens=tokens,
                                       matched=int(matched["per_layer"].iloc[0]) if len(matched) else None,
                                       matched_seed=int(matched["seed"].iloc[0]) if len(matched) else None,
                                       progress=progress)
    run.table("surprisal_by_class.csv", surprisal["by_class"], "mean Δ NLL per token class (closed word list), "
              "Wasserstein ablation and matched control")
    run.table("surprisal_by_group.csv", surprisal["by_group"], "mean Δ NLL per group: function, content, "
              "punctuation, number, other")
    run.table("top_tokens.csv", surprisal["top"], "tokens whose NLL rises most under the Wasserstein ablation")
    run.figure("surprisal.png", plots.surprisal_bars(surprisal["by_class"], title=what), "Δ NLL by token class")
    depth = None
    if args.depth:
        depth = session.sign_depth(layers, args.fraction, args.side, pairs if args.depth_pairs else None, tokens,
                                   progress=progress)
        run.table("depth.csv", depth, "the Wasserstein ablation one layer at a time and over layers 0..l: "
                  "perplexity and its change" + (", minimal-pair accuracy" if args.depth_pairs and pairs else ""))
        run.figure("depth.png", plots.depth_profile(depth, title=what), "Δ perplexity per layer and cumulative")
    parts = [study_words(study)]
    if depth is not None:
        single = depth[depth["mode"] == "layer"]["delta_perplexity"].sum()
        parts.append(f"depth: single layers add up to Δ {single:.2f}, all at once Δ "
                     f"{depth['delta_perplexity'].iloc[-1]:.2f}")
    return "; ".join(parts)


def minimal_pairs_of(args):
    """The minimal pairs of ``--minimal-pairs`` (None for ``none``); raises WnbError for BLiMP offline or
    an empty / malformed file."""

    if args.minimal_pairs == "none":
        return None
    return minimal_pairs(args.minimal_pairs, n=args.pairs_per_phenomenon, seed=args.seed)
