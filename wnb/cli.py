"""The ``wnb`` command: batch runs of the paper's analyses, results in a folder and in the cache.

    wnb score  --model EleutherAI/pythia-1.4b-deduped --corpus wikitext2 --seq-len 2048 --windows 128 -o runs/pythia
    wnb prune  --method sparsegpt --sparsity 0.5 -o runs/prune
    wnb expand --experts 16 --sparsity 0.5 -o runs/expand
    wnb sweep  --methods magnitude wanda sparsegpt --sparsities 0.5 0.7 2:4 -o runs/sweep

Every sub-command takes the same model / corpus / windows / device options as the Python API, checks
its input and the memory it will need before any long work, shows progress in the terminal, writes
tidy CSV and JSON tables and PNG figures into the output folder, and ends with a one-line summary.
``manifest.json`` is written first with ``"status": "incomplete"`` and replaced by a complete one only
when everything else is written, so an interrupted run is never mistaken for a finished one. Results
also land in the on-disk cache the notebooks and the app use, and are copied into ``<output>/cache``:
copying that folder's contents into another machine's cache (``~/.cache/wnb`` or ``$WNB_CACHE``) lets
the app there open them with the same model, corpus, budget and seed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from wnb.core import cache, files
from wnb.core.folders import check_replaceable, remove_written, written_list
from wnb.core.version import VERSION as __version__
from wnb.errors import WnbError
from wnb.scoring.layers import FIELDS, STREAMING_FIELDS, choose_method, exact_bytes, score_layers

COMMANDS = ("score", "prune", "expand", "sweep", "neuron", "negative")
LAYER_SETS = ("ffn", "first-ffn", "all-linear")
MANIFEST = "manifest.json"
OFFLOAD_ACTIVATIONS = 2 << 30  # GPU bytes kept free for activations and logits when blocks are offloaded


# ---------------------------------------------------------------- the output folder

class RunFolder:
    """An output folder whose ``manifest.json`` says what is in it and whether the run finished."""

    def __init__(self, path: Path, command: str, argv: list[str]):
        self.path = path
        self.manifest = {"wnb": __version__, "command": command, "status": "incomplete", "argv": argv,
                         "started": _now(), "finished": None, "files": {}, "cache": [], "error": None,
                         "written": []}

    @staticmethod
    def check(path: Path, overwrite: bool) -> None:
        """Refuse an output that is a link, a file, not writable, or an existing folder (unless ``overwrite``);
        with ``overwrite``, refuse a folder holding anything its wnb manifest does not list as written by wnb
        (:func:`wnb.core.folders.check_replaceable`)."""
        if path.is_dir() and not path.is_symlink():
            files.remove_stale_temporaries(path)
        check_replaceable(path, overwrite, (MANIFEST,), hint="choose another --output")

    def start(self, arguments: dict) -> None:
        """Remove the previous run's files (only those its manifest lists; :meth:`check` refused anything
        else) and write the new manifest."""
        try:
            if self.path.is_dir():
                remove_written(self.path, (MANIFEST,))
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest["arguments"] = arguments
            self._save()
        except OSError as exc:
            raise WnbError(f"cannot write the output folder {self.path}: {exc.strerror}") from exc

    def note(self, **items) -> None:
        self.manifest.update(items)
        self._save()

    def table(self, name: str, frame: pd.DataFrame, what: str) -> None:
        """``frame`` as CSV, text cells that a spreadsheet would run as a formula defused (:func:`safe_csv`)."""
        from wnb.core.spreadsheet import safe_csv

        self._write(name, what, lambda tmp: tmp.write_bytes(safe_csv(frame).encode("utf-8")))

    def json(self, name: str, data, what: str) -> None:
        self._write(name, what, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=_jsonable)))

    def text(self, name: str, content: str, what: str) -> None:
        self._write(name, what, lambda tmp: tmp.write_text(content))

    def figure(self, name: str, fig, what: str) -> None:
        from wnb.plots import to_png

        self._write(name, what, lambda tmp: tmp.write_bytes(to_png(fig)))

    def copy_cache(self, paths: list[Path]) -> None:
        """Copy the cache entries this run read or wrote into ``<output>/cache/<kind>/``."""
        for src in paths:
            if src.exists():
                dst = self.path / "cache" / src.parent.name / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                self.manifest["cache"].append(f"{src.parent.name}/{src.name}")
                self.manifest["written"].append(f"cache/{src.parent.name}/{src.name}")
        self._save()

    def finish(self, summary: str, **items) -> None:
        self.manifest.update(items, status="complete", finished=_now(), summary=summary)
        self._save()

    def fail(self, error: str) -> None:
        if self.path.is_dir():
            self.manifest.update(error=error, stopped=_now())
            self._save()

    def folder(self, name: str, what: str, write) -> None:
        """Write the folder ``name`` atomically with ``write(tmp)`` and list every file in it in the manifest,
        one by one: a folder entry would claim whatever a user later puts inside it."""
        with files.atomic_path(self.path / name) as tmp:
            write(tmp)
        for file in written_list(self.path / name):
            self.manifest["files"][f"{name}/{file}"] = what
            self.manifest["written"].append(f"{name}/{file}")
        self._save()

    def _write(self, name: str, what: str, write) -> None:
        with files.atomic_path(self.path / name) as tmp:
            write(tmp)
        self.manifest["files"][name] = what
        self.manifest["written"].append(name)
        self._save()

    def _save(self) -> None:
        with files.atomic_path(self.path / MANIFEST) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=2, default=_jsonable))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _jsonable(value):
    if isinstance(value, (torch.Tensor,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ---------------------------------------------------------------- shared set-up

def _setup(args, run: RunFolder):
    """Load the model (once its estimated size is known to fit) and cut the windows; returns a
    :class:`wnb.app.session.Session` holding both, whose cached analyses the app reads too."""
    from wnb.app.budgets import check_budget
    from wnb.app.session import Session
    from wnb.data.corpora import load_corpus
    from wnb.data.windows import token_windows
    from wnb.model.lm import resolve_device, resolve_dtype
    from wnb.model.loading import estimate_block_bytes, estimate_model_bytes, load_model

    if args.quiet:  # transformers' own loading bars too
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    budget = check_budget(args.budget)
    remote = _remote(args)
    if remote:
        device, dtype = torch.device("cpu"), None
    else:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    seq_len = args.seq_len or budget.seq_len
    n_calib = budget.n_calib if args.windows is None else args.windows
    n_eval = budget.n_eval if args.eval_windows is None else args.eval_windows
    text = load_corpus(args.corpus)

    estimate = {}
    if not remote:
        weights = estimate_model_bytes(args.model, dtype, args.revision, args.trust_remote_code)
        estimate["model_weights"] = weights
        if args.offload:
            blocks = estimate_block_bytes(args.model, dtype, args.revision, args.trust_remote_code)
            on_gpu = weights - sum(blocks) + max(blocks) + OFFLOAD_ACTIVATIONS
            estimate["gpu_with_offload"] = on_gpu
            _check_fits(weights, torch.device("cpu"), "the model's weights (held in CPU memory with --offload)")
            _check_fits(on_gpu, device, "the weights outside the transformer blocks, the largest block and room "
                        "for activations (--offload)")
        else:
            _check_fits(weights, device, "the model's weights",
                        hint=", or --offload (blocks in CPU memory, one at a time on the GPU)" if device.type == "cuda"
                        else "")
    lm = load_model(args.model, device=args.device if not remote else "auto", dtype=args.dtype if not remote else None,
                    revision=args.revision, trust_remote_code=args.trust_remote_code, remote=remote,
                    offload=args.offload)
    key = cache.key(model=lm.name, text=cache.text_digest(text), seq_len=seq_len, n_calib=n_calib, n_eval=n_eval, seed=args.seed)
    calib, held_out = cache.cached("windows", key,
                                   lambda: token_windows(lm, text, seq_len, n_calib, n_eval, args.seed),
                                   enabled=not args.no_cache)
    session = Session(args.model, args.corpus, args.budget, args.seed, lm=lm, calib=calib, held_out=held_out,
                      use_cache=not args.no_cache, n_pairs=getattr(args, "pairs", 50_000))
    run.note(model={"name": lm.name, "revision": args.revision, "remote": remote or False, "offload": args.offload,
                    "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch.") if not remote else "remote"},
             windows={"corpus": args.corpus, "seq_len": seq_len, "calibration": n_calib, "held_out": n_eval,
                      "seed": args.seed}, memory_estimate_bytes=estimate)
    _layers(lm, getattr(args, "layers", None))  # names that need the model, checked before any long work
    if hasattr(args, "detail"):
        _detail_layer(session, args.detail)
    return session


def _remote(args) -> bool | str:
    """``--remote`` as load_model's ``remote=`` (True: NDIF, "local": nnsight's simulation, False)."""
    return {"ndif": True, "local": "local"}.get(args.remote, False)


def _validate(args) -> None:
    """Everything that can be checked without the model, before the output folder is touched."""
    from wnb.app.budgets import check_budget
    from wnb.compression.sparsity import check_method, parse_sparsity
    from wnb.model.lm import resolve_device, resolve_dtype
    from wnb.model.loading import check_revision

    if args.remote and args.command != "score":
        raise WnbError(f"wnb {args.command} changes the model's weights, which needs them on this machine; "
                       "--remote works with wnb score only")
    if not args.remote:
        resolve_dtype(args.dtype, resolve_device(args.device))  # CUDA asked for where there is none
    if args.offload:
        from wnb.model.offload import check_offload
        check_offload(args.device, _remote(args))
    check_revision(args.model, args.revision)
    # Each number's own range is checked by its argparse type (_whole, _real); here what depends on others.
    if args.command != "score" and args.eval_windows is not None and args.eval_windows < 1:
        raise WnbError(f"wnb {args.command} measures perplexity on held-out windows: --eval-windows must be at least 1")
    budget = check_budget(args.budget)
    seq_len = args.seq_len or budget.seq_len
    n_calib = budget.n_calib if args.windows is None else args.windows
    experts = getattr(args, "experts", None)
    most = max(experts, default=None) if isinstance(experts, list) else experts  # sweep: a list of k
    if most is not None and most > n_calib * seq_len:
        raise WnbError(f"--experts {most} is more than the {n_calib * seq_len:,} calibration tokens ({n_calib} windows "
                       f"of {seq_len}); use fewer experts or more --windows")
    if args.command == "neuron" and args.skip_first >= seq_len:
        raise WnbError(f"--skip-first must be less than the window length {seq_len} (got {args.skip_first})")
    if getattr(args, "bits", None) is not None or getattr(args, "group_size", None) is not None:
        from wnb.compression.quantize import check_quant
        check_quant(args.bits, args.group_size)
    if getattr(args, "tasks", None):
        from wnb.experiments.tasks import require_lm_eval
        require_lm_eval()  # lm-eval missing: say so before the model loads
    if getattr(args, "save_format", "hf") != "hf" and not getattr(args, "save_model", False):
        raise WnbError("--save-format says how --save-model writes the model: add --save-model")
    if getattr(args, "contexts", None) is not None:
        if args.no_cache or args.remote:
            raise WnbError("--contexts stores the contexts in the cache the app reads: it needs the cache and "
                           "local weights (drop --no-cache / --remote)")
    if args.command == "negative":
        _validate_negative(args)
    neurons = getattr(args, "neurons", None)
    if neurons is not None:
        from wnb.scoring.selection import CRITERIA
        if neurons not in CRITERIA:
            raise WnbError(f"--neurons {neurons!r} is not a selection; choose one of {', '.join(CRITERIA)}")
    if not args.no_cache:
        where = cache.cache_dir()
        if not os.access(where, os.W_OK | os.X_OK):
            raise WnbError(f"the wnb cache {where} is not writable; set WNB_CACHE to a folder you can write, "
                           "or pass --no-cache")
    for method in [getattr(args, "method", None)] + list(getattr(args, "methods", [])):
        if method is not None:
            check_method(method)
    for sparsity in [getattr(args, "sparsity", None)] + list(getattr(args, "sparsities", [])):
        if sparsity is not None:
            parse_sparsity(sparsity)


def _check_fits(need: int, device: torch.device, what: str, hint: str = "") -> None:
    """Refuse work whose memory estimate exceeds 90% of what the device has free now; ``hint`` is added
    to the list of ways out."""
    from wnb.core.memory import available_memory

    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    if need > 0.9 * free:
        where = f"{device} has {free / 2**30:.1f} GiB free" if device.type == "cuda" else \
            f"this machine has {free / 2**30:.1f} GiB of RAM available"
        raise WnbError(f"{what} need about {need / 2**30:.1f} GiB but {where}; use a smaller dtype "
                       f"(--dtype bfloat16), fewer tokens or layers, or a larger device{hint}")


def _layers(lm, spec: list[str] | None) -> list[str]:
    from wnb.model.architectures import (
        check_layers,
        ffn_layers,
        first_ffn_layers,
        linear_layers,
    )

    spec = spec or ["ffn"]
    if len(spec) == 1 and spec[0] in LAYER_SETS:
        return {"ffn": ffn_layers, "first-ffn": first_ffn_layers, "all-linear": linear_layers}[spec[0]](lm)
    return check_layers(lm, spec)


def _detail_layer(session, name: str | None) -> str | None:
    from wnb.model.architectures import check_layers

    if name == "none":
        return None
    return session.default_layer() if name is None else check_layers(session.lm, [name])[0]


# ---------------------------------------------------------------- score

def _neuron(args, run: RunFolder, session) -> str:
    from wnb.app.report import neuron_page
    from wnb.model.architectures import check_layers, layer_weight

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


def _store_contexts(args, session, layers) -> None:
    """``wnb score --contexts K``: every scored layer's contexts, where the app's Session.contexts reads them."""
    from wnb.app.layers import CONTEXT_WIDTH, contexts_key
    from wnb.reading.accumulator import neuron_contexts

    for name in layers:
        cache.cached("contexts", contexts_key(session, name, args.contexts),
                     lambda: neuron_contexts(session.lm, name, session.calib, k=args.contexts, width=CONTEXT_WIDTH,
                                             progress=not args.quiet, batch_size=args.batch_size,
                                             seed=args.seed).to_state(),
                     enabled=not args.no_cache)


def _score(args, run: RunFolder, session) -> str:
    from wnb import plots
    from wnb.core.memory import available_memory
    from wnb.model.architectures import block_of, layer_weight
    from wnb.scoring.streaming import estimate_stream_bytes
    from wnb.scoring.tables import overview_table

    lm = session.lm
    layers = _layers(lm, args.layers)
    tokens = min(args.max_tokens or session.budget.overview_tokens, session.calib.numel())
    limit = int(0.6 * available_memory())
    # auto: exact whenever one layer's scoring fits (layers are captured in as many passes as memory needs)
    method = choose_method(lm, layers, tokens, args.wd, max_bytes=limit)
    need = exact_bytes(lm, layers, tokens) if method == "exact" else estimate_stream_bytes(lm, layers, args.bins)
    if need > limit:
        raise WnbError(f"{method} WD of {len(layers)} layer(s) over {tokens:,} tokens needs about {need / 2**30:.2f} GiB "
                       f"but the limit is {limit / 2**30:.2f} GiB; use --wd streaming or fewer --max-tokens")
    run.note(memory_estimate_bytes={**run.manifest["memory_estimate_bytes"], "scores": need},
             scoring={"layers": len(layers), "tokens_per_layer": tokens, "wd": method,
                      "bins": args.bins if method == "streaming" else None})

    stats = cache.cached("neuron_stats", session.key(layers=layers, tokens=tokens, wd=method, bins=args.bins,
                                                     positions=True),
                         lambda: score_layers(lm, session.calib, layers, FIELDS if method == "exact" else STREAMING_FIELDS,
                                              wd=method, max_tokens=tokens, batch_size=args.batch_size,
                                              n_bins=args.bins, progress=not args.quiet),
                         enabled=not args.no_cache)
    scores = {name: s["wd"] for name, s in stats.items()}
    if method == "exact" and layers == session.ffn_layers():
        session.store_overview(stats, tokens)  # what the app's model overview reads

    rows = []
    for name, s in stats.items():
        frame = pd.DataFrame({"layer": name, "block": block_of(lm, name), "kind": name.rsplit(".", 1)[-1],
                              "neuron": range(s["wd"].numel()), "wd": s["wd"].numpy(), "mean": s["mean"].numpy(),
                              "variance": s["variance"].numpy()})
        if not lm.remote:
            frame["weight_norm"] = torch.linalg.vector_norm(layer_weight(lm, name).detach().double(), dim=1).cpu().numpy()
        frame["rank"] = frame["wd"].rank(ascending=False, method="first", na_option="bottom").astype(int)
        if "pos0_tail_share" in s:  # exact scoring keeps positions: flag the first-token (attention sink) tails
            from wnb.data.positions import sink_flags
            frame["pos0_tail_share"] = s["pos0_tail_share"].numpy()
            frame["sink"] = sink_flags(s["pos0_tail_share"]).numpy()
        rows.append(frame)
    neurons = pd.concat(rows, ignore_index=True)
    run.table("neurons.csv", neurons, "one row per neuron: layer, block, kind, neuron, wd, mean, variance, "
              "weight_norm, rank within the layer (1 = most entangled)")
    shares = {n: s["pos0_tail_share"] for n, s in stats.items() if "pos0_tail_share" in s}
    overview = overview_table(lm, scores, args.fraction, pos0_shares=shares if len(shares) == len(stats) else None)
    overview["top_neurons"] = overview["top_neurons"].map(lambda v: " ".join(map(str, v)))
    run.table("layers.csv", overview, f"one row per layer: WD quantiles, mean WD of the top {args.fraction:.0%} "
              "(the Wasserstein neurons) and its ratio to the median, top neuron indices")
    run.figure("wd_overview.png", plots.wd_overview(scores), "WD of every neuron per block and layer kind")
    if args.contexts:
        _store_contexts(args, session, layers)
        run.note(contexts={"k": args.contexts, "layers": len(layers)})

    detail = _detail_layer(session, args.detail)
    if detail is not None:
        view = _layer_view(session, detail, args)
        run.table("detail_neurons.csv", view.table.assign(layer=detail),
                  f"{detail}: every neuron with exact WD and mapping difficulty (MD) over all calibration tokens")
        top, ordinary = view.neuron_at(1), view.ordinary_neuron()
        run.figure("detail_histograms.png", plots.histogram_grid(
            {f"neuron {top} (rank 1)": view.outputs[:, top], f"neuron {ordinary} (median rank)": view.outputs[:, ordinary]},
            ncols=2, title=detail), "output histograms of the most entangled and a median neuron, with N(0, 1)")
        run.figure("detail_wd_vs_md.png", plots.neuron_scatter(view.table, "wd", "md",
                                                                highlight=view.wasserstein_neurons(), title=detail),
                   "WD vs mapping difficulty per neuron (paper Fig. 2e)")
    best = neurons.loc[neurons["wd"].idxmax()]
    top_ratio = overview["top_over_median"].median()
    return (f"scored {len(layers)} layer(s) of {lm.name} on {tokens:,} tokens ({method} WD): median WD "
            f"{neurons['wd'].median():.3f}, Wasserstein neurons {top_ratio:.1f}x the median; most entangled "
            f"{best['layer']} neuron {int(best['neuron'])} (WD {best['wd']:.3f})")


def _layer_view(session, name: str, args):
    """The session's cached capture and neuron table of one layer; for a remote model (no weights here)
    the same without the weight norms."""
    from wnb.app.views import LayerView
    from wnb.scoring.tables import neuron_table
    from wnb.tracing.capture import capture

    if not session.lm.remote:
        return session.layer(name, progress=not args.quiet)
    acts = capture(session.lm, [name], session.calib, batch_size=args.batch_size, progress=not args.quiet)[name]
    table = neuron_table(acts.outputs, acts.inputs, None, n_pairs=args.pairs, seed=args.seed)
    return LayerView(name, acts.inputs, acts.outputs, table, args.pairs, args.seed)


# ---------------------------------------------------------------- prune

def _prune(args, run: RunFolder, session) -> str:
    from wnb import plots
    from wnb.compression.pruned import pruned, streams_inputs
    from wnb.compression.quantize import key_parts, model_effective_bits, quant_label
    from wnb.compression.sparsity import check_method, sparsity_label
    from wnb.tracing.nll import perplexity_interval

    lm = session.lm
    check_method(args.method)
    label = sparsity_label(args.sparsity)
    layers = _layers(lm, args.layers)
    keeps_inputs = not streams_inputs(args.method, args.neurons)
    _check_fits(_prune_bytes(lm, layers, session.calib.numel(), args.method, keeps_inputs), torch.device("cpu"),
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
            from wnb.compression.checkpoint import save_pruned

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
    detail = _detail_layer(session, args.detail)
    if detail is not None:
        view = session.prune_view(detail, args.method, args.sparsity, progress=progress)
        run.table("detail_errors.csv", view.errors.assign(layer=detail),
                  f"{detail} pruned alone: per-neuron held-out output error with WD, mean, variance and rank")
        run.figure("detail_error_vs_wd.png", plots.neuron_scatter(view.errors, "wd", "rel_rmse", title=detail),
                   "per-neuron relative output error after pruning vs WD")
    what = label if args.bits is None else f"{label} + {quant_label(args.bits, args.group_size)}"
    return (f"pruned {len(layers)} layer(s) of {lm.name} with {args.method} at {what}: held-out perplexity "
            f"{_ppl(dense)} dense → {_ppl(ppl)} pruned")


def _ppl(row: dict) -> str:
    """A perplexity with its 95% bootstrap interval, for the one-line summaries."""
    return f"{row['perplexity']:.2f} [{row['ppl_low']:.2f}, {row['ppl_high']:.2f}]"


def _prune_bytes(lm, layers, tokens: int, method: str, keeps_inputs: bool = True) -> int:
    """What sequential pruning holds at once: the hidden states of every calibration token entering and
    leaving a block and the residual after its attention, the inputs of a block's last layer kept for its
    outputs (at most ``sequential.KEEP_BYTES``), and the largest block's float64 statistics (SparseGPT's
    Hessians, Wanda's column norms) plus, where they are kept (neuron criteria), its float32 calibration
    inputs."""
    from wnb.model.architectures import block_of, layer_weight
    from wnb.tracing.sequential import KEEP_BYTES

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


# ---------------------------------------------------------------- expand

def _expand(args, run: RunFolder, session) -> str:
    from wnb import plots
    from wnb.app.compression import expert_counts
    from wnb.compression.expansion import check_expansion
    from wnb.compression.quantize import key_parts
    from wnb.experiments.sweeps import expansion_sweep

    lm = session.lm
    layers = _layers(lm, args.layers)
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
        from wnb.compression.expansion import expanded
        from wnb.compression.expansion_io import save_expanded

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
        from wnb.experiments.tasks import compare_tasks

        tasks = compare_tasks(lm, session.calib, args.tasks, layers, args.experts, args.sparsity, args.bits,
                              limit=args.task_limit, seed=args.seed, batch_size=args.batch_size, progress=progress)
        run.table("tasks.csv", tasks, "lm-evaluation-harness scores of the dense, SparseGPT and expanded models: "
                  "task, metric, value, stderr, filter, n (documents scored)")
        run.figure("tasks.png", plots.task_bars(tasks, title=lm.name), "acc per task and model")
    detail = _detail_layer(session, args.detail)
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


# ---------------------------------------------------------------- sweep

def _sweep(args, run: RunFolder, session) -> str:
    from wnb import plots
    from wnb.compression.sparsity import check_method, sparsity_label
    from wnb.experiments.sweeps import expansion_sweep

    lm = session.lm
    layers = _layers(lm, args.layers)
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


# ---------------------------------------------------------------- negative (sign ablation, issue 12)

def _negative_pairs(args):
    """The minimal pairs of ``--minimal-pairs`` (None for ``none``); raises WnbError for BLiMP offline or
    an empty / malformed file."""
    from wnb.experiments.minimal_pairs import minimal_pairs

    if args.minimal_pairs == "none":
        return None
    return minimal_pairs(args.minimal_pairs, n=args.pairs_per_phenomenon, seed=args.seed)


def _validate_negative(args) -> None:
    """``wnb negative``'s own arguments, before the model loads (the minimal pairs are read here too)."""
    from wnb.compression.clamp import check_side

    check_side(args.side)  # --fraction, --control-seeds, --pairs-per-phenomenon, --tolerance: their argparse types
    if args.eval_windows is not None and args.eval_windows < 1:
        raise WnbError("wnb negative measures perplexity on held-out windows: --eval-windows must be at least 1")
    _negative_pairs(args)


