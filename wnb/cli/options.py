"""The command's options shared by every sub-command: argparse types that refuse bad numbers while the
arguments are parsed (exit status 2, before the model loads), the common model / tokens / output groups,
and the option groups several sub-commands take (layers, detail layer, quantization, calibration order).
Every choice list is read from the vocabulary of its concept."""
from __future__ import annotations

import argparse
import math

from wnb.app.budgets import BUDGETS
from wnb.compression.quantize import MAX_BITS, MIN_BITS
from wnb.compression.sparsity import parse_sparsity
from wnb.data.corpora import SPLITS
from wnb.errors import WnbError
from wnb.model.lm import DTYPES

LAYER_SETS = ("ffn", "first-ffn", "all-linear")
LAYERS_HELP = ("layers: ffn (every feed-forward linear layer), first-ffn (gate_proj / dense_h_to_4h / c_fc / fc1 "
               "of every block), all-linear, or module names such as model.layers.1.mlp.gate_proj (default: ffn)")
DETAIL_HELP = "one layer analysed neuron by neuron (default: the first FFN projection of block 1; 'none' to skip)"


def sparsity_arg(text: str):
    """argparse type of --sparsity: a fraction such as 0.5 or 50%, or N:M such as 2:4."""

    try:
        parse_sparsity(text)
    except WnbError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text if ":" in text else float(text.rstrip("%")) / (100 if text.endswith("%") else 1)


def whole(minimum: int, maximum: int | None = None, even: bool = False, why: str = ""):
    """argparse type of a whole-number flag: refused while the arguments are parsed (exit status 2,
    before the model loads) unless at least ``minimum`` (at most ``maximum``; ``even``), saying what is
    allowed and ``why``."""
    allowed = (f"a whole number from {minimum} to {maximum}" if maximum is not None
               else f"a whole number of at least {minimum}") + (", even" if even else "")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum) or (even and value % 2):
            raise argparse.ArgumentTypeError(f"must be {allowed}{': ' + why if why else ''} (got {text!r})")
        return value

    return parse


def real(low: float, high: float, low_open: bool = True, high_open: bool = False, why: str = ""):
    """argparse type of a number flag in an interval (open at ``low`` by default; NaN and infinities
    refused), refused while the arguments are parsed (exit status 2)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
        if not inside:  # also NaN
            raise argparse.ArgumentTypeError(f"must be a number in {interval}{': ' + why if why else ''} "
                                             f"(got {text!r})")
        return value

    return parse


def add_quant_flags(p) -> None:
    """--bits and --group-size: joint quantization of the kept weights."""

    p.add_argument("--bits", type=whole(MIN_BITS, MAX_BITS), default=None,
                   help="also quantize the kept weights to this many bits (2-8): "
                   "inside SparseGPT's sweep, min-max per output channel (or group), as the paper's --quantize")
    p.add_argument("--group-size", type=whole(1), default=None, help="with --bits: one scale per this many columns "
                   "(default: one per output channel)")


def add_true_sequential_flag(p) -> None:
    """--true-sequential / --no-true-sequential: the calibration order inside a block."""
    p.add_argument("--true-sequential", action=argparse.BooleanOptionalAction, default=True,
                   help="calibrate each layer on the block's already pruned (or expanded) layers before it, e.g. "
                   "down_proj on the pruned gate and up projections (default); --no-true-sequential calibrates "
                   "all of a block's layers on the block as it entered, as the reference SparseGPT and Wanda code")


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every sub-command: model, tokens and output options."""
    common = argparse.ArgumentParser(add_help=False)
    model = common.add_argument_group("model")
    model.add_argument("--model", default=None, metavar="NAME",
                       help="Hugging Face id or local folder (default: the bundled SmolLM2-135M-Instruct, offline)")
    model.add_argument("--revision", default=None, help="branch, tag or commit (Pythia checkpoints: step143000)")
    model.add_argument("--trust-remote-code", action="store_true", help="allow models that ship their own code")
    model.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    model.add_argument("--dtype", default=None, choices=tuple(DTYPES),
                       help="weights' dtype (default: bfloat16 on CUDA, float32 on CPU); statistics are float32/float64")
    model.add_argument("--remote", choices=("ndif", "local"), default=None,
                       help="score only: run the model on NDIF (key from NDIF_API_KEY), or 'local' to simulate that "
                            "path in this process")
    model.add_argument("--offload", action="store_true",
                       help="keep the transformer blocks in CPU memory and move each onto the GPU only while it "
                            "runs, so a model larger than the GPU fits (CUDA only; slower: every block crosses "
                            "the bus on each pass). The GPU then needs the weights outside the blocks, the largest "
                            "block and room for activations; CPU memory holds all weights")
    data = common.add_argument_group("tokens")
    data.add_argument("--corpus", default="bundled", help="bundled, wikitext2 (needs network) or a .txt path")
    data.add_argument("--budget", default="medium", choices=tuple(BUDGETS),
                      help="preset for the four options below, as the app's budgets (default: medium = 32 x 256 "
                           "calibration, 16 held-out, 1,024 tokens per layer for scoring)")
    data.add_argument("--seq-len", type=whole(2, why="a window predicts each of its tokens after the first"),
                      default=None, help="tokens per window (paper: 2048)")
    data.add_argument("--windows", type=whole(1), default=None, help="calibration windows (paper: 128)")
    data.add_argument("--eval-windows", type=whole(0), default=None,
                      help="held-out windows for perplexity (disjoint from the calibration ones; with --eval-corpus "
                           "or --eval-split: drawn from that text, default every window of it, as the follow-up)")
    data.add_argument("--eval-corpus", default=None, metavar="CORPUS",
                      help="the held-out text, if not windows of --corpus: bundled, wikitext2 (needs network) or a "
                           ".txt path")
    data.add_argument("--eval-split", default=None, choices=SPLITS,
                      help="WikiText-2 split of the held-out text (default with a wikitext2 --eval-corpus: "
                           "validation, the follow-up's); alone, the held-out text is that split of --corpus")
    data.add_argument("--seed", type=whole(0), default=0,
                      help="seed of the window draw and every random choice (default 0)")
    data.add_argument("--batch-size", type=whole(1), default=8, help="windows per forward pass (default 8)")
    out = common.add_argument_group("output")
    out.add_argument("-o", "--output", default=None, metavar="DIR", help="output folder (default: ./wnb-<command>)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing wnb output folder")
    out.add_argument("--no-cache", action="store_true", help="neither read nor write the on-disk cache")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bars (the summary is still printed)")

    return common
