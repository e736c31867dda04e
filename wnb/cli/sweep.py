"""``wnb sweep``: perplexity against sparsity of every method at every sparsity (paper Fig. 9), optionally
Sparse Expansion with several k."""
from __future__ import annotations

import pandas as pd

from wnb import plots
from wnb.cli import setup
from wnb.cli.options import LAYERS_HELP, add_true_sequential_flag, sparsity_arg, whole
from wnb.cli.run_folder import RunFolder
from wnb.cli.setup import layer_set
from wnb.compression.sparsity import (
    METHODS,
    check_method,
    parse_sparsity,
    sparsity_label,
)
from wnb.core import cache
from wnb.experiments.sweeps import expansion_sweep


def add_parser(sub, parents) -> None:
    """``wnb sweep``'s options."""
    p = sub.add_parser("sweep", parents=parents, help="perplexity vs sparsity for several methods",
                       description="Prune with every method at every sparsity (paper Fig. 9), optionally Sparse "
                       "Expansion with several k; writes sweep.csv and perplexity.png.")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="pruning methods")
    p.add_argument("--sparsities", nargs="+", type=sparsity_arg, default=[0.5, 0.7, "2:4"], help="fractions or N:M")
    p.add_argument("--experts", nargs="*", type=whole(1), default=[], metavar="K",
                   help="also Sparse Expansion with these numbers of experts (e.g. 2 4 8 16)")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help=LAYERS_HELP)
    add_true_sequential_flag(p)


def validate(args) -> None:
    """``wnb sweep``'s own checks, before the model loads."""
    setup.validate(args, measures_perplexity=True)
    for method in args.methods:
        check_method(method)
    for sparsity in args.sparsities:
        parse_sparsity(sparsity)
    setup.check_experts(args, max(args.experts, default=None))


def run(args, run: RunFolder, session) -> str:

    lm = session.lm
    layers = layer_set(lm, args.layers)
    for method in args.methods:
        check_method(method)
    labels = [sparsity_label(s) for s in args.sparsities]
    progress = not args.quiet
    table = session.sweep(args.methods, args.sparsities, layers, progress=progress,
                          true_sequential=args.true_sequential)
    if args.experts:
        key = session.key(layers=list(layers), n_experts=list(args.experts), sparsities=labels, held_out=session.held_out,
                          true_sequential=args.true_sequential)
        more = cache.cached("expansion_sweep", key,
                            lambda: expansion_sweep(lm, session.calib, session.held_out, n_experts=tuple(args.experts),
                                                    sparsities=tuple(args.sparsities), layers=layers, dense=False,
                                                    seed=args.seed, progress=progress,
                                                    true_sequential=args.true_sequential), enabled=not args.no_cache)
        more = more.assign(method=more["method"].where(more["method"] != "expansion",
                                                       "expansion k=" + more["n_experts"].astype(str)))
        table = pd.concat([table, more[more["n_experts"] != 1]], ignore_index=True)
    run.table("sweep.csv", table, "held-out perplexity per method and sparsity (and per number of experts)")
    run.figure("perplexity.png", plots.perplexity_curves(table, title=lm.name), "perplexity vs sparsity (paper Fig. 9)")
    best = table[table["method"] != "dense"].sort_values("perplexity").iloc[0]
    return (f"swept {len(table) - 1} pruned models of {lm.name} over {len(layers)} layer(s): best "
            f"{best['method']} at {best['sparsity']} with perplexity {best['perplexity']:.2f}")
