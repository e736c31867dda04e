"""``wnb negative``: the follow-up's sign ablation of the Wasserstein neurons against random, matched and
twin controls — perplexity and minimal pairs with paired statistics, the set's stability, Δ surprisal by
token class, the depth profile by perplexity and grammar."""
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
from wnb.experiments.interventions import intervention_study
from wnb.experiments.minimal_pairs import SOURCES
from wnb.experiments.pair_scoring import SCORES
from wnb.experiments.pair_sets import (
    FIRST_TOKEN,
    SET_SCORES,
    pair_sets,
    set_label,
    set_of,
)
from wnb.experiments.sign_ablation import study_controls
from wnb.experiments.sign_statistics import study_words
from wnb.scoring.selection import CONTROLS, DEFAULT_CONTROLS, MATCHED_EXCLUDE, POOLS
from wnb.scoring.stability import stability_summary, stability_words

PAIRS_PER_PHENOMENON = 100  # the generated sets' default; BLiMP: all of its pairs


def add_parser(sub, parents) -> None:
    """``wnb negative``'s options."""
    p = sub.add_parser("negative", parents=parents, help="sign ablation of the Wasserstein neurons (the follow-up)",
                       description="The follow-up's experiment (Kong et al., 'Negative Pre-activations Differentiate "
                       "Syntax', ICLR 2026): zero only the negative outputs of the top --fraction of each layer's "
                       "neurons by WD and compare held-out perplexity and minimal-pair accuracy with random neurons "
                       "of the same count, a perplexity-matched set of non-Wasserstein neurons and twin controls; Δ "
                       "surprisal by token class; the ablation one layer at a time and cumulatively. Without "
                       "--seq-len the windows are the longest the model allows within the budget's tokens (up to "
                       "the paper's 2048). Training checkpoints: --revision. Writes study.csv, stability.csv, "
                       "neurons.csv, interventions.csv (--interventions), surprisal_*.csv, top_tokens.csv, depth.csv and PNG figures.")
    p.set_defaults(longest_context=True)
    p.add_argument("--layers", nargs="+", default=["first-ffn"], metavar="LAYER",
                   help=LAYERS_HELP.replace("(default: ffn)", "(default: first-ffn, as the follow-up)"))
    below = f"the share of each layer's neurons ablated, below the {MATCHED_EXCLUDE:.0%} the matched control leaves out"
    p.add_argument("--fraction", type=real(0, MATCHED_EXCLUDE, high_open=True, why=f"{below}; the follow-up uses 0.01"),
                   default=0.01, help="share of each layer's neurons ablated, by WD "
                   "(follow-up: 0.01; below 0.1, the share the matched control leaves out)")
    p.add_argument("--side", default="negative", choices=SIDES,
                   help="negative: y -> max(y, 0) (the follow-up's), positive: y -> min(y, 0), both: y -> 0")
    p.add_argument("--skip-first", type=whole(0), default=0,
                   help="positions of every calibration window left out when ranking by WD (1: the first token, "
                        "an attention sink in many models; default 0, as the follow-up)")
    _control_options(p)
    _pair_options(p)
    p.add_argument("--max-tokens", type=whole(1), default=None,
                   help="calibration tokens the WD is computed over (default: all of them, as the follow-up)")
    p.add_argument("--depth", action=argparse.BooleanOptionalAction, default=True,
                   help="also the depth profile: each layer alone and layers 0..l (2 perplexity passes per layer; "
                        "--no-depth skips it)")
    p.add_argument("--interventions", action="store_true",
                   help="also the authors' post-activation patches (posrelu, signflip) beside the negative clamp "
                        "and its positive-side mirror, on the Wasserstein neurons and on random neurons of the same "
                        "count (one set per control seed), paired against dense (interventions.csv, interventions.png)")
    p.add_argument("--depth-pairs", action=argparse.BooleanOptionalAction, default=True,
                   help="score the minimal pairs at every step of the depth profile, per phenomenon (default; "
                        "--no-depth-pairs: perplexity only)")


def _control_options(p) -> None:
    p.add_argument("--controls", nargs="*", default=list(DEFAULT_CONTROLS), choices=CONTROLS,
                   help="random (same count per layer, one set per seed), matched (non-Wasserstein neurons, count "
                        "bisected to the Wasserstein ablation's perplexity), mirror (the Wasserstein neurons with the other "
                        "side clamped: sign specificity; not with --side both), variance / tokens / positions (a twin "
                        "per Wasserstein neuron with the closest output variance, or its tail on the same tokens or "
                        "positions); default: random matched mirror; none: give the flag alone")
    p.add_argument("--pool", default="outside", choices=tuple(POOLS),
                   help="where the matched control draws: " + "; ".join(f"{k}: {v}" for k, v in POOLS.items()).replace("%", "%%"))
    p.add_argument("--control-seeds", type=whole(1), default=3,
                   help="random control sets, seeds --seed .. --seed + N - 1; the matched control uses --seed "
                        "(default 3)")
    p.add_argument("--tolerance", type=real(0, 1, high_open=True), default=0.02,
                   help="the matched control's perplexity within this share of the target (default 0.02)")


