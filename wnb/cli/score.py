"""``wnb score``: entanglement (WD, mean, variance, first-token tails) of every neuron of every layer from one
reading pass (:func:`wnb.reading.reader.cached_reading`), the per-layer table and overview figure, one layer
in detail (MD, histograms), and optionally every layer's contexts for the app, from the same pass."""
from __future__ import annotations

import pandas as pd
import torch

from wnb import plots
from wnb.app.layers import CONTEXT_SAMPLES, READ_BATCH, READ_BINS
from wnb.app.views import LayerView
from wnb.cli import setup
from wnb.cli.options import DETAIL_HELP, LAYERS_HELP, real, whole
from wnb.cli.run_folder import RunFolder
from wnb.cli.setup import detail_layer, layer_set
from wnb.core.memory import available_memory
from wnb.data.positions import sink_flags
from wnb.errors import WnbError
from wnb.model.architectures import block_of, layer_weight
from wnb.reading.reader import cached_reading, plan_read
from wnb.scoring.read_plan import WD_METHODS
from wnb.scoring.tables import neuron_table, overview_table
from wnb.tracing.capture import capture


def add_parser(sub, parents) -> None:
    """``wnb score``'s options."""
    p = sub.add_parser("score", parents=parents, help="entanglement (WD) of every neuron of every layer",
                       description="Score every neuron by the Wasserstein distance of its standardized outputs to "
                       "N(0, 1) (PAPER.md §2), with mean and variance; rank the Wasserstein neurons; MD and figures "
                       "for one detail layer. Writes neurons.csv, layers.csv, detail_*.csv and PNG figures.")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help=LAYERS_HELP)
    p.add_argument("--max-tokens", type=whole(1), default=None,
                   help="tokens per layer (default: the budget's overview tokens; with --contexts every calibration "
                        "token, as the app reads them)")
    p.add_argument("--wd", choices=WD_METHODS, default="auto",
                   help="exact WD from the outputs kept during the pass, or streaming (a sketch per neuron: memory "
                        "per neuron, not per token; within 1e-3); auto: exact when every layer's outputs fit in "
                        "memory at once (default). Either way one forward pass reads every layer")
    p.add_argument("--bins", type=whole(16, even=True), default=READ_BINS,
                   help=f"bins per neuron of the streaming sketch (default {READ_BINS}, as the app reads)")
    p.add_argument("--fraction", type=real(0, 1), default=0.03,
                   help="share of a layer called Wasserstein neurons (paper: 0.03)")
    p.add_argument("--detail", default=None, metavar="LAYER", help=DETAIL_HELP)
    p.add_argument("--pairs", type=whole(1), default=50_000, help="token pairs for mapping difficulty (paper: 50,000)")

    p.add_argument("--contexts", type=whole(1), default=None, metavar="K",
                   help="also keep every scored layer's K highest and lowest outputs with their contexts and band "
                        "samples, from the same pass, in the cache the app's 'What it reads' uses (it reads K = 20 "
                        f"over every calibration token with --batch-size {READ_BATCH} and --bins {READ_BINS})")


def validate(args) -> None:
    """``wnb score``'s own checks, before the model loads."""
    setup.validate(args, measures_perplexity=False)
    if args.contexts is not None and (args.no_cache or args.remote):
        raise WnbError("--contexts stores the contexts in the cache the app reads: it needs the cache and "
                       "local weights (drop --no-cache / --remote)")


def run(args, run: RunFolder, session) -> str:
    """Score every neuron of the layers, write the tables and figures; the summary names the most entangled
    neuron that is not a first-token artefact."""
    lm = session.lm
    layers = layer_set(lm, args.layers)
    default = session.calib.numel() if args.contexts else session.budget.overview_tokens
    tokens = min(args.max_tokens or default, session.calib.numel())
    stats, method = _scored(args, run, session, layers, tokens)
    scores = {name: s["wd"] for name, s in stats.items()}
    neurons = _neurons_frame(lm, stats)
    run.table("neurons.csv", neurons, "one row per neuron: layer, block, kind, neuron, wd, mean, variance, "
              "weight_norm, rank within the layer (1 = most entangled), pos0_tail_share and sink (its tails sit at "
              "the first token of the windows)")
    shares = {n: s["pos0_tail_share"] for n, s in stats.items()}
    overview = overview_table(lm, scores, args.fraction, pos0_shares=shares)
    overview["top_neurons"] = overview["top_neurons"].map(lambda v: " ".join(map(str, v)))
    run.table("layers.csv", overview, f"one row per layer: WD quantiles, mean WD of the top {args.fraction:.0%} "
              "(the Wasserstein neurons) and its ratio to the median, top neuron indices")
    run.figure("wd_overview.png", plots.wd_overview(scores), "WD of every neuron per block and layer kind")
    if args.contexts:
        run.note(contexts={"k": args.contexts, "layers": len(layers), "tokens": tokens})
    _write_detail(args, run, session)
    return (f"scored {len(layers)} layer(s) of {lm.name} on {tokens:,} tokens ({method} WD): median WD "
            f"{neurons['wd'].median():.3f}, Wasserstein neurons {overview['top_over_median'].median():.1f}x the "
            f"median; {most_entangled(neurons)}")


