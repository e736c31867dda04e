"""The follow-up over training (Kong et al., ICLR 2026; PAPER.md §8: Pythia's checkpoints, "the ablation hurts
more as the neurons emerge"): one run over a list of checkpoints — Hugging Face revisions of one model
(``"step1000"``, ...) or local checkpoint folders — measuring at each

- the WD of every neuron of the first FFN projections (mean over all neurons and over the Wasserstein set);
- the Wasserstein set (top ``fraction`` of each layer) and its overlap with the last checkpoint's;
- the sign ablation of that set: Δ perplexity and Δ NLL per token on held-out windows, paired over the same
  windows, and with minimal pairs Δ accuracy (Bonett–Price) and McNemar's p against the same checkpoint dense.

    table = checkpoint_study(["step1000", "step8000", "step143000"], calib, held_out,
                             model="EleutherAI/pythia-160m-deduped", pairs=wnb.minimal_pairs("tse", n=20))
    wnb.plots.checkpoints.checkpoint_plot(table)

One model is loaded at a time and released before the next. The windows are token ids, so every checkpoint
must share the tokenizer they were made with (true of a model's training checkpoints).
"""
from __future__ import annotations

import gc
import re
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from wnb.compression.clamp import check_side, sign_ablated
from wnb.core.inference import (
    accuracy_difference,
    mcnemar,
    nll_difference,
    perplexity_difference,
    verdict,
)
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.experiments.minimal_pairs import check_pairs
from wnb.experiments.pair_scoring import minimal_pair_scores
from wnb.experiments.sign_statistics import MINIMUM_DELTA_NLL
from wnb.model.architectures import check_layers, first_ffn_layers
from wnb.model.lm import LM
from wnb.model.loading import load_model
from wnb.scoring.layers import score_layers
from wnb.scoring.selection import check_fraction, count_per_layer, select_wasserstein
from wnb.tracing.nll import token_nll


def step_of(label: str) -> int | None:
    """The training step a checkpoint's name gives (``"step143000"``, ``"checkpoint-500"``, ``".../step_20"``),
    or None."""
    found = re.findall(r"(?:step|checkpoint)[-_]?(\d+)", str(label).lower())
    return int(found[-1]) if found else None


def _entries(checkpoints, model) -> list[tuple[str, object]]:
    """``[(label, source)]``: a loaded LM, a local folder, or a revision of ``model``; checked before any loads."""
    items = [checkpoints] if isinstance(checkpoints, (str, Path, LM)) else list(checkpoints or ())
    if not items:
        raise WnbError("checkpoints is empty: give revisions of model= (e.g. 'step1000') or checkpoint folders")
    out = []
    for item in items:
        if isinstance(item, LM):
            out.append((item.name, item))
        elif isinstance(item, (str, Path)) and Path(item).expanduser().is_dir():
            out.append((Path(item).expanduser().name, Path(item).expanduser()))
        elif isinstance(item, str) and model is not None:
            out.append((item, item))
        else:
            raise WnbError(f"checkpoint {item!r} is neither a folder nor a loaded model; to name revisions of a "
                           "Hugging Face model pass model=<id> (e.g. model='EleutherAI/pythia-160m-deduped')")
    return out


def _load(source, model, device, dtype) -> LM:
    if isinstance(source, LM):
        return source
    if isinstance(source, Path):
        return load_model(str(source), device=device, dtype=dtype)
    return load_model(model, device=device, dtype=dtype, revision=source)


def _ablation(lm, held_out, chosen, side, pairs, opts) -> dict:
    """Dense vs the sign ablation of ``chosen`` on one checkpoint: paired Δ perplexity, Δ NLL, Δ accuracy."""
    dense = token_nll(lm, held_out, batch_size=opts["batch_size"], progress=opts["progress"])
    with sign_ablated(lm, chosen, side):
        ablated = token_nll(lm, held_out, batch_size=opts["batch_size"], progress=opts["progress"])
    ppl, nll = perplexity_difference(dense, ablated), nll_difference(dense, ablated)
    row = {"perplexity": float(torch.exp(dense.double().mean())), "ablated_perplexity": float(torch.exp(ablated.double().mean())),
           "delta_perplexity": ppl.delta, "delta_ppl_low": ppl.low, "delta_ppl_high": ppl.high,
           "delta_nll": nll.delta, "delta_nll_low": nll.low, "delta_nll_high": nll.high,
           "nll_verdict": verdict(nll.low, nll.high, "greater", minimum=MINIMUM_DELTA_NLL)}
    if pairs is not None:
        kw = dict(batch_size=opts["pair_batch_size"], progress=opts["progress"], score=opts["score"])
        right = minimal_pair_scores(lm, pairs, **kw)["correct"].to_numpy()
        with sign_ablated(lm, chosen, side):
            wrong = minimal_pair_scores(lm, pairs, **kw)["correct"].to_numpy()
        acc = accuracy_difference(right, wrong)
        row.update(accuracy=float(right.mean()), ablated_accuracy=float(wrong.mean()), delta_accuracy=acc.delta,
                   delta_acc_low=acc.low, delta_acc_high=acc.high, mcnemar_p=mcnemar(right, wrong).p)
    return row


