"""What every sub-command does before its own work: the checks that need no model, loading the model once
its estimated size is known to fit, cutting the windows, and naming the layers a run works on."""
from __future__ import annotations

import os

import torch

from wnb.app.budgets import check_budget, study_sizes
from wnb.app.session import Session
from wnb.cli.options import LAYER_SETS
from wnb.cli.run_folder import RunFolder
from wnb.core import cache
from wnb.core.memory import available_memory
from wnb.data import corpora
from wnb.data.corpora import load_corpus
from wnb.data.windows import calibration_and_held_out, context_length
from wnb.errors import WnbError
from wnb.model.architectures import (
    check_layers,
    ffn_layers,
    first_ffn_layers,
    linear_layers,
)
from wnb.model.lm import resolve_device, resolve_dtype
from wnb.model.loading import (
    check_revision,
    estimate_block_bytes,
    estimate_model_bytes,
    load_model,
)
from wnb.model.offload import check_offload

OFFLOAD_ACTIVATIONS = 2 << 30  # GPU bytes kept free for activations and logits when blocks are offloaded


def validate(args, measures_perplexity: bool = True) -> None:
    """What every sub-command checks without the model, before the output folder is touched; each
    sub-command's own ``validate`` checks the rest."""
    if args.remote and args.command != "score":
        raise WnbError(f"wnb {args.command} changes the model's weights, which needs them on this machine; "
                       "--remote works with wnb score only")
    if not args.remote:
        resolve_dtype(args.dtype, resolve_device(args.device))  # CUDA asked for where there is none
    if args.offload:
        check_offload(args.device, remote_of(args))
    check_revision(args.model, args.revision)
    # Each number's own range is checked by its argparse type (options.whole, options.real); here what
    # depends on others.
    if measures_perplexity and args.eval_windows is not None and args.eval_windows < 1:
        raise WnbError(f"wnb {args.command} measures perplexity on held-out windows: --eval-windows must be at least 1")
    check_budget(args.budget)
    held_out_source(args)  # a split the corpus lacks, or the calibration text itself
    if not args.no_cache:
        where = cache.cache_dir()
        if not os.access(where, os.W_OK | os.X_OK):
            raise WnbError(f"the wnb cache {where} is not writable; set WNB_CACHE to a folder you can write, "
                           "or pass --no-cache")


def window_sizes(args, context: int | None = None) -> tuple[int, int, int | None]:
    """``(seq_len, calibration windows, held-out windows)``: the flags, else the budget's — for a command that
    asks for the longest context (``args.longest_context``, the sign study) and a model's ``context``, the
    longest windows within the budget's tokens (:func:`wnb.app.budgets.study_sizes`). With a held-out text
    of its own (:func:`held_out_source`) the held-out windows default to all of it (None)."""
    budget = check_budget(args.budget)
    seq_len, n_calib, n_eval = args.seq_len or budget.seq_len, budget.n_calib, budget.n_eval
    if args.seq_len is None and getattr(args, "longest_context", False) and context is not None:
        seq_len, n_calib, n_eval = study_sizes(budget, context)
    if held_out_source(args) is not None:
        n_eval = None
    return (seq_len, n_calib if args.windows is None else args.windows,
            n_eval if args.eval_windows is None else args.eval_windows)


def held_out_source(args) -> tuple[str, str] | None:
    """``(corpus, split)`` of a held-out text of its own (``--eval-corpus`` / ``--eval-split``; a wikitext2
    one defaults to its validation split), or None: held-out windows drawn from ``--corpus``, disjoint
    from the calibration ones (:func:`wnb.data.corpora.held_out_source`)."""
    return corpora.held_out_source(args.corpus, getattr(args, "eval_corpus", None), getattr(args, "eval_split", None))


def check_experts(args, most: int | None) -> None:
    """Refuse more experts than calibration tokens, before the model loads."""
    seq_len, n_calib, _ = window_sizes(args)
    if most is not None and most > n_calib * seq_len:
        raise WnbError(f"--experts {most} is more than the {n_calib * seq_len:,} calibration tokens ({n_calib} windows "
                       f"of {seq_len}); use fewer experts or more --windows")