def _pair_options(p) -> None:
    p.add_argument("--minimal-pairs", nargs="+", default=["agreement"], metavar="SET",
                   help="one or more sets: " + "; ".join(f"{k}: {v}" for k, v in
                                                          {s: set_label(s) for s in SOURCES}.items())
                        + "; a JSONL file of {good, bad, phenomenon}; or none (default: agreement)")
    p.add_argument("--pairs-per-phenomenon", type=whole(1), default=None,
                   help=f"minimal pairs per phenomenon (TSE: per construction; BLiMP: per paradigm), drawn with --seed "
                        f"(default {PAIRS_PER_PHENOMENON}; BLiMP: all of its pairs)")
    p.add_argument("--pair-score", default=None, choices=SCORES,
                   help="sum (total log-probability) or mean (per scored token) for every set (default: each set's "
                        "own, as the follow-up: " + ", ".join(f"{k} {v}" for k, v in SET_SCORES.items())
                        + ", the others sum)")
    p.add_argument("--first-token", default="wnb", choices=tuple(FIRST_TOKEN),
                   help="; ".join(f"{k}: {v}" for k, v in FIRST_TOKEN.items()) + " (default wnb)")


def validate(args) -> None:
    """``wnb negative``'s own checks, before the model loads."""
    setup.validate(args, measures_perplexity=True)
    check_side(args.side)  # --fraction, --control-seeds, --pairs-per-phenomenon, --tolerance: their argparse types
    minimal_pairs_of(args)  # an unknown set, BLiMP offline, an empty or malformed file: said before the model loads


def minimal_pairs_of(args):
    """The minimal pairs of ``--minimal-pairs`` (None for ``none``); raises WnbError for an unknown set,
    BLiMP offline or an empty / malformed file."""
    names = list(args.minimal_pairs)
    if names == ["none"]:
        return None
    if "none" in names:
        raise WnbError("--minimal-pairs none stands alone; give sets or none")
    n = args.pairs_per_phenomenon
    counts = {str(name): n if n is not None else (None if name == "blimp" else PAIRS_PER_PHENOMENON) for name in names}
    return pair_sets(names, n=counts, seed=args.seed)


def run(args, run: RunFolder, session) -> str:

    lm = session.lm
    layers = layer_set(lm, args.layers)
    pairs = minimal_pairs_of(args)
    if pairs is not None and lm.tokenizer is None:
        raise WnbError(f"{lm.name} has no tokenizer, which minimal pairs need; pass --minimal-pairs none")
    calib, held_out = session.sign_windows()
    controls = list(study_controls(args.controls, args.side))
    run.note(negative={"layers": len(layers), "wd_tokens": min(args.max_tokens or calib.numel(), calib.numel()),
                       "skip_first": args.skip_first, "pool": args.pool, "controls": controls,
                       "pair_sets": {set_of(n): set_label(set_of(n)) for n in args.minimal_pairs if n != "none"},
                       "pairs": 0 if pairs is None else len(pairs), "first_token": FIRST_TOKEN[args.first_token],
                       "held_out_windows": len(held_out), "seq_len": calib.shape[1],
                       "control_seeds": [args.seed + i for i in range(args.control_seeds)]})
    options = dict(tokens=args.max_tokens, skip_first=args.skip_first)
    study = session.sign_ablation(layers, args.fraction, args.side, tuple(args.controls), args.control_seeds, pairs,
                                  tolerance=args.tolerance, progress=not args.quiet, pool=args.pool,
                                  pair_score=args.pair_score, first_token=args.first_token, **options)
    stability = session.sign_stability(layers, args.fraction, progress=False, **options)
    run.note(differences_from_the_paper=session.sign_setting(study, args.max_tokens))
    _write_study(args, run, session, study, stability, pairs, layers)
    what = f"{lm.name}: {args.side} side, top {args.fraction:.1%} of {len(layers)} layer(s)"
    _write_surprisal(args, run, session, study, layers, what)
    parts = [study_words(study), stability_words(stability_summary(stability), args.fraction)]
    if pairs is not None:
        parts.append(f"pairs scored by {study['pair_score'].iloc[0]}, {study['scoring_rule'].iloc[0]}")
    if args.interventions:
        parts.append(_write_interventions(args, run, session, layers, held_out, pairs))
    if args.depth:
        depth = session.sign_depth(layers, args.fraction, args.side, pairs if args.depth_pairs else None,
                                   progress=not args.quiet, pair_score=args.pair_score, first_token=args.first_token,
                                   **options)
        run.table("depth.csv", depth, "the Wasserstein ablation one layer at a time and over layers 0..l: perplexity "
                  "and its paired change" + (", minimal-pair accuracy per phenomenon, its paired change and McNemar p "
                                             "against dense" if "accuracy" in depth else ""))
        run.figure("depth.png", plots.depth_profile(depth, title=what), "Δ perplexity (and Δ accuracy) per layer")
        single = depth[depth["mode"] == "layer"]["delta_perplexity"].sum()
        parts.append(f"depth: single layers add up to Δ {single:.2f}, all at once Δ "
                     f"{depth['delta_perplexity'].iloc[-1]:.2f}")
    return "; ".join(parts)