def _negative(args, run: RunFolder, session) -> str:
    from wnb import plots
    from wnb.experiments.sign_statistics import study_words

    lm = session.lm
    layers = _layers(lm, args.layers)
    progress = not args.quiet
    pairs = _negative_pairs(args)
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


# ---------------------------------------------------------------- command line

def _sparsity(text: str):
    """argparse type of --sparsity: a fraction such as 0.5 or 50%, or N:M such as 2:4."""
    from wnb.compression.sparsity import parse_sparsity

    try:
        parse_sparsity(text)
    except WnbError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text if ":" in text else float(text.rstrip("%")) / (100 if text.endswith("%") else 1)


def _whole(minimum: int, maximum: int | None = None, even: bool = False, why: str = ""):
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


def _real(low: float, high: float, low_open: bool = True, high_open: bool = False, why: str = ""):
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


def build_parser() -> argparse.ArgumentParser:
    from wnb.scoring.selection import MATCHED_EXCLUDE

    common = argparse.ArgumentParser(add_help=False)
    model = common.add_argument_group("model")
    model.add_argument("--model", default=None, metavar="NAME",
                       help="Hugging Face id or local folder (default: the bundled SmolLM2-135M-Instruct, offline)")
    model.add_argument("--revision", default=None, help="branch, tag or commit (Pythia checkpoints: step143000)")
    model.add_argument("--trust-remote-code", action="store_true", help="allow models that ship their own code")
    model.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    model.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
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
    data.add_argument("--budget", default="medium", choices=("small", "medium", "large"),
                      help="preset for the four options below, as the app's budgets (default: medium = 32 x 256 "
                           "calibration, 16 held-out, 1,024 tokens per layer for scoring)")
    data.add_argument("--seq-len", type=_whole(2, why="a window predicts each of its tokens after the first"),
                      default=None, help="tokens per window (paper: 2048)")
    data.add_argument("--windows", type=_whole(1), default=None, help="calibration windows (paper: 128)")
    data.add_argument("--eval-windows", type=_whole(0), default=None,
                      help="held-out windows for perplexity (disjoint from the calibration ones)")
    data.add_argument("--seed", type=_whole(0), default=0,
                      help="seed of the window draw and every random choice (default 0)")
    data.add_argument("--batch-size", type=_whole(1), default=8, help="windows per forward pass (default 8)")
    out = common.add_argument_group("output")
    out.add_argument("-o", "--output", default=None, metavar="DIR", help="output folder (default: ./wnb-<command>)")
    out.add_argument("--overwrite", action="store_true", help="replace an existing wnb output folder")
    out.add_argument("--no-cache", action="store_true", help="neither read nor write the on-disk cache")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bars (the summary is still printed)")

    parser = argparse.ArgumentParser(prog="wnb", description="Wasserstein neurons: entanglement scores, pruning and "
                                     "Sparse Expansion of language models, as batch runs.",
                                     epilog="Each sub-command has its own --help. Results: <output>/manifest.json lists "
                                     "every file; status 'complete' only once the run finished.")
    parser.add_argument("--version", action="version", version=f"wnb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    layers_help = ("layers: ffn (every feed-forward linear layer), first-ffn (gate_proj / dense_h_to_4h / c_fc / fc1 "
                   "of every block), all-linear, or module names such as model.layers.1.mlp.gate_proj (default: ffn)")
    detail_help = "one layer analysed neuron by neuron (default: the first FFN projection of block 1; 'none' to skip)"

    p = sub.add_parser("score", parents=[common], help="entanglement (WD) of every neuron of every layer",
                       description="Score every neuron by the Wasserstein distance of its standardized outputs to "
                       "N(0, 1) (PAPER.md §2), with mean and variance; rank the Wasserstein neurons; MD and figures "
                       "for one detail layer. Writes neurons.csv, layers.csv, detail_*.csv and PNG figures.")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help=layers_help)
    p.add_argument("--max-tokens", type=_whole(1), default=None,
                   help="tokens per layer (default: the budget's overview tokens)")
    p.add_argument("--wd", choices=("auto", "exact", "streaming"), default="auto",
                   help="exact WD from all captured outputs, or streaming histograms (memory per neuron, not per "
                        "token; within 1e-3); auto: exact when all outputs fit in memory at once (default)")
    p.add_argument("--bins", type=_whole(16, even=True), default=512,
                   help="histogram bins per neuron for streaming WD (default 512)")
    p.add_argument("--fraction", type=_real(0, 1), default=0.03,
                   help="share of a layer called Wasserstein neurons (paper: 0.03)")
    p.add_argument("--detail", default=None, metavar="LAYER", help=detail_help)
    p.add_argument("--pairs", type=_whole(1), default=50_000, help="token pairs for mapping difficulty (paper: 50,000)")

    p.add_argument("--contexts", type=_whole(1), default=None, metavar="K",
                   help="also keep every scored layer's K highest and lowest outputs with their contexts (one more "
                        "pass per layer), in the cache the app's 'What it reads' uses (it shows K = 20)")

    p = sub.add_parser("neuron", parents=[common], help="one self-contained HTML page per neuron: what it reads",
                       description="Read neurons of one layer: both tails' contexts, band samples, token table, "
                       "differentiating pairs, what it writes, outputs by position, figures; one HTML page per "
                       "neuron (no external resources) and its tables as CSV.")
    p.add_argument("--layer", required=True, help="the layer, e.g. model.layers.1.mlp.gate_proj")
    p.add_argument("--neuron", type=_whole(0), nargs="+", required=True, metavar="N", help="neuron indices")
    p.add_argument("--skip-first", type=_whole(0), default=0,
                   help="positions of every window left out of the statistics (1 drops the attention sink)")
    p.add_argument("--pairs", type=_whole(1), default=50_000, help="token pairs for mapping difficulty (paper: 50,000)")

    p = sub.add_parser("prune", parents=[common], help="prune the model once and measure perplexity",
                       description="Prune the chosen layers block by block (SparseGPT, Wanda or magnitude), "
                       "measure held-out perplexity against the dense model, and analyse one layer's per-neuron "
                       "errors. Writes perplexity.csv, layers.csv, detail_errors.csv, a figure, optionally the model.")
    p.add_argument("--method", default="sparsegpt", help="sparsegpt, wanda or magnitude (default: sparsegpt)")
    p.add_argument("--sparsity", type=_sparsity, default=0.5, help="fraction of zeros (0.5) or N:M such as 2:4")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help=layers_help)
    p.add_argument("--neurons", default=None, help="prune only a few rows per layer chosen by: wd, random, mean, "
                   "variance or weight_norm (the paper's Fig. 3 ablation); default: every row")
    p.add_argument("--fraction", type=_real(0, 1), default=0.03,
                   help="share of rows chosen with --neurons (default 0.03)")
    p.add_argument("--detail", default=None, metavar="LAYER", help=detail_help)
    _quant_flags(p)
    p.add_argument("--save-model", action="store_true", help="also write the pruned model into <output>/model")
    p.add_argument("--save-format", default="hf", choices=("hf", "compressed-tensors"),
                   help="hf: a plain checkpoint with the zeros kept; compressed-tensors: with the sparsity (and "
                   "quantization) config vLLM-style loaders read (needs wnb[compressed])")
    _true_sequential_flag(p)

    p = sub.add_parser("expand", parents=[common], help="Sparse Expansion: k sparse experts per layer",
                       description="Replace the chosen layers by k SparseGPT experts routed by PCA + k-means "
                       "(PAPER.md §5), block by block; compare perplexity with SparseGPT (k = 1) and the dense "
                       "model; per-neuron RI, token shares and WD/MD before vs after for one detail layer.")
    p.add_argument("--experts", type=_whole(1), default=16, help="experts per layer, k (paper: 16)")
    p.add_argument("--sparsity", type=_sparsity, default=0.5, help="per-expert sparsity: fraction or N:M")
    p.add_argument("--pca-factor", type=_whole(2, why="the router's PCA keeps d_in // factor dimensions, which must be "
                                               "fewer than d_in"),
                   default=32, help="router PCA to d_in / factor dimensions (paper: 32; "
                   "the detail layer's analysis always uses 32, as the app)")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help=layers_help)
    p.add_argument("--detail", default=None, metavar="LAYER", help=detail_help)
    _quant_flags(p)
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="also score lm-eval tasks on the dense, "
                   "SparseGPT and expanded models (needs wnb[eval]; wnb_agreement works offline, the standard "
                   "tasks download their data)")
    p.add_argument("--task-limit", type=_whole(1), default=None, help="documents per task (default: all)")
    p.add_argument("--save-model", action="store_true", help="also write the expansion (routers and experts, "
                   "safetensors + JSON; wnb.load_expanded reads it) into <output>/expansion: builds it once more")
    _true_sequential_flag(p)

    p = sub.add_parser("sweep", parents=[common], help="perplexity vs sparsity for several methods",
                       description="Prune with every method at every sparsity (paper Fig. 9), optionally Sparse "
                       "Expansion with several k; writes sweep.csv and perplexity.png.")
    p.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"], help="pruning methods")
    p.add_argument("--sparsities", nargs="+", type=_sparsity, default=[0.5, 0.7, "2:4"], help="fractions or N:M")
    p.add_argument("--experts", nargs="*", type=_whole(1), default=[], metavar="K",
                   help="also Sparse Expansion with these numbers of experts (e.g. 2 4 8 16)")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER", help=layers_help)
    _true_sequential_flag(p)

    p = sub.add_parser("negative", parents=[common], help="sign ablation of the Wasserstein neurons (the follow-up)",
                       description="The follow-up's experiment (Kong et al., 'Negative Pre-activations Differentiate "
                       "Syntax', ICLR 2026): zero only the negative outputs of the top --fraction of each layer's "
                       "neurons by WD and compare held-out perplexity and minimal-pair accuracy with random neurons "
                       "of the same count and a perplexity-matched set of non-Wasserstein neurons; Δ surprisal by "
                       "token class; the ablation one layer at a time and cumulatively. Training checkpoints: "
                       "--revision. Writes study.csv, surprisal_*.csv, top_tokens.csv, depth.csv and PNG figures.")
    p.add_argument("--layers", nargs="+", default=["first-ffn"], metavar="LAYER",
                   help=layers_help.replace("(default: ffn)", "(default: first-ffn, as the follow-up)"))
    below = f"the share of each layer's neurons ablated, below the {MATCHED_EXCLUDE:.0%} the matched control leaves out"
    p.add_argument("--fraction", type=_real(0, MATCHED_EXCLUDE, high_open=True,
                                            why=f"{below}; the follow-up uses 0.01"),
                   default=0.01, help="share of each layer's neurons ablated, by WD "
                   "(follow-up: 0.01; below 0.1, the share the matched control leaves out)")
    p.add_argument("--side", default="negative", choices=("negative", "positive", "both"),
                   help="negative: y -> max(y, 0) (the follow-up's), positive: y -> min(y, 0), both: y -> 0")
    p.add_argument("--controls", nargs="*", default=["random", "matched"], choices=("random", "matched"),
                   help="random (same count per layer, one set per seed) and matched (non-Wasserstein neurons, "
                        "count bisected to the Wasserstein ablation's perplexity); none: give the flag alone")
    p.add_argument("--control-seeds", type=_whole(1), default=3,
                   help="random control sets, seeds --seed .. --seed + N - 1; the matched control uses --seed "
                        "(default 3)")
    p.add_argument("--tolerance", type=_real(0, 1, high_open=True), default=0.02,
                   help="the matched control's perplexity within this share of the target (default 0.02)")
    p.add_argument("--minimal-pairs", default="agreement", metavar="SOURCE",
                   help="agreement (wnb's agreement constructions, offline), tse (Marvin & Linzen's constructions, "
                        "offline), knowledge (facts and sums, offline), blimp (needs a network), a JSONL file of "
                        "{good, bad, phenomenon}, or none (default: agreement)")
    p.add_argument("--pairs-per-phenomenon", type=_whole(1), default=100,
                   help="minimal pairs per phenomenon (TSE: per construction; BLiMP: per paradigm), drawn with "
                        "--seed (default 100)")
    p.add_argument("--max-tokens", type=_whole(1), default=None,
                   help="calibration tokens the WD is computed over (default: all of them, as the follow-up)")
    p.add_argument("--depth", action=argparse.BooleanOptionalAction, default=True,
                   help="also the depth profile: each layer alone and layers 0..l (2 perplexity passes per layer; "
                        "--no-depth skips it)")
    p.add_argument("--depth-pairs", action="store_true",
                   help="score the minimal pairs at every step of the depth profile too (slow)")
    return parser