def _one(lm, calib, held_out, layers, fraction, side, pairs, opts) -> tuple[dict, dict]:
    """One checkpoint's row and its Wasserstein set."""
    calib, held_out = check_windows(calib, lm), check_windows(held_out, lm, min_len=2)
    names = check_layers(lm, first_ffn_layers(lm) if layers is None else layers)
    stats = score_layers(lm, calib, names, ("wd",), wd="streaming" if opts["streaming"] else "exact",
                         max_tokens=opts["max_tokens"], skip_first=opts["skip_first"], batch_size=opts["batch_size"],
                         progress=opts["progress"])
    scores = {name: s["wd"] for name, s in stats.items()}
    chosen = select_wasserstein(scores, fraction)
    every = torch.cat([wd[torch.isfinite(wd)] for wd in scores.values()])
    top = torch.cat([scores[name][idx] for name, idx in chosen.items()])
    row = {"n_neurons": count_per_layer(chosen), "wd_mean": float(every.mean()), "wd_top_mean": float(top.mean())}
    row.update(_ablation(lm, held_out, chosen, side, pairs, opts))
    return row, chosen


def _overlap(chosen: dict, final: dict) -> float:
    """Share of the last checkpoint's set that this set holds too (pooled over layers); NaN if the layers differ."""
    if list(chosen) != list(final) or any(chosen[n].numel() != final[n].numel() for n in final):
        return float("nan")
    shared = sum(len(set(chosen[n].tolist()) & set(final[n].tolist())) for n in final)
    return shared / max(1, count_per_layer(final))


def checkpoint_study(checkpoints, calib, held_out, model: str | None = None, pairs=None, fraction: float = 0.01,
                     layers=None, side: str = "negative", device: str = "auto", dtype=None, streaming: bool = False,
                     max_tokens: int | None = None, skip_first: int = 0, batch_size: int = 8,
                     pair_batch_size: int = 32, score: str = "sum", progress: bool = True) -> pd.DataFrame:
    """The module docstring's run, one row per checkpoint in the order given (the last is the reference for
    the overlap): ``checkpoint, step`` (:func:`step_of`), ``n_neurons, wd_mean, wd_top_mean, overlap_final``,
    ``perplexity, ablated_perplexity, delta_perplexity, delta_ppl_low, delta_ppl_high, delta_nll,
    delta_nll_low, delta_nll_high, nll_verdict`` and with ``pairs`` ``accuracy, ablated_accuracy,
    delta_accuracy, delta_acc_low, delta_acc_high, mcnemar_p``; ``seconds``.

    ``checkpoints``: revisions of ``model`` (a Hugging Face id), local checkpoint folders, or loaded models,
    loaded with ``device`` and ``dtype``. ``calib`` and ``held_out`` are token windows; WD is ranked over
    ``calib`` (exact, or ``streaming``; ``max_tokens``, ``skip_first`` as in :func:`wnb.scoring.layers.score_layers`)
    on ``layers`` (default: each block's first FFN projection). ``side`` and ``fraction`` as in
    :func:`wnb.sign_ablation_study`."""
    check_side(side)
    check_fraction(fraction)
    entries = _entries(checkpoints, model)
    pairs = None if pairs is None else check_pairs(pairs)
    opts = dict(streaming=streaming, max_tokens=max_tokens, skip_first=skip_first, batch_size=batch_size,
                pair_batch_size=pair_batch_size, score=score, progress=progress)
    rows, sets = [], []
    for label, source in tqdm(entries, desc="checkpoints", disable=not progress, leave=False):
        start = time.perf_counter()
        lm = _load(source, model, device, dtype)
        if pairs is not None and lm.tokenizer is None:
            raise WnbError(f"{lm.name} has no tokenizer; minimal pairs need one (pass pairs=None)")
        row, chosen = _one(lm, calib, held_out, layers, fraction, side, pairs, opts)
        rows.append({"checkpoint": label, "step": step_of(label), **row, "seconds": time.perf_counter() - start})
        sets.append(chosen)
        if not isinstance(source, LM):
            del lm
            gc.collect()
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("wd_top_mean") + 1, "overlap_final", [_overlap(s, sets[-1]) for s in sets])
    table["step"] = table["step"].astype("Int64")
    table.attrs.update(model=model, fraction=fraction, side=side)
    return table
