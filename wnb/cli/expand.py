"""``wnb expand``: Sparse Expansion of the chosen layers against SparseGPT (k = 1) and the dense model, one
layer in detail (RI, token shares, WD and MD before vs after), optionally downstream tasks and the
expansion saved."""
from __future__ import annotations

from wnb import plots
from wnb.app.compression import expert_counts
from wnb.cli import setup
from wnb.cli.options import (
    DETAIL_HELP,
    LAYERS_HELP,
    add_quant_flags,
    add_true_sequential_flag,
    sparsity_arg,
    whole,
)
from wnb.cli.run_folder import RunFolder
from wnb.cli.setup import detail_layer, layer_set
from wnb.compression.expansion import check_expansion, expanded
from wnb.compression.expansion_io import save_expanded
from wnb.compression.quantize import check_quant, key_parts
from wnb.compression.sparsity import parse_sparsity
from wnb.core import cache
from wnb.experiments.sweeps import expansion_sweep
from wnb.experiments.tasks import compare_tasks, require_lm_eval


def add_parser(sub, parents) -> None:
    """``wnb expand``'s options."""
    p = sub.add_parser("expand", parents=parents, help="Sparse Expansion: k sparse experts per layer",
                       description="Replace the chosen layers by k SparseGPT experts routed by PCA + k-means "
                       "(PAPER.md §5), block by block; compare perplexity with SparseGPT (k = 1) and the dense "
                       "model; per-neuron RI, token shares and WD/MD before vs after for one detail layer.")
    p.add_argument("--experts", type=whole(1), default=16, help="experts per layer, k (paper: 16)")
    p.add_argument("--sparsity", type=sparsity_arg, default=0.5, help="per-expert sparsity: fraction or N:M")
    p.add_argument("--pca-factor", type=whole(2, why="the router's PCA keeps d_in // factor dimensions, which must be "
                                               "fewer than d_in"),
                   default=32, help="router PCA to d_in / factor dimensions (paper: 32; "
                   "the detail layer's analysis always uses 32, as the app)")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help=LAYERS_HELP)
    p.add_argument("--detail", default=None, metavar="LAYER", help=DETAIL_HELP)
    add_quant_flags(p)
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="also score lm-eval tasks on the dense, "
                   "SparseGPT and expanded models (needs wnb[eval]; wnb_agreement works offline, the standard "
                   "tasks download their data)")
    p.add_argument("--task-limit", type=whole(1), default=None, help="documents per task (default: all)")
    p.add_argument("--save-model", action="store_true", help="also write the expansion (routers and experts, "
                   "safetensors + JSON; wnb.load_expanded reads it) into <output>/expansion: builds it once more")
    add_true_sequential_flag(p)


def validate(args) -> None:
    """``wnb expand``'s own checks, before the model loads."""
    setup.validate(args, measures_perplexity=True)
    parse_sparsity(args.sparsity)
    setup.check_experts(args, args.experts)
    if args.bits is not None or args.group_size is not None:
        check_quant(args.bits, args.group_size)
    if args.tasks:
        require_lm_eval()  # lm-eval missing: say so before the model loads


def run(args, run: RunFolder, session) -> str:

    lm = session.lm
    layers = layer_set(lm, args.layers)
    check_expansion(lm, args.experts, args.sparsity, session.calib, layers, args.pca_factor)
    progress = not args.quiet
    # The key of Session.expansion_perplexity (so the app shows it), without the app's memory cap.
    pca = {} if args.pca_factor == 32 else {"pca_factor": args.pca_factor}  # the app always uses 32
    quant = key_parts(args.bits, args.group_size)
    key = session.expansion_key(layers, args.experts, args.sparsity, args.true_sequential, args.bits,
                                 args.group_size, **pca)
    table = cache.cached("expansion_perplexity", key,
                         lambda: expansion_sweep(lm, session.calib, session.held_out,
                                                 n_experts=expert_counts(args.experts),
                                                 sparsities=(args.sparsity,), layers=layers, seed=args.seed,
                                                 pca_factor=args.pca_factor, batch_size=args.batch_size,
                                                 progress=progress, true_sequential=args.true_sequential,
                                                 **quant),
                         enabled=not args.no_cache)
    if args.save_model:

        with expanded(lm, args.experts, args.sparsity, calib=session.calib, layers=layers, pca_factor=args.pca_factor,
                      seed=args.seed, batch_size=args.batch_size, progress=progress,
                      true_sequential=args.true_sequential, **quant) as expansion:
            run.folder("expansion", "the Sparse Expansion: routers and experts (safetensors) and a JSON manifest; "
                       "wnb.load_expanded(lm, folder) on the dense model",
                       lambda tmp: save_expanded(lm, tmp, expansion))
    run.table("perplexity.csv", table, "held-out perplexity and the first layer's relative output error: dense, "
              f"SparseGPT (k = 1) and Sparse Expansion (k = {args.experts})")
    run.figure("perplexity.png", plots.perplexity_curves(table, title=lm.name), "perplexity per method")
    if args.tasks:

        tasks = compare_tasks(lm, session.calib, args.tasks, layers, args.experts, args.sparsity, args.bits,
                              limit=args.task_limit, seed=args.seed, batch_size=args.batch_size, progress=progress)
        run.table("tasks.csv", tasks, "lm-evaluation-harness scores of the dense, SparseGPT and expanded models: "
                  "task, metric, value, stderr, filter, n (documents scored)")
        run.figure("tasks.png", plots.task_bars(tasks, title=lm.name), "acc per task and model")
    detail = detail_layer(session, args.detail)
    if detail is not None:
        analysis = session.expansion_analysis(detail, args.experts, args.sparsity, progress=progress)
        run.table("detail_ri.csv", analysis["ri"].assign(layer=detail),
                  f"{detail}: per-neuron RMSE of SparseGPT and expansion and RI = err_sparsegpt / err_expansion")
        run.table("detail_regression.csv", analysis["regression"], "R² of RI regressed on WD, mean, variance")
        run.table("detail_shares.csv", analysis["shares"], "token share of each expert")
        run.table("detail_change.csv", analysis["change"],
                  "WD and MD of the Wasserstein neurons before vs after expansion (paper Fig. 5)")
        run.figure("detail_ri_vs_wd.png", plots.neuron_scatter(analysis["ri"], "wd", "ri", title=detail),
                   "per-neuron RI vs WD (paper Fig. 7)")
        run.figure("detail_before_after.png", plots.before_after(analysis["change"], title=detail),
                   "WD and MD before vs after expansion (paper Fig. 5)")
    by = table.set_index("method")["perplexity"]
    return (f"expanded {len(layers)} layer(s) of {lm.name} into {args.experts} experts at {args.sparsity}: held-out "
            f"perplexity {by.get('dense', float('nan')):.2f} dense, {by.get('sparsegpt', float('nan')):.2f} SparseGPT, "
            f"{by.get('expansion', by.get('sparsegpt', float('nan'))):.2f} Sparse Expansion")