def _write_study(args, run: RunFolder, session, study, stability, pairs, layers) -> None:
    run.table("study.csv", study, "one row per ablation: dense, wasserstein (top fraction by WD), random (one per "
              "seed), matched (perplexity-matched non-Wasserstein neurons from the pool), mirror (the Wasserstein neurons, "
              "the other side clamped; its w_delta_*: this side - the other), twins: neurons, their WD "
              "ranks (wd_rank_min/median/max), perplexity with its 95% interval, paired differences over the same "
              "held-out windows (delta_*: this row - dense; w_delta_*: the Wasserstein row - this control) with 95% "
              "bootstrap intervals and verdicts, each control's spread over its seeds (*_seeds_mean/sd/min/max), the "
              "set's split-half stability (top_overlap*)"
              + (", minimal-pair accuracy per phenomenon with Wilson intervals (acc_low/acc_high), McNemar p "
                 "(mcnemar_p vs dense, w_mcnemar_p Wasserstein vs this control), how the pairs were scored "
                 "(pair_score, scoring_rule)" if pairs is not None else ""))
    run.table("stability.csv", stability, "per layer: neurons in the top fraction by WD picked on each of two disjoint "
              "halves of the calibration windows (k), in both (shared), shared / k (overlap)")
    run.table("neurons.csv", session.sign_neurons(study, layers, args.side, args.max_tokens, args.skip_first),
              "every ablated neuron of every row with its WD and its rank by WD in its layer (1 = highest)")
    if pairs is not None:
        scored = pd.DataFrame(pairs).assign(pair_score=study["pair_score"].iloc[0],
                                            scoring_rule=study["scoring_rule"].iloc[0])
        run.table("minimal_pairs.csv", scored, "the minimal pairs scored (good, bad, phenomenon, set) and how "
                  "(pair_score, scoring_rule)")
    what = f"{session.lm.name}: {args.side} side, top {args.fraction:.1%} of {len(layers)} layer(s)"
    run.figure("perplexity.png", plots.sign_ablation_bars(study, title=what), "held-out perplexity per ablation")
    if pairs is not None:
        run.figure("minimal_pairs.png", plots.minimal_pair_bars(study, title=what),
                   "minimal-pair accuracy per phenomenon and selection")


def _write_interventions(args, run: RunFolder, session, layers, held_out, pairs) -> str:
    scores = session.sign_scores(layers, args.max_tokens, progress=False, skip_first=args.skip_first)
    score = args.pair_score or "sum"
    table = intervention_study(session.lm, held_out, scores, args.fraction,
                               seeds=[args.seed + i for i in range(args.control_seeds)], pairs=pairs, score=score,
                               progress=not args.quiet)
    run.table("interventions.csv", table, "per intervention (negative: the follow-up's clamp; positive: its mirror; "
              "posrelu, signflip: the authors' patches) the Wasserstein neurons and random ones of the same count "
              "per seed, perplexity with its interval and paired differences to dense (delta_*) and of the "
              "Wasserstein row to each random row (w_delta_*) with verdicts"
              + (f"; minimal pairs scored by {score} for every set" if pairs is not None else ""))
    title = f"{session.lm.name}: interventions on the top {args.fraction:.1%} of {len(layers)} layer(s)"
    run.figure("interventions.png", plots.intervention_bars(table, title=title),
               "Δ perplexity per intervention, Wasserstein vs random")
    w = table[table["selection"] == "wasserstein"].set_index("intervention")
    return "interventions (Δ perplexity of the Wasserstein row): " + ", ".join(
        f"{name} {row.delta_perplexity:+.2f}" for name, row in w.iterrows())


def _write_surprisal(args, run: RunFolder, session, study, layers, what: str) -> None:
    matched = study[study["selection"] == "matched"]
    surprisal = session.sign_surprisal(layers, args.fraction, args.side, tokens=args.max_tokens,
                                       matched=int(matched["per_layer"].iloc[0]) if len(matched) else None,
                                       matched_seed=int(matched["seed"].iloc[0]) if len(matched) else None,
                                       progress=not args.quiet, pool=args.pool, skip_first=args.skip_first)
    run.table("surprisal_by_class.csv", surprisal["by_class"], "mean Δ NLL per token class (closed word list), "
              "Wasserstein ablation and matched control")
    run.table("surprisal_by_group.csv", surprisal["by_group"], "mean Δ NLL per group: function, content, "
              "punctuation, number, other")
    run.table("top_tokens.csv", surprisal["top"], "tokens whose NLL rises most under the Wasserstein ablation")
    run.figure("surprisal.png", plots.surprisal_bars(surprisal["by_class"], title=what), "Δ NLL by token class")