def most_entangled(neurons: pd.DataFrame) -> str:
    """The summary's words for the most entangled neuron that is not a first-token artefact (its tails at the
    first position of the windows, ``sink``), and how many neurons above it were set aside as such."""
    ranked = neurons.sort_values("wd", ascending=False, na_position="last", kind="stable")
    sinks = ranked["sink"].fillna(False).astype(bool) if "sink" in ranked else pd.Series(False, index=ranked.index)
    real = ranked[~sinks]
    if real.empty or not pd.notna(real["wd"].iloc[0]):
        return "every neuron's tails sit at the first token (no neuron left to name)"
    best = real.iloc[0]
    above = int(sinks.loc[:best.name].sum()) if sinks.any() else 0
    aside = (f"; {above} neuron(s) with a higher WD set aside as first-token artefacts (their tails sit at the "
             "first position)") if above else ""
    return f"most entangled {best['layer']} neuron {int(best['neuron'])} (WD {best['wd']:.3f}){aside}"


def _scored(args, run: RunFolder, session, layers, tokens: int) -> tuple[dict, str]:
    """The statistics of one reading pass over every layer (cached, with the contexts when asked for) and the
    WD method it used; the plan's memory is stated (and refused beyond 60% of the memory available) first."""
    lm = session.lm
    settings = dict(contexts=args.contexts or 0, n_samples=CONTEXT_SAMPLES, skip_first=session.skip_first,
                    max_tokens=tokens, wd=args.wd, n_bins=args.bins, max_bytes=int(0.6 * available_memory()),
                    batch_size=args.batch_size)
    plan = plan_read(lm, session.calib, layers, **settings)
    if not args.quiet:
        print(f"wnb score: reading {plan.describe()}")
    run.note(memory_estimate_bytes={**run.manifest["memory_estimate_bytes"], "scores": plan.total_bytes},
             scoring={"layers": len(layers), "tokens_per_layer": tokens, "wd": plan.wd,
                      "bins": args.bins if plan.wd == "streaming" else None, "plan": plan.describe()})
    reading = cached_reading(lm, session.calib, layers, seed=args.seed, progress=not args.quiet,
                             enabled=not args.no_cache, **settings)
    stats = reading.neuron_stats()
    if layers == session.ffn_layers():
        session.store_overview(stats, tokens)  # what the app's model overview reads
    return stats, reading.meta["wd"]


def _neurons_frame(lm, stats: dict) -> pd.DataFrame:
    """One row per neuron of every scored layer."""
    rows = []
    for name, s in stats.items():
        frame = pd.DataFrame({"layer": name, "block": block_of(lm, name), "kind": name.rsplit(".", 1)[-1],
                              "neuron": range(s["wd"].numel()), "wd": s["wd"].numpy(), "mean": s["mean"].numpy(),
                              "variance": s["variance"].numpy()})
        if not lm.remote:
            frame["weight_norm"] = torch.linalg.vector_norm(layer_weight(lm, name).detach().double(), dim=1).cpu().numpy()
        frame["rank"] = frame["wd"].rank(ascending=False, method="first", na_option="bottom").astype(int)
        if "pos0_tail_share" in s:  # exact scoring keeps positions: flag the first-token (attention sink) tails
            frame["pos0_tail_share"] = s["pos0_tail_share"].numpy()
            frame["sink"] = sink_flags(s["pos0_tail_share"]).numpy()
        rows.append(frame)
    return pd.concat(rows, ignore_index=True)


def _write_detail(args, run: RunFolder, session) -> None:
    """One layer neuron by neuron: exact WD and MD of every neuron, two histograms, WD vs MD."""
    detail = detail_layer(session, args.detail)
    if detail is None:
        return
    view = layer_view(session, detail, args)
    run.table("detail_neurons.csv", view.table.assign(layer=detail),
              f"{detail}: every neuron with exact WD and mapping difficulty (MD) over all calibration tokens")
    top, ordinary = view.neuron_at(1), view.ordinary_neuron()
    run.figure("detail_histograms.png", plots.histogram_grid(
        {f"neuron {top} (rank 1)": view.outputs[:, top], f"neuron {ordinary} (median rank)": view.outputs[:, ordinary]},
        ncols=2, title=detail), "output histograms of the most entangled and a median neuron, with N(0, 1)")
    run.figure("detail_wd_vs_md.png", plots.neuron_scatter(view.table, "wd", "md",
                                                            highlight=view.wasserstein_neurons(), title=detail),
               "WD vs mapping difficulty per neuron (paper Fig. 2e)")


def layer_view(session, name: str, args):
    """The session's cached capture and neuron table of one layer; for a remote model (no weights here)
    the same without the weight norms."""

    if not session.lm.remote:
        return session.layer(name, progress=not args.quiet)
    acts = capture(session.lm, [name], session.calib, batch_size=args.batch_size, progress=not args.quiet)[name]
    table = neuron_table(acts.outputs, acts.inputs, None, n_pairs=args.pairs, seed=args.seed)
    return LayerView(name, acts.inputs, acts.outputs, table, args.pairs, args.seed)
