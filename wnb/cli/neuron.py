"""``wnb neuron``: one self-contained HTML page per neuron (what it reads) and its tables as CSV."""
from __future__ import annotations

from wnb.app.report import neuron_page
from wnb.cli import setup
from wnb.cli.options import whole
from wnb.cli.run_folder import RunFolder
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, layer_weight


def add_parser(sub, parents) -> None:
    """``wnb neuron``'s options."""
    p = sub.add_parser("neuron", parents=parents, help="one self-contained HTML page per neuron: what it reads",
                       description="Read neurons of one layer: both tails' contexts, band samples, token table, "
                       "differentiating pairs, what it writes, outputs by position, figures; one HTML page per "
                       "neuron (no external resources) and its tables as CSV.")
    p.add_argument("--layer", required=True, help="the layer, e.g. model.layers.1.mlp.gate_proj")
    p.add_argument("--neuron", type=whole(0), nargs="+", required=True, metavar="N", help="neuron indices")
    p.add_argument("--skip-first", type=whole(0), default=0,
                   help="positions of every window left out of the statistics (1 drops the attention sink)")
    p.add_argument("--pairs", type=whole(1), default=50_000, help="token pairs for mapping difficulty (paper: 50,000)")


def validate(args) -> None:
    """``wnb neuron``'s own checks, before the model loads."""
    setup.validate(args, measures_perplexity=True)
    seq_len, _, _ = setup.window_sizes(args)
    if args.skip_first >= seq_len:
        raise WnbError(f"--skip-first must be less than the window length {seq_len} (got {args.skip_first})")


def run(args, run: RunFolder, session) -> str:

    (layer,) = check_layers(session.lm, [args.layer])
    n = layer_weight(session.lm, layer).shape[0]
    bad = [i for i in args.neuron if not 0 <= i < n]
    if bad:
        raise WnbError(f"--neuron {bad[0]} is not a neuron of {layer}: it has neurons 0 to {n - 1}")
    if not 0 <= args.skip_first < session.calib.shape[1]:
        raise WnbError(f"--skip-first must be between 0 and {session.calib.shape[1] - 1} (got {args.skip_first})")
    session.skip_first = args.skip_first
    for neuron in args.neuron:
        page, tables = neuron_page(session, layer, neuron, progress=not args.quiet)
        run.text(f"neuron_{neuron}.html", page, f"{layer} neuron {neuron}: what it reads (self-contained HTML)")
        for kind, table in tables.items():
            run.table(f"neuron_{neuron}_{kind}.csv", table, f"{layer} neuron {neuron}: {kind.replace('_', ' ')}")
    return f"{len(args.neuron)} page(s) of {layer} (neuron {', '.join(map(str, args.neuron))})"