def _quant_flags(p) -> None:
    from wnb.compression.quantize import MAX_BITS, MIN_BITS

    p.add_argument("--bits", type=_whole(MIN_BITS, MAX_BITS), default=None,
                   help="also quantize the kept weights to this many bits (2-8): "
                   "inside SparseGPT's sweep, min-max per output channel (or group), as the paper's --quantize")
    p.add_argument("--group-size", type=_whole(1), default=None, help="with --bits: one scale per this many columns "
                   "(default: one per output channel)")


def _true_sequential_flag(p) -> None:
    p.add_argument("--true-sequential", action=argparse.BooleanOptionalAction, default=True,
                   help="calibrate each layer on the block's already pruned (or expanded) layers before it, e.g. "
                   "down_proj on the pruned gate and up projections (default); --no-true-sequential calibrates "
                   "all of a block's layers on the block as it entered, as the reference SparseGPT and Wanda code")


RUNNERS = {"score": _score, "prune": _prune, "expand": _expand, "sweep": _sweep, "neuron": _neuron,
           "negative": _negative}


def main(argv: list[str] | None = None) -> int:
    """Runs one ``wnb`` command; returns the exit status (0 done, 1 failed, 2 bad input, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    path = Path(args.output or f"wnb-{args.command}").expanduser()
    run = RunFolder(path, args.command, argv)
    started = False
    begin = time.perf_counter()
    try:
        _validate(args)
        RunFolder.check(path, args.overwrite)
        run.start({k: v for k, v in vars(args).items()})
        started = True
        with cache.recording() as used:
            session = _setup(args, run)
            summary = RUNNERS[args.command](args, run, session)
        run.copy_cache(used)
        seconds = time.perf_counter() - begin
        line = f"wnb {args.command}: {summary} ({seconds:.1f} s; results in {path})"
        run.finish(line, seconds=seconds)
        print(line)
        return 0
    except WnbError as exc:
        print(f"wnb {args.command}: error: {exc}", file=sys.stderr)
        if started:
            run.fail(str(exc))
        return 1 if started else 2
    except KeyboardInterrupt:
        print(f"wnb {args.command}: interrupted{'; ' + str(path / MANIFEST) + ' says incomplete' if started else ''}",
              file=sys.stderr)
        if started:
            run.fail("interrupted")
        return 130
    except BaseException as exc:
        if started:
            run.fail(f"{type(exc).__name__}: {exc}")
        raise


def entry() -> None:
    """The ``wnb`` command. An interrupted run, once its manifest says incomplete, ends by SIGINT as the shell
    convention asks (the shell shows 130), so a calling script stops too; always so, as CPython may otherwise
    end a run that handled its interrupt with either 130 or the signal."""
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    entry()
