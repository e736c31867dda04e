"""Sign-specific ablation of neurons (Kong, Ning, Adler, Shavit, "Negative Pre-activations Differentiate
Syntax", ICLR 2026; PAPER.md §8): the clamp, the study with its controls, and the depth profile.

- :func:`sign_ablated` clamps chosen outputs of linear layers during every forward pass
  (``"negative"``: y → max(y, 0), ``"positive"``: y → min(y, 0), ``"both"``: y → 0) with forward hooks;
  weights are never touched and the hooks are gone when the ``with`` block ends, however it ends.
- :func:`sign_ablation_study` ablates the top ``fraction`` of each layer's neurons by WD (the
  Wasserstein neurons), random neurons of the same count per layer, and a perplexity-matched set of
  neurons from outside the top 10% by WD, and measures held-out perplexity (and minimal-pair accuracy),
  each also as a paired difference to dense and to the Wasserstein ablation with its bootstrap interval,
  McNemar's test and a verdict worded by the interval (:mod:`wnb.statistics`).
- :func:`sign_ablation_depth` applies the Wasserstein ablation one layer at a time and cumulatively.

Selections are ``{layer: LongTensor of neuron indices}``; :func:`wasserstein_scores` gives the WD they
are chosen by, and can be computed once and passed to every function here as ``scores=``.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.state import changed

SIDES = ("negative", "positive", "both")
CONTROLS = ("random", "matched")
MATCHED_EXCLUDE = 0.10  # the matched control draws from outside the top 10% of each layer by WD
MATCHED_TOLERANCE = 0.02  # ... and its perplexity must be within 2% of the Wasserstein ablation's
# The smallest effects the study's verdicts look for (wnb.statistics.verdict), declared before any data: the
# follow-up states no effect size in these units. 0.01 nats per token is a 1% change of perplexity.
MINIMUM_DELTA_NLL = 0.01
MINIMUM_DELTA_ACCURACY = 0.02  # 2 points of minimal-pair accuracy


# ---------------------------------------------------------------- the clamp

def check_side(side: str) -> str:
    if side not in SIDES:
        raise WnbError(f"unknown side {side!r}; choose one of {', '.join(SIDES)} (negative: y -> max(y, 0), "
                       "positive: y -> min(y, 0), both: y -> 0)")
    return side


def check_neurons(lm, neurons) -> dict[str, torch.Tensor]:
    """Validate ``{layer: neuron indices}`` (indices or a boolean mask per layer); return the layers in
    forward order with sorted unique ``LongTensor`` indices."""
    from wnb.compression.sparsity import check_rows
    from wnb.model.architectures import check_layers, layer_weight

    if not isinstance(neurons, Mapping):
        raise WnbError("neurons must map layer names to neuron indices, e.g. "
                       "{'model.layers.1.mlp.gate_proj': [3, 17]} (see wnb.select_wasserstein)")
    if not neurons:
        return {}
    plan = {}
    for name in check_layers(lm, list(neurons)):
        value = neurons[name]
        if value is None:
            raise WnbError(f"no neuron indices given for {name!r}")
        n_out = layer_weight(lm, name).shape[0]
        try:
            plan[name] = check_rows(value, n_out)
        except WnbError as exc:
            raise WnbError(f"{name} has {n_out} neurons: {exc}") from None
    return plan


class _Clamp:
    """Forward hook: return a copy of the output with the chosen features (last dimension) clamped.

    Not in place: nnsight reads a layer's output inside its ``forward``, before PyTorch's forward hooks
    run, and keeps a reference; an in-place clamp would reach that reference or not depending on whether
    the trace stopped at this layer (``wnb.tracing.capture`` stops after its deepest layer, before its hooks).
    With a copy, a capture of an ablated layer always gives its output before the clamp."""

    def __init__(self, index: torch.Tensor, side: str):
        self.index = index
        self.side = side
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, module, args, output):
        if not isinstance(output, torch.Tensor):
            raise WnbError(f"sign ablation needs a layer that returns one tensor (got {type(output).__name__})")
        idx = self._on.get(output.device)
        if idx is None:
            idx = self._on[output.device] = self.index.to(output.device)
        if self.side == "both":
            return output.index_fill(-1, idx, 0)
        part = output.index_select(-1, idx)
        part = part.clamp_(min=0) if self.side == "negative" else part.clamp_(max=0)
        return output.index_copy(-1, idx, part)


@contextlib.contextmanager
def sign_ablated(lm, neurons, side: str = "negative"):
    """Clamp the chosen outputs of linear layers during every forward pass inside the ``with`` block.

    ``neurons`` maps layer names (``wnb.linear_layers(lm)``) to neuron indices (output features).
    ``side="negative"`` zeroes only their negative values (y → max(y, 0), the follow-up's intervention),
    ``"positive"`` only the positive ones (y → min(y, 0)), ``"both"`` all (y → 0). Forward hooks do it, so
    :func:`wnb.perplexity`, :func:`wnb.tracing.capture`, nnsight traces and ``lm.model.generate`` all run the
    ablated model; the weights are never touched. The clamp acts as the layer returns, after nnsight
    reads its output: a capture of an ablated layer itself gives its output before the clamp (what it
    computes from its, possibly ablated, inputs), every later layer sees the clamped values. The hooks
    are removed on exit, also after an exception or Ctrl-C. Yields the validated ``{layer: indices}``.
    """
    from wnb.model.architectures import module
    from wnb.model.lm import require_local

    check_side(side)
    plan = check_neurons(lm, neurons)
    require_local(lm, "sign ablation")
    with changed(lm, f"sign ablation ({side} side)"):  # hooks: the weights stay dense, the outputs do not
        handles = []
        try:
            for name, idx in plan.items():
                if idx.numel():
                    handles.append(module(lm, name).register_forward_hook(_Clamp(idx, side)))
            yield plan
        finally:
            for handle in handles:
                handle.remove()


# ---------------------------------------------------------------- selections

def wasserstein_scores(lm, calib, layers=None, max_tokens: int | None = None, batch_size: int = 8,
                       streaming: bool = False, max_bytes: int | None = None,
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """WD (to N(0, 1), PAPER.md §2) of every neuron of ``layers`` (default: the first FFN projection of
    every block) over the calibration tokens, as ``{layer: [n_neurons] float64}``.

    Exact WD (:func:`wnb.layer_scores`) captures the layers' outputs in as few passes as ``max_bytes``
    allows (default: the smaller of 1 GiB and 60% of free memory; each pass stops after its deepest
    layer); ``streaming=True`` uses :func:`wnb.stream_scores` instead (one pass, memory per neuron, WD
    within ~1e-3).
    """
    from wnb.core.memory import available_memory
    from wnb.model.architectures import check_layers, first_ffn_layers
    from wnb.scoring.streaming import stream_scores
    from wnb.scoring.tables import layer_scores
    from wnb.tracing.capture import split_by_memory

    layers = check_layers(lm, first_ffn_layers(lm) if layers is None else layers)
    calib = check_windows(calib, lm)
    if streaming:
        acc = stream_scores(lm, calib, layers, max_tokens=max_tokens, batch_size=batch_size, progress=progress)
        return {name: acc[name].wasserstein() for name in layers}
    n_tokens = calib.numel() if max_tokens is None else min(int(max_tokens), calib.numel())
    limit = min(1 << 30, int(0.6 * available_memory())) if max_bytes is None else int(max_bytes)
    scores: dict[str, torch.Tensor] = {}
    for group in split_by_memory(lm, layers, n_tokens, limit):
        scores.update(layer_scores(lm, calib, group, max_tokens=max_tokens, batch_size=batch_size,
                                   progress=progress))
    return {name: scores[name] for name in layers}


def _check_fraction(fraction: float) -> float:
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise WnbError(f"fraction must be in (0, 1), the share of each layer's neurons (got {fraction!r}); "
                       "the follow-up uses 0.01")
    return float(fraction)


def _check_scores(lm, scores, layers=None) -> dict[str, torch.Tensor]:
    from wnb.model.architectures import check_layers, layer_weight

    if not isinstance(scores, Mapping) or not scores:
        raise WnbError("scores must be {layer: WD per neuron}, as wnb.wasserstein_scores returns")
    names = check_layers(lm, list(scores) if layers is None else layers)
    missing = [n for n in names if n not in scores]
    if missing:
        raise WnbError(f"scores has no WD for {missing}; compute them with wnb.wasserstein_scores(lm, calib, layers)")
    out = {}
    for name in names:
        wd = torch.as_tensor(scores[name]).double().flatten()
        if wd.numel() != layer_weight(lm, name).shape[0]:
            raise WnbError(f"scores[{name!r}] has {wd.numel()} entries but the layer has "
                           f"{layer_weight(lm, name).shape[0]} neurons")
        out[name] = wd
    return out


def select_wasserstein(scores: Mapping, fraction: float = 0.01) -> dict[str, torch.Tensor]:
    """The Wasserstein neurons: the top ``fraction`` of each layer by WD (at least one), highest first."""
    from wnb.scoring.wasserstein import top_neurons

    _check_fraction(fraction)
    return {name: top_neurons(torch.as_tensor(wd), fraction=fraction) for name, wd in scores.items()}


def select_random(scores: Mapping, counts: Mapping, seed: int = 0) -> dict[str, torch.Tensor]:
    """``counts[layer]`` neurons per layer drawn uniformly from all of the layer's neurons (seeded; the
    draw may include Wasserstein neurons, as in the follow-up's random control)."""
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, wd in scores.items():
        n = torch.as_tensor(wd).numel()
        k = int(counts.get(name, 0))
        if not 0 <= k <= n:
            raise WnbError(f"cannot draw {k} of the {n} neurons of {name}")
        out[name] = torch.randperm(n, generator=gen)[:k]
    return out


def matched_candidates(scores: Mapping, exclude: float = MATCHED_EXCLUDE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per layer, its ranked neurons outside the top ``exclude`` by WD, in a seeded random order; the
    perplexity-matched control takes a prefix of each (:func:`select_matched`)."""
    from wnb.scoring.wasserstein import top_neurons

    if not 0 < exclude < 1:
        raise WnbError(f"exclude must be in (0, 1) (got {exclude})")
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, wd in scores.items():
        wd = torch.as_tensor(wd).double()
        ranked = top_neurons(wd, k=wd.numel())  # every non-constant neuron, highest WD first
        top = max(1, round(exclude * wd.numel()))
        pool = ranked[top:]
        out[name] = pool[torch.randperm(pool.numel(), generator=gen)]
    return out


def select_matched(candidates: Mapping, count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` candidates of the widest pool and the same share of every other pool."""
    widest = max(c.numel() for c in candidates.values())
    count = max(0, min(int(count), widest))
    return {name: c[:min(c.numel(), round(count * c.numel() / widest))] for name, c in candidates.items()}


def _count(selection: Mapping) -> int:
    return int(sum(idx.numel() for idx in selection.values()))


# ---------------------------------------------------------------- evaluation

def ablated_nll(lm, held_out, selection, side: str = "negative", batch_size: int = 8,
                progress: bool = True) -> torch.Tensor:
    """Per-token NLL of ``held_out`` (:func:`wnb.token_nll`) with ``selection`` sign-ablated on ``side``:
    what every row of the study, the matched search and the depth profile measure. ``nll_fn`` of those
    functions replaces it (same arguments, e.g. a cached version)."""
    from wnb.tracing.nll import token_nll

    with sign_ablated(lm, selection, side):
        return token_nll(lm, held_out, batch_size=batch_size, progress=progress)


def _evaluate(lm, held_out, selection, side, pairs, batch_size, pair_batch_size, progress, seed, nll_fn,
              nll=None) -> tuple[dict, dict]:
    """One row's perplexity (and accuracy) columns, and what the paired comparisons need: ``{"nll": NLL per
    window [n_windows], "scores": the minimal_pair_scores table or None}``."""
    from wnb.experiments.pair_scoring import minimal_pair_scores
    from wnb.tracing.nll import interval_of

    start = time.perf_counter()
    if nll is None:
        nll = nll_fn(lm, held_out, selection, side, batch_size=batch_size, progress=progress)
    row = interval_of(nll, seed=seed)
    scores = None
    with sign_ablated(lm, selection, side):
        if pairs is not None:
            scores = minimal_pair_scores(lm, pairs, batch_size=pair_batch_size, progress=progress)
            row.update(_accuracy_columns(scores))
    row["seconds"] = time.perf_counter() - start
    return row, {"nll": torch.as_tensor(nll, dtype=torch.float64).mean(1).numpy(), "scores": scores}


def _accuracy_columns(scores: pd.DataFrame) -> dict:
    out = {"accuracy": float(scores["correct"].mean())}
    for phenomenon, group in scores.groupby("phenomenon", sort=False):
        out[f"accuracy_{phenomenon}"] = float(group["correct"].mean())
    return out


# ---------------------------------------------------------------- paired comparisons (wnb.statistics)

def _accuracy_intervals(scores: pd.DataFrame) -> dict:
    """Wilson intervals of the accuracy, overall (``acc_low, acc_high``) and per phenomenon
    (``acc_low_<phenomenon>, acc_high_<phenomenon>``; not ``accuracy_*``, which names phenomena)."""
    from wnb.statistics import accuracy_interval

    overall = accuracy_interval(scores["correct"].to_numpy())
    out = {"acc_low": overall.low, "acc_high": overall.high}
    for phenomenon, acc in accuracy_interval(scores["correct"].to_numpy(), groups=scores["phenomenon"]).items():
        out[f"acc_low_{phenomenon}"], out[f"acc_high_{phenomenon}"] = acc.low, acc.high
    return out


def _versus(a: dict, b: dict, prefix: str, minimum_nll: float, minimum_accuracy: float) -> dict:
    """``b − a`` paired over the same held-out windows (Δ perplexity, Δ NLL per token, 95% bootstrap) and,
    with minimal pairs, over the same pairs (Δ accuracy, McNemar p), with their verdicts: the ablation
    ``b`` raises NLL / lowers accuracy (Bonett–Price interval). Column names start with ``prefix``
    (``delta`` or ``w_delta``)."""
    from wnb.statistics import accuracy_difference, mcnemar, nll_difference, perplexity_difference, verdict

    ppl, nll = perplexity_difference(a["nll"], b["nll"]), nll_difference(a["nll"], b["nll"])
    short = prefix.removesuffix("delta")  # "" or "w_"
    out = {f"{prefix}_perplexity": ppl.delta, f"{prefix}_ppl_low": ppl.low, f"{prefix}_ppl_high": ppl.high,
           f"{prefix}_nll": nll.delta, f"{prefix}_nll_low": nll.low, f"{prefix}_nll_high": nll.high,
           f"{short}nll_verdict": verdict(nll.low, nll.high, "greater", minimum=minimum_nll)}
    if a["scores"] is not None:
        right_a, right_b = a["scores"]["correct"].to_numpy(), b["scores"]["correct"].to_numpy()
        acc = accuracy_difference(right_a, right_b)
        out.update({f"{prefix}_accuracy": acc.delta, f"{prefix}_acc_low": acc.low, f"{prefix}_acc_high": acc.high,
                    f"{short}mcnemar_p": mcnemar(right_a, right_b).p,
                    f"{short}acc_verdict": verdict(acc.low, acc.high, "less", minimum=minimum_accuracy)})
    return out


def _seed_spread(table: pd.DataFrame) -> pd.DataFrame:
    """On the rows of each control, ``n_seeds`` and ``<name>_seeds_mean / _sd / _min / _max`` over its seeds
    (:func:`wnb.statistics.across_seeds`) of perplexity, w_delta_perplexity, accuracy (named ``acc``: columns
    that start with ``accuracy`` are the phenomena's) and w_delta_accuracy."""
    from wnb.statistics import across_seeds

    names = {"perplexity": "perplexity", "w_delta_perplexity": "w_delta_perplexity", "accuracy": "acc",
             "w_delta_accuracy": "w_delta_accuracy"}
    for control in CONTROLS:
        rows = table["selection"] == control
        if not rows.any():
            continue
        table.loc[rows, "n_seeds"] = int(rows.sum())
        for column in (c for c in names if c in table):
            spread = across_seeds(table.loc[rows, column].to_numpy(float))
            for stat in ("mean", "sd", "min", "max"):
                table.loc[rows, f"{names[column]}_seeds_{stat}"] = getattr(spread, stat)
    return table


def _compare(rows: list[dict], raws: list[dict], minimum_nll: float, minimum_accuracy: float) -> pd.DataFrame:
    """The study's table with its paired columns (:func:`sign_ablation_study`); ``rows[0]`` is dense."""
    w = next((raw for row, raw in zip(rows, raws) if row["selection"] == "wasserstein"), None)
    for row, raw in zip(rows, raws):
        if raw["scores"] is not None:
            row.update(_accuracy_intervals(raw["scores"]))
        if row["selection"] != "dense":
            row.update(_versus(raws[0], raw, "delta", minimum_nll, minimum_accuracy))
        if row["selection"] in CONTROLS and w is not None:
            row.update(_versus(raw, w, "w_delta", minimum_nll, minimum_accuracy))
    return _seed_spread(pd.DataFrame(rows))


def _prepare(lm, calib, held_out, layers, fraction, side, pairs, scores, batch_size, progress):
    """Validate everything and return (held_out, pairs, scores) — WD computed here if not given."""
    from wnb.experiments.minimal_pairs import check_pairs
    from wnb.model.architectures import check_layers, first_ffn_layers
    from wnb.model.lm import require_local

    require_local(lm, "sign ablation")
    check_side(side)
    _check_fraction(fraction)
    held_out = check_windows(held_out, lm)
    if held_out.shape[1] < 2:
        raise WnbError("held-out windows need at least 2 tokens each")
    if pairs is not None:
        pairs = check_pairs(pairs)
        if lm.tokenizer is None:
            raise WnbError(f"{lm.name} has no tokenizer; minimal pairs need one (pass pairs=None)")
    if scores is not None:
        scores = _check_scores(lm, scores, layers)
    else:
        names = check_layers(lm, first_ffn_layers(lm) if layers is None else layers)
        if calib is None:
            raise WnbError("calibration windows are needed to compute WD: pass calib= (or scores=)")
        calib = check_windows(calib, lm)
        scores = wasserstein_scores(lm, calib, names, batch_size=batch_size, progress=progress)
    return held_out, pairs, scores


def sign_ablation_study(lm, calib, held_out, layers=None, fraction: float = 0.01, side: str = "negative",
                        controls=("random", "matched"), seeds=(0, 1, 2), pairs=None, progress: bool = True,
                        scores: Mapping | None = None, matched_seeds=None, exclude: float = MATCHED_EXCLUDE,
                        tolerance: float = MATCHED_TOLERANCE, batch_size: int = 8,
                        pair_batch_size: int = 32, nll_fn=None, minimum_nll: float = MINIMUM_DELTA_NLL,
                        minimum_accuracy: float = MINIMUM_DELTA_ACCURACY) -> pd.DataFrame:
    """The follow-up's main experiment: held-out perplexity (and minimal-pair accuracy) of the model
    with the sign-specific ablation of its Wasserstein neurons, of random neurons and of a
    perplexity-matched set of non-Wasserstein neurons.

    - ``wasserstein``: the top ``fraction`` of each of ``layers`` (default: the first FFN projection of
      every block) by WD over ``calib`` (or ``scores`` from :func:`wasserstein_scores`).
    - ``random``, one per seed: the same count per layer, uniform over all of the layer's neurons
      (they may overlap the Wasserstein set; nothing keeps them disjoint).
    - ``matched``, one per ``matched_seeds`` (default: the first seed): neurons from outside the top
      ``exclude`` (10%) of each layer by WD, in a seeded random order; the count per layer is found by
      bisection so that the held-out perplexity is within ``tolerance`` (2%) of the Wasserstein
      ablation's. ``target_perplexity``, ``within_tolerance``, ``evaluations`` (perplexity passes) and
      ``note`` report the search; when even all candidates stay below the target the row says so.

    ``pairs``: minimal pairs (:func:`wnb.experiments.minimal_pairs`, or its name) scored for every row.
    Returns one row per ablation (and a ``dense`` row first): ``selection, seed, side, fraction,
    n_neurons, per_layer`` (neurons in the widest layer), ``perplexity, ppl_low, ppl_high`` (95%
    bootstrap interval over held-out windows), ``accuracy`` and ``accuracy_<phenomenon>`` when pairs
    are given, the matched columns, ``seconds``. :func:`study_selections` gives each row's neurons back
    from ``scores``. The model is unchanged afterwards (also after Ctrl-C). ``nll_fn`` (default
    :func:`ablated_nll`, same arguments) computes each held-out pass; a cached one lets the surprisal
    and the depth profile reuse the study's passes.

    Paired comparisons (:mod:`wnb.statistics`; the same held-out windows, resampled together, and the same
    minimal pairs, so no extra model pass), 95% percentile bootstrap intervals, seed 0:

    - every ablation row against dense (this row − dense): ``delta_perplexity, delta_ppl_low,
      delta_ppl_high`` (``exp(mean NLL)`` difference), ``delta_nll, delta_nll_low, delta_nll_high`` (nats per
      token) and ``nll_verdict`` (that the ablation raises NLL: holds / reversed / not observed / inconclusive,
      :func:`wnb.statistics.verdict` against ``minimum_nll``);
    - every control row against the Wasserstein ablation (the Wasserstein row − this row): the same
      columns prefixed ``w_`` (``w_delta_perplexity, w_delta_ppl_low, …, w_nll_verdict``: that ablating the
      Wasserstein neurons raises NLL more than this control). These intervals are over windows, for one
      draw of the control; the spread over draws is in the seed columns;
    - with pairs, ``acc_low, acc_high`` and ``acc_low_<phenomenon>, acc_high_<phenomenon>`` (Wilson) on
      every row; ``delta_accuracy, delta_acc_low, delta_acc_high`` (the Bonett–Price interval of a paired
      difference of proportions, :func:`wnb.statistics.accuracy_difference`), ``mcnemar_p`` (McNemar's
      test against dense on the same pairs) and ``acc_verdict`` (that the ablation lowers accuracy,
      against ``minimum_accuracy``); on control rows ``w_delta_accuracy, w_delta_acc_low, w_delta_acc_high,
      w_mcnemar_p, w_acc_verdict`` (the Wasserstein ablation against this control);
    - on the rows of each control (the per-seed rows are kept), ``n_seeds`` and ``<column>_seeds_mean,
      _sd, _min, _max`` over its seeds of ``perplexity, w_delta_perplexity`` (and, with pairs,
      ``acc_seeds_*`` of the accuracy and ``w_delta_accuracy_seeds_*``; sd is NaN for one seed).

    Every column that starts with ``accuracy`` is the overall accuracy or a phenomenon's (the plots read
    them so); the accuracy's other columns start with ``acc_``.
    """
    controls, seeds, matched_seeds = _check_study(side, fraction, controls, seeds, matched_seeds, exclude, tolerance,
                                                  minimum_nll, minimum_accuracy)
    held_out, pairs, scores = _prepare(lm, calib, held_out, layers, fraction, side, pairs, scores, batch_size,
                                       progress)
    wasserstein = select_wasserstein(scores, fraction)
    counts = {name: idx.numel() for name, idx in wasserstein.items()}
    plan = [("dense", None), ("wasserstein", None)]
    plan += [("random", s) for s in seeds if "random" in controls]
    plan += [("matched", s) for s in matched_seeds if "matched" in controls]
    opts = dict(side=side, pairs=pairs, batch_size=batch_size, pair_batch_size=pair_batch_size,
                progress=progress, seed=0, nll_fn=nll_fn or ablated_nll)
    rows, raws = [], []
    with tqdm(plan, desc="sign ablation study", disable=not progress, leave=False) as bar:
        for selection, seed in bar:
            bar.set_postfix_str(selection if seed is None else f"{selection} {seed}")
            extra = {}
            if selection == "dense":
                chosen = {}
            elif selection == "wasserstein":
                chosen = wasserstein
            elif selection == "random":
                chosen = select_random(scores, counts, seed)
            else:
                target = next(r["perplexity"] for r in rows if r["selection"] == "wasserstein")
                chosen, extra = _match(lm, held_out, scores, target, seed, exclude, tolerance, opts)
            row = {"selection": selection, "seed": seed, "side": side, "fraction": fraction,
                   "n_neurons": _count(chosen), "per_layer": max((i.numel() for i in chosen.values()), default=0)}
            measured, raw = _evaluate(lm, held_out, chosen, nll=extra.pop("nll", None), **opts)
            row.update(measured)
            if extra:
                row["seconds"] += extra.pop("search_seconds")
                row.update(extra)
            rows.append(row)
            raws.append(raw)
    table = _compare(rows, raws, minimum_nll, minimum_accuracy)
    table["seed"] = table["seed"].astype("Int64")
    return table


def _check_study(side, fraction, controls, seeds, matched_seeds, exclude, tolerance, minimum_nll, minimum_accuracy):
    """:func:`sign_ablation_study`'s own arguments, before any work; returns (controls, seeds, matched_seeds)."""
    check_side(side)
    _check_fraction(fraction)
    controls = (controls,) if isinstance(controls, str) else tuple(controls)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise WnbError(f"unknown controls {unknown}; choose from {', '.join(CONTROLS)}")
    seeds = [int(s) for s in seeds]
    if controls and not seeds:
        raise WnbError("seeds is empty; the controls need at least one seed")
    matched_seeds = seeds[:1] if matched_seeds is None else [int(s) for s in matched_seeds]
    if not 0 < tolerance < 1:
        raise WnbError(f"tolerance must be in (0, 1) (got {tolerance})")
    for name, value in (("minimum_nll", minimum_nll), ("minimum_accuracy", minimum_accuracy)):
        if not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise WnbError(f"{name} must be a positive number, the smallest effect the verdicts look for "
                           f"(got {value!r})")
    if not fraction < exclude < 1:
        raise WnbError(f"exclude must be in (fraction, 1) = ({fraction}, 1) so that the matched control "
                       f"is disjoint from the Wasserstein neurons (got {exclude})")
    return controls, seeds, matched_seeds


def _bisect(ppl, widest: int, target: float, tolerance: float) -> tuple[int, bool]:
    """The count in [0, widest] whose ``ppl(count)`` is within ``tolerance`` of ``target``, by bisection
    (assuming perplexity rises with the count; ``ppl(0)`` is the dense model's). Returns (count,
    reached): ``reached`` is False when even ``ppl(widest)`` stays below the target band, and the count
    is then ``widest``; when no count gets within the band, the closest one evaluated."""
    seen: dict[int, float] = {}

    def at(count: int) -> float:
        if count not in seen:
            seen[count] = ppl(count)
        return seen[count]

    if at(widest) < target * (1 - tolerance):
        return widest, False
    lo, hi = 0, widest
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if abs(at(mid) / target - 1) <= tolerance:
            return mid, True
        if at(mid) < target:
            lo = mid
        else:
            hi = mid
    return min(seen, key=lambda c: (abs(seen[c] / target - 1), c)), True


def _match(lm, held_out, scores, target, seed, exclude, tolerance, opts):
    """Bisection over the per-layer count of the matched control; returns (selection, report)."""
    start = time.perf_counter()
    candidates = matched_candidates(scores, exclude, seed)
    widest = max(c.numel() for c in candidates.values())
    cache: dict[int, float] = {}
    nlls: dict[int, torch.Tensor] = {}

    def ppl(count: int) -> float:
        if count not in cache:
            nlls[count] = opts["nll_fn"](lm, held_out, select_matched(candidates, count), opts["side"],
                                         batch_size=opts["batch_size"], progress=opts["progress"])
            cache[count] = math.exp(nlls[count].double().mean().item())
        return cache[count]

    best, reached = _bisect(ppl, widest, target, tolerance)
    within = abs(cache[best] / target - 1) <= tolerance
    total = _count(candidates)
    if not reached:
        note = (f"all {total} candidates (outside the top {exclude:.0%} by WD) reach perplexity only "
                f"{cache[widest]:.4g} < target {target:.4g}")
    elif within:
        note = f"within {tolerance * 100:g}% of the Wasserstein ablation's perplexity"
    else:
        note = (f"closest count found: perplexity {cache[best]:.4g} vs target {target:.4g} "
                f"(perplexity does not rise smoothly enough with the count to get within {tolerance * 100:g}%)")
    return select_matched(candidates, best), {
        "target_perplexity": target, "within_tolerance": within, "evaluations": len(cache),
        "candidates": total, "note": note, "search_seconds": time.perf_counter() - start, "nll": nlls[best]}


def study_selections(table: pd.DataFrame, scores: Mapping, exclude: float = MATCHED_EXCLUDE,
                     fraction: float | None = None) -> dict[tuple[str, int | None], dict[str, torch.Tensor]]:
    """The neurons each row of a :func:`sign_ablation_study` table ablated, rebuilt from the same
    ``scores`` (and ``exclude``; ``fraction`` from the table's column unless given):
    ``{(selection, seed): {layer: indices}}`` (seed None for dense and wasserstein)."""
    out = {}
    for row in table.itertuples(index=False):
        seed = None if pd.isna(row.seed) else int(row.seed)
        if row.selection == "dense":
            chosen = {}
        else:
            share = fraction if fraction is not None else getattr(row, "fraction", None)
            if share is None:
                raise WnbError("the table has no fraction column; pass fraction= (the study's)")
            wasserstein = select_wasserstein(scores, float(share))
            if row.selection == "wasserstein":
                chosen = wasserstein
            elif row.selection == "random":
                chosen = select_random(scores, {n: i.numel() for n, i in wasserstein.items()}, seed)
            elif row.selection == "matched":
                chosen = select_matched(matched_candidates(scores, exclude, seed), int(row.per_layer))
            else:
                raise WnbError(f"unknown selection {row.selection!r} in the table")
        if _count(chosen) != row.n_neurons:
            raise WnbError(f"the {row.selection} row has {row.n_neurons} neurons but these scores give "
                           f"{_count(chosen)}: pass the scores (and exclude) the study used")
        out[(row.selection, seed)] = chosen
    return out


def selection_table(selections: Mapping, scores: Mapping | None = None) -> pd.DataFrame:
    """Long form of ``{(selection, seed): {layer: indices}}`` (or one ``{layer: indices}``): one row per
    ablated neuron, ``selection, seed, layer, neuron`` and, with ``scores``, its ``wd`` and ``wd_rank``
    in its layer (1 = highest)."""
    if selections and all(isinstance(k, str) for k in selections):
        selections = {("selection", None): selections}
    rows = []
    ranks = {}
    for (selection, seed), chosen in selections.items():
        for layer, idx in chosen.items():
            for neuron in torch.as_tensor(idx).tolist():
                row = {"selection": selection, "seed": seed, "layer": layer, "neuron": int(neuron)}
                if scores is not None:
                    if layer not in ranks:
                        wd = torch.as_tensor(scores[layer]).double()
                        order = torch.argsort(torch.nan_to_num(wd, nan=-math.inf), descending=True, stable=True)
                        ranks[layer] = torch.empty_like(order)
                        ranks[layer][order] = torch.arange(1, wd.numel() + 1)
                    row["wd"] = float(torch.as_tensor(scores[layer])[neuron])
                    row["wd_rank"] = int(ranks[layer][neuron])
                rows.append(row)
    table = pd.DataFrame(rows, columns=["selection", "seed", "layer", "neuron"] + (["wd", "wd_rank"] if scores else []))
    table["seed"] = table["seed"].astype("Int64")
    return table


def _span(row, column: str, stem: str, scale: float = 1.0, digits: int = 2) -> str:
    """``+x [+low, +high]`` of a paired difference column and its ``<stem>_low`` / ``<stem>_high`` interval."""
    return (f"{scale * row[column]:+.{digits}f} [{scale * row[stem + '_low']:+.{digits}f}, "
            f"{scale * row[stem + '_high']:+.{digits}f}]")


def study_words(study: pd.DataFrame, minimum_nll: float = MINIMUM_DELTA_NLL,
                minimum_accuracy: float = MINIMUM_DELTA_ACCURACY) -> str:
    """A :func:`sign_ablation_study` table in words, for the command's last line and the app's summary: every
    comparison as a paired difference with its 95% interval, and its verdict worded by that interval
    (:func:`wnb.statistics.wording`; pass the study's minimum effects if they were not the defaults)."""
    from wnb.statistics import wording

    def says(row, prefix: str, what: str = "nll") -> str:
        short = prefix.removesuffix("delta")
        if what == "nll":
            return wording(row[f"{short}nll_verdict"], row[f"{prefix}_nll_low"], row[f"{prefix}_nll_high"],
                           minimum=minimum_nll)
        return wording(row[f"{short}acc_verdict"], 100 * row[f"{prefix}_acc_low"], 100 * row[f"{prefix}_acc_high"],
                       minimum=100 * minimum_accuracy) + (" points" if row[f"{short}acc_verdict"] == "inconclusive"
                                                          else "")

    dense, w = (study[study["selection"] == s].iloc[0] for s in ("dense", "wasserstein"))
    rand, matched = (study[study["selection"] == s] for s in ("random", "matched"))
    parts = [f"perplexity {dense['perplexity']:.2f} [{dense['ppl_low']:.2f}, {dense['ppl_high']:.2f}] dense, "
             f"{w['perplexity']:.2f} with the {w.get('side', 'negative')} side of {int(w['n_neurons']):,} "
             f"Wasserstein neurons: Δ "
             f"{_span(w, 'delta_perplexity', 'delta_ppl')}, Δ NLL/token {_span(w, 'delta_nll', 'delta_nll', digits=3)}"
             f" ({says(w, 'delta')})"]
    if len(rand):
        r = rand.iloc[0]
        over = (f"over {int(r['n_seeds'])} seeds: Δ perplexity mean {r['w_delta_perplexity_seeds_mean']:+.2f} (sd "
                f"{r['w_delta_perplexity_seeds_sd']:.2f}, range {r['w_delta_perplexity_seeds_min']:+.2f} to "
                f"{r['w_delta_perplexity_seeds_max']:+.2f}); per seed" if len(rand) > 1 else
                f"(one seed): Δ perplexity {_span(r, 'w_delta_perplexity', 'w_delta_ppl')}")
        parts.append(f"Wasserstein − random {over}: {', '.join(says(row, 'w_delta') for _, row in rand.iterrows())}")
    if len(matched):
        m = matched.iloc[0]
        parts.append(f"Wasserstein − matched ({int(m['n_neurons']):,} neurons): Δ perplexity "
                     f"{_span(m, 'w_delta_perplexity', 'w_delta_ppl')}")
    if "accuracy" in study.columns:
        text = (f"minimal pairs {dense['accuracy']:.1%} [{dense['acc_low']:.1%}, {dense['acc_high']:.1%}] dense, "
                f"{w['accuracy']:.1%} Wasserstein: Δ {_span(w, 'delta_accuracy', 'delta_acc', 100, 1)} points, "
                f"McNemar p {w['mcnemar_p']:.2g} ({says(w, 'delta', 'accuracy')})")
        if len(matched):
            text += (f"; Wasserstein − matched Δ {_span(m, 'w_delta_accuracy', 'w_delta_acc', 100, 1)} points, "
                     f"McNemar p {m['w_mcnemar_p']:.2g} ({says(m, 'w_delta', 'accuracy')})")
        parts.append(text)
    return "; ".join(parts)


# ---------------------------------------------------------------- depth profile

def sign_ablation_depth(lm, calib, held_out, layers=None, fraction: float = 0.01, side: str = "negative",
                        pairs=None, progress: bool = True, scores: Mapping | None = None,
                        cumulative: bool = True, batch_size: int = 8, pair_batch_size: int = 32,
                        nll_fn=None) -> pd.DataFrame:
    """The Wasserstein ablation one layer at a time (``mode="layer"``) and over layers 0..l
    (``mode="cumulative"``), against the dense model (``mode="dense"``, first row).

    Columns: ``mode, block, layer, n_neurons, perplexity, ppl_low, ppl_high, delta_perplexity,
    delta_ppl_low, delta_ppl_high`` (the paired bootstrap interval over the same windows) and,
    with ``pairs``, ``accuracy, delta_accuracy, accuracy_<phenomenon>``, and ``seconds``. The last
    cumulative row is the whole :func:`sign_ablation_study` Wasserstein ablation. ``nll_fn`` as there.
    """
    from wnb.model.architectures import block_of
    from wnb.statistics import perplexity_difference

    held_out, pairs, scores = _prepare(lm, calib, held_out, layers, fraction, side, pairs, scores, batch_size,
                                       progress)
    wasserstein = select_wasserstein(scores, fraction)
    names = list(wasserstein)
    plan = [("dense", None, {})]
    plan += [("layer", name, {name: wasserstein[name]}) for name in names]
    if cumulative:
        plan += [("cumulative", name, {n: wasserstein[n] for n in names[:i + 1]}) for i, name in enumerate(names)]
    opts = dict(side=side, pairs=pairs, batch_size=batch_size, pair_batch_size=pair_batch_size,
                progress=progress, seed=0, nll_fn=nll_fn or ablated_nll)
    rows, nlls = [], []
    with tqdm(plan, desc="depth profile", disable=not progress, leave=False) as bar:
        for mode, name, chosen in bar:
            row = {"mode": mode, "block": block_of(lm, name) if name else None, "layer": name,
                   "n_neurons": _count(chosen)}
            measured, raw = _evaluate(lm, held_out, chosen, **opts)
            rows.append({**row, **measured})
            nlls.append(raw["nll"])
    table = pd.DataFrame(rows)
    dense = table.iloc[0]
    table.insert(7, "delta_perplexity", table["perplexity"] - dense["perplexity"])
    paired = [perplexity_difference(nlls[0], nll) for nll in nlls]  # over the same windows
    table.insert(8, "delta_ppl_low", [d.low for d in paired])
    table.insert(9, "delta_ppl_high", [d.high for d in paired])
    if pairs is not None:
        table.insert(table.columns.get_loc("accuracy") + 1, "delta_accuracy", table["accuracy"] - dense["accuracy"])
    table["block"] = table["block"].astype("Int64")
    return table
