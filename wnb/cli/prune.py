"""``wnb prune``: prune the chosen layers block by block, held-out perplexity against the dense model, one
layer's per-neuron errors, optionally the pruned model saved."""
from __future__ import annotations

import time

import pandas as pd
import torch

from wnb import plots
from wnb.cli import setup
from wnb.cli.options import (
    DETAIL_HELP,
    LAYERS_HELP,
    add_quant_flags,
    add_true_sequential_flag,
    real,
    sparsity_arg,
)
from wnb.cli.run_folder import RunFolder
from wnb.cli.setup import check_fits, detail_layer, layer_set, ppl_text
from wnb.compression.checkpoint import FORMATS, save_pruned
from wnb.compression.pruned import pruned, streams_inputs
from wnb.compression.quantize import (
    check_quant,
    key_parts,
    model_effective_bits,
    quant_label,
)
from wnb.compression.sparsity import (
    METHODS,
    check_method,
    parse_sparsity,
    sparsity_label,
)
from wnb.core import cache
from wnb.errors import WnbError
from wnb.model.architectures import block_of, layer_weight
from wnb.scoring.selection import CRITERIA
from wnb.tracing.nll import perplexity_interval
from wnb.tracing.sequential import KEEP_BYTES


def add_parser(sub, parents) -> None:
    """``wnb prune``'s options."""
    p = sub.add_parser("prune", parents=parents, help="prune the model once and measure perplexity",
                       description="Prune the chosen layers block by block (SparseGPT, Wanda or magnitude), "
                       "measure held-out perplexity against the dense model, and analyse one layer's per-neuron "
                       "errors. Writes perplexity.csv, layers.csv, detail_errors.csv, a figure, optionally the model.")
    p.add_argument("--method", default="sparsegpt", choices=METHODS, help="pruning method (default: sparsegpt)")
    p.add_argument("--sparsity", type=sparsity_arg, default=0.5, help="fraction of zeros (0.5) or N:M such as 2:4")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help=LAYERS_HELP)
    p.add_argument("--neurons", default=None, choices=CRITERIA, help="prune only a few rows per layer chosen by: wd, random, mean, "
                   "variance or weight_norm (the paper's Fig. 3 ablation); default: every row")
    p.add_argument("--fraction", type=real(0, 1), default=0.03,
                   help="share of rows chosen with --neurons (default 0.03)")
    p.add_argument("--detail", default=None, metavar="LAYER", help=DETAIL_HELP)
    add_quant_flags(p)
    p.add_argument("--save-model", action="store_true", help="also write the pruned model into <output>/model")
    p.add_argument("--save-format", default="hf", choices=FORMATS,
                   help="hf: a plain checkpoint with the zeros kept; compressed-tensors: with the sparsity (and "
                   "quantization) config vLLM-style loaders read (needs wnb[compressed])")
    add_true_sequential_flag(p)


def validate(args) -> None:
    """``wnb prune``'s own checks, before the model loads."""
    setup.validate(args, measures_perplexity=True)
    check_method(args.method)
    parse_sparsity(args.sparsity)
    if args.bits is not None or args.group_size is not None:
        check_quant(args.bits, args.group_size)
    if args.save_format != "hf" and not args.save_model:
        raise WnbError("--save-format says how --save-model writes the model: add --save-model")
    if args.neurons is not None and args.neurons not in CRITERIA:
        raise WnbError(f"--neurons {args.neurons!r} is not a selection; choose one of {', '.join(CRITERIA)}")