def open_session(args, run: RunFolder):
    """Load the model (once its estimated size is known to fit) and cut the windows; returns a
    :class:`wnb.app.session.Session` holding both, whose cached analyses the app reads too."""

    if args.quiet:  # transformers' own loading bars too
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    remote = remote_of(args)
    if remote:
        device, dtype = torch.device("cpu"), None
    else:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    text = load_corpus(args.corpus)
    source = held_out_source(args)
    eval_text = load_corpus(*source) if source is not None else None

    estimate = {}
    if not remote:
        weights = estimate_model_bytes(args.model, dtype, args.revision, args.trust_remote_code)
        estimate["model_weights"] = weights
        if args.offload:
            blocks = estimate_block_bytes(args.model, dtype, args.revision, args.trust_remote_code)
            on_gpu = weights - sum(blocks) + max(blocks) + OFFLOAD_ACTIVATIONS
            estimate["gpu_with_offload"] = on_gpu
            check_fits(weights, torch.device("cpu"), "the model's weights (held in CPU memory with --offload)")
            check_fits(on_gpu, device, "the weights outside the transformer blocks, the largest block and room "
                        "for activations (--offload)")
        else:
            check_fits(weights, device, "the model's weights",
                        hint=", or --offload (blocks in CPU memory, one at a time on the GPU)" if device.type == "cuda"
                        else "")
    lm = load_model(args.model, device=args.device if not remote else "auto", dtype=args.dtype if not remote else None,
                    revision=args.revision, trust_remote_code=args.trust_remote_code, remote=remote,
                    offload=args.offload)
    seq_len, n_calib, n_eval = window_sizes(args, None if remote else context_length(lm))
    calib, held_out = cut_windows(args, lm, text, eval_text, (seq_len, n_calib, n_eval))
    session = Session(args.model, args.corpus, args.budget, args.seed, lm=lm, calib=calib, held_out=held_out,
                      use_cache=not args.no_cache, n_pairs=getattr(args, "pairs", 50_000))
    if source is not None:
        session.held_out_text = "{} ({})".format(*source)
    run.note(model={"name": lm.name, "revision": args.revision, "remote": remote or False, "offload": args.offload,
                    "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch.") if not remote else "remote"},
             windows={"corpus": args.corpus, "seq_len": seq_len, "calibration": n_calib, "held_out": len(held_out),
                      "held_out_text": "windows of the corpus" if source is None else "{} ({})".format(*source),
                      "seed": args.seed}, memory_estimate_bytes=estimate)
    layer_set(lm, getattr(args, "layers", None))  # names that need the model, checked before any long work
    if hasattr(args, "detail"):
        detail_layer(session, args.detail)
    return session


def cut_windows(args, lm, text: str, eval_text: str | None, sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration and held-out windows (cached): disjoint draws from ``text``, or the held-out ones from
    ``eval_text`` (every window of it when their count is None)."""
    seq_len, n_calib, n_eval = sizes
    key = cache.key(model=lm.name, text=cache.text_digest(text), seq_len=seq_len, n_calib=n_calib, n_eval=n_eval,
                    seed=args.seed, **({"eval_text": cache.text_digest(eval_text)} if eval_text is not None else {}))
    return cache.cached("windows", key, lambda: calibration_and_held_out(lm, text, seq_len, n_calib, n_eval, args.seed,
                                                                         eval_text), enabled=not args.no_cache)


def remote_of(args) -> bool | str:
    """``--remote`` as load_model's ``remote=`` (True: NDIF, "local": nnsight's simulation, False)."""
    return {"ndif": True, "local": "local"}.get(args.remote, False)


def check_fits(need: int, device: torch.device, what: str, hint: str = "") -> None:
    """Refuse work whose memory estimate exceeds 90% of what the device has free now; ``hint`` is added
    to the list of ways out."""

    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    if need > 0.9 * free:
        where = f"{device} has {free / 2**30:.1f} GiB free" if device.type == "cuda" else \
            f"this machine has {free / 2**30:.1f} GiB of RAM available"
        raise WnbError(f"{what} need about {need / 2**30:.1f} GiB but {where}; use a smaller dtype "
                       f"(--dtype bfloat16), fewer tokens or layers, or a larger device{hint}")


def layer_set(lm, spec: list[str] | None) -> list[str]:

    spec = spec or ["ffn"]
    if len(spec) == 1 and spec[0] in LAYER_SETS:
        return {"ffn": ffn_layers, "first-ffn": first_ffn_layers, "all-linear": linear_layers}[spec[0]](lm)
    return check_layers(lm, spec)


def detail_layer(session, name: str | None) -> str | None:

    if name == "none":
        return None
    return session.default_layer() if name is None else check_layers(session.lm, [name])[0]


def ppl_text(row: dict) -> str:
    """A perplexity with its 95% bootstrap interval, for the one-line summaries."""
    return f"{row['perplexity']:.2f} [{row['ppl_low']:.2f}, {row['ppl_high']:.2f}]"