def run(args, run: RunFolder, session) -> str:

    lm = session.lm
    check_method(args.method)
    label = sparsity_label(args.sparsity)
    layers = layer_set(lm, args.layers)
    keeps_inputs = not streams_inputs(args.method, args.neurons)
    check_fits(prune_bytes(lm, layers, session.calib.numel(), args.method, keeps_inputs), torch.device("cpu"),
                "the hidden states, calibration inputs and statistics of one block")
    progress = not args.quiet
    quant = key_parts(args.bits, args.group_size)
    key = session.key(methods=[args.method], sparsities=[label], layers=list(layers), held_out=session.held_out,
                      true_sequential=args.true_sequential, **quant)
    start = time.perf_counter()
    dense = perplexity_interval(lm, session.held_out, batch_size=args.batch_size, progress=progress)
    rows = [{"method": "dense", "sparsity": "0%", **dense, "prune_seconds": 0.0,
             "eval_seconds": time.perf_counter() - start}]
    start = time.perf_counter()
    with pruned(lm, args.method, args.sparsity, calib=session.calib, layers=layers, neurons=args.neurons,
                fraction=args.fraction, seed=args.seed, batch_size=args.batch_size, progress=progress,
                true_sequential=args.true_sequential, bits=args.bits, group_size=args.group_size) as report:
        middle = time.perf_counter()
        ppl = perplexity_interval(lm, session.held_out, batch_size=args.batch_size, progress=progress)
        if args.save_model:

            run.folder("model", f"the pruned model ({args.save_format} checkpoint, safetensors; "
                       "AutoModelForCausalLM.from_pretrained loads the folder)",
                       lambda tmp: save_pruned(lm, tmp, format=args.save_format, report=report))
    if args.bits is not None:  # values, mask and scales per weight of the pruned layers
        quant["effective_bits"] = model_effective_bits(lm, args.bits, args.sparsity, args.group_size, layers)
    rows.append({"method": args.method, "sparsity": label, **quant, **ppl, "prune_seconds": middle - start,
                 "eval_seconds": time.perf_counter() - middle})
    table = pd.DataFrame(rows)
    run.table("perplexity.csv", table, "held-out perplexity of the dense and the pruned model, with a 95% "
              "bootstrap interval over the held-out windows (ppl_low, ppl_high)")
    run.table("layers.csv", report.table(), "what pruning did to each layer: zeros, rows pruned, damping, seconds")
    if args.neurons is None:  # the numbers the app's sweep of this one method and sparsity shows
        cache.cached("sweep", key, lambda: table, enabled=not args.no_cache)
    detail = detail_layer(session, args.detail)
    if detail is not None:
        view = session.prune_view(detail, args.method, args.sparsity, progress=progress)
        run.table("detail_errors.csv", view.errors.assign(layer=detail),
                  f"{detail} pruned alone: per-neuron held-out output error with WD, mean, variance and rank")
        run.figure("detail_error_vs_wd.png", plots.neuron_scatter(view.errors, "wd", "rel_rmse", title=detail),
                   "per-neuron relative output error after pruning vs WD")
    what = label if args.bits is None else f"{label} + {quant_label(args.bits, args.group_size)}"
    return (f"pruned {len(layers)} layer(s) of {lm.name} with {args.method} at {what}: held-out perplexity "
            f"{ppl_text(dense)} dense → {ppl_text(ppl)} pruned")


def prune_bytes(lm, layers, tokens: int, method: str, keeps_inputs: bool = True) -> int:
    """What sequential pruning holds at once: the hidden states of every calibration token entering and
    leaving a block and the residual after its attention, the inputs of a block's last layer kept for its
    outputs (at most ``sequential.KEEP_BYTES``), and the largest block's float64 statistics (SparseGPT's
    Hessians, Wanda's column norms) plus, where they are kept (neuron criteria), its float32 calibration
    inputs."""

    per_block: dict[int, int] = {}
    widest = 0
    for name in layers:
        d_in = layer_weight(lm, name).shape[1]
        widest = max(widest, d_in)
        need = (d_in * d_in * 8 if method == "sparsegpt" else d_in * 8) + (tokens * d_in * 4 if keeps_inputs else 0)
        per_block[block_of(lm, name)] = per_block.get(block_of(lm, name), 0) + need
    itemsize = lm.model.dtype.itemsize
    hidden = 3 * tokens * lm.model.config.hidden_size * itemsize
    return hidden + min(tokens * widest * itemsize, KEEP_BYTES) + max(per_block.values())
