"""The follow-up's double dissociation (Kong et al., ICLR 2026; PAPER.md §8): ablating the Wasserstein neurons'
negative side hurts grammar more than a perplexity-matched control does, and the control hurts
non-grammatical tasks more.

:func:`double_dissociation` scores, for every selection of a sign-ablation study (dense included), grammar
minimal pairs (default: the TSE constructions) and knowledge items (facts, sums, counts; both sentences
grammatical: :func:`wnb.knowledge_pairs`) item by item, so every comparison is paired: an accuracy
difference with its Bonett–Price interval and McNemar's test on the same items. Standard lm-eval tasks
(``tasks=``, e.g. ``["arc_easy", "hellaswag"]`` where a network exists; ``"wnb_knowledge"`` offline) run
through :func:`wnb.evaluate_tasks` on the ablated model; lm-eval gives an accuracy and its standard error,
not the items, so their differences get the unpaired normal interval (wider than a paired one).

    study = wnb.sign_ablation_study(lm, calib, held_out, scores=scores)
    table = double_dissociation(lm, wnb.study_selections(study, scores))
    dissociation_summary(table)      # per control: grammar and knowledge, Wasserstein − control, verdicts
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from wnb.compression.patches import check_intervention, intervened
from wnb.core.inference import (
    LEVEL,
    accuracy_difference,
    accuracy_interval,
    mcnemar,
    verdict,
    wording,
)
from wnb.errors import WnbError
from wnb.experiments.interventions import measure
from wnb.experiments.minimal_pairs import check_pairs, minimal_pairs
from wnb.experiments.sign_statistics import MINIMUM_DELTA_ACCURACY
from wnb.experiments.tasks import evaluate_tasks
from wnb.model.lm import require_local

KINDS = ("grammar", "knowledge", "task")
# the direction of Wasserstein − control the dissociation claims on each kind (accuracy)
CLAIMED = {"grammar": "less", "knowledge": "greater", "task": "greater"}


def _selections(selections: Mapping) -> list[tuple[str, int | None, dict]]:
    """``[(selection, seed, {layer: indices})]``, dense first (added when missing), from
    ``{(selection, seed): {...}}`` (:func:`wnb.study_selections`) or ``{name: {...}}``."""
    if not isinstance(selections, Mapping) or not selections:
        raise WnbError("selections must map a selection ((name, seed) or a name) to {layer: neuron indices}, e.g. "
                       "wnb.study_selections(study, scores)")
    out = []
    for key, chosen in selections.items():
        name, seed = key if isinstance(key, tuple) else (key, None)
        if not isinstance(name, str) or not isinstance(chosen, Mapping):
            raise WnbError(f"selection {key!r} must be named and map layers to neuron indices")
        out.append((name, None if seed is None or pd.isna(seed) else int(seed), dict(chosen)))
    if "wasserstein" not in [n for n, _, _ in out]:
        raise WnbError("selections has no 'wasserstein' selection to compare the controls with")
    if "dense" not in [n for n, _, _ in out]:
        out.insert(0, ("dense", None, {}))
    return sorted(out, key=lambda s: s[0] != "dense")


def _sets(grammar, knowledge, n: int | None, seed: int) -> dict[str, tuple[str, list[dict]]]:
    """``{set name: (kind, pairs)}``: the grammar pairs and the knowledge items (a name or a list each)."""
    out = {}
    for kind, given in (("grammar", grammar), ("knowledge", knowledge)):
        if given is None:
            continue
        if isinstance(given, str):
            out[given] = (kind, minimal_pairs(given, n=n, seed=seed))
        else:
            out[kind] = (kind, check_pairs(given))
    return out


def _pair_rows(name: str, kind: str, scores: dict, reference: tuple, level: float) -> list[dict]:
    """One row per selection of one pair set: accuracy (Wilson), Δ to dense and Wasserstein − this control
    (Bonett–Price, paired) with McNemar's p."""
    dense = scores[("dense", None)]["correct"].to_numpy()
    w = scores[reference]["correct"].to_numpy()
    rows = []
    for (selection, seed), table in scores.items():
        right = table["correct"].to_numpy()
        acc = accuracy_interval(right, level=level)
        row = {"selection": selection, "seed": seed, "kind": kind, "set": name, "n": acc.n, "accuracy": acc.accuracy,
               "acc_low": acc.low, "acc_high": acc.high, "interval": "paired (Bonett-Price), McNemar"}
        if selection != "dense":
            d = accuracy_difference(dense, right, level)
            row.update(delta_accuracy=d.delta, delta_acc_low=d.low, delta_acc_high=d.high,
                       mcnemar_p=mcnemar(dense, right).p)
        if selection not in ("dense", "wasserstein"):
            d = accuracy_difference(right, w, level)
            row.update(w_delta_accuracy=d.delta, w_delta_acc_low=d.low, w_delta_acc_high=d.high,
                       w_mcnemar_p=mcnemar(right, w).p)
        rows.append(row)
    return rows


def _z(level: float) -> float:
    return float(stats.norm.ppf(1 - (1 - level) / 2))


def _unpaired(a: float, se_a: float, b: float, se_b: float, level: float) -> tuple[float, float, float]:
    """``b − a`` and its normal interval ``± z·√(se_a² + se_b²)`` (NaN bounds when a standard error is missing)."""
    half = _z(level) * math.sqrt(se_a ** 2 + se_b ** 2)
    return b - a, b - a - half, b - a + half


def _acc(table: pd.DataFrame, task: str) -> tuple[float, float, object]:
    part = table[(table["task"] == task) & (table["metric"] == "acc")]
    return float(part["value"].iloc[0]), float(part["stderr"].iloc[0]), part["n"].iloc[0]


def _task_rows(results: dict, reference: tuple, level: float) -> list[dict]:
    """One row per selection and lm-eval task (its ``acc``): the accuracy ± z·stderr, and the differences to
    dense and Wasserstein − this control with unpaired normal intervals."""
    rows = []
    dense = results[("dense", None)]
    for task in dict.fromkeys(dense.loc[dense["metric"] == "acc", "task"]):
        d_v, d_se, _ = _acc(dense, task)
        w_v, w_se, _ = _acc(results[reference], task)
        for (selection, seed), table in results.items():
            value, se, n = _acc(table, task)
            half = _z(level) * se
            row = {"selection": selection, "seed": seed, "kind": "task", "set": task, "n": n, "accuracy": value,
                   "acc_low": value - half, "acc_high": value + half, "interval": "unpaired normal (lm-eval stderr)"}
            if selection != "dense":
                row.update(zip(("delta_accuracy", "delta_acc_low", "delta_acc_high"),
                               _unpaired(d_v, d_se, value, se, level)))
            if selection not in ("dense", "wasserstein"):
                row.update(zip(("w_delta_accuracy", "w_delta_acc_low", "w_delta_acc_high"),
                               _unpaired(value, se, w_v, w_se, level)))
            rows.append(row)
    return rows


def double_dissociation(lm, selections: Mapping, grammar="tse", knowledge="knowledge", n: int | None = 20,
                        seed: int = 0, tasks=(), limit=None, include_path=None, intervention: str = "negative",
                        score: str = "sum", batch_size: int = 32, task_batch_size: int = 8, level: float = LEVEL,
                        minimum_accuracy: float = MINIMUM_DELTA_ACCURACY, progress: bool = True) -> pd.DataFrame:
    """Grammar and non-grammatical accuracy of the model with ``intervention`` (default: the negative-side
    clamp) on each of ``selections`` (``{(selection, seed): {layer: indices}}`` from :func:`wnb.study_selections`,
    or ``{name: {...}}``; it needs a ``"wasserstein"`` one, and gets a ``"dense"`` one if missing).

    ``grammar`` and ``knowledge``: names for :func:`wnb.experiments.minimal_pairs` (``n`` per phenomenon,
    ``seed``) or lists of pairs; None leaves one out. ``tasks``: lm-eval tasks run through
    :func:`wnb.evaluate_tasks` (``limit``, ``include_path``, ``seed``; their ``acc``), e.g. ``"wnb_knowledge"``
    offline or standard tasks where a network exists.

    One row per selection and set: ``selection, seed, kind`` (grammar, knowledge, task), ``set, n,
    accuracy, acc_low, acc_high`` (Wilson; tasks ± z·stderr), ``delta_accuracy, delta_acc_low, delta_acc_high,
    mcnemar_p`` against dense, on each control ``w_delta_accuracy, w_delta_acc_low, w_delta_acc_high,
    w_mcnemar_p`` (Wasserstein − this control) and ``w_verdict`` (what that interval says of the claim: below 0
    on grammar, above 0 elsewhere, against ``minimum_accuracy``), and ``interval`` (paired, or unpaired for
    lm-eval's tasks, which give no items). ``attrs``: the intervention and the scoring. See
    :func:`dissociation_summary`.
    """
    require_local(lm, "the double dissociation")
    check_intervention(intervention)
    chosen = _selections(selections)
    sets = _sets(grammar, knowledge, n, seed)
    task_names = [tasks] if isinstance(tasks, str) else list(tasks or ())
    if not sets and not task_names:
        raise WnbError("nothing to score: give grammar pairs, knowledge items or lm-eval tasks")
    if lm.tokenizer is None:
        raise WnbError(f"{lm.name} has no tokenizer; minimal pairs and tasks need one")
    reference = next((name, s) for name, s, _ in chosen if name == "wasserstein")
    scores: dict[str, dict] = {name: {} for name in sets}
    results: dict = {}
    for name, s, neurons in tqdm(chosen, desc="double dissociation", disable=not progress, leave=False):
        for set_name, (_, pairs) in sets.items():
            scores[set_name][(name, s)] = measure(lm, None, neurons, intervention, pairs, pair_batch_size=batch_size,
                                                  progress=progress, score=score)[1]["scores"]
        if task_names:
            with intervened(lm, neurons, intervention):
                results[(name, s)] = evaluate_tasks(lm, task_names, limit=limit, batch_size=task_batch_size,
                                                    include_path=include_path, seed=seed)
    rows = [r for set_name, (kind, _) in sets.items() for r in _pair_rows(set_name, kind, scores[set_name], reference, level)]
    if results:
        rows += _task_rows(results, reference, level)
    table = pd.DataFrame(rows)
    table["seed"] = table["seed"].astype("Int64")
    table["w_verdict"] = [verdict(r.w_delta_acc_low, r.w_delta_acc_high, CLAIMED[r.kind], minimum=minimum_accuracy)
                          if r.selection not in ("dense", "wasserstein") and np.isfinite(r.w_delta_acc_low) else None
                          for r in table.itertuples()]
    table.attrs.update(intervention=intervention, score=score, minimum_accuracy=minimum_accuracy)
    return table


def dissociation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per control (selection and seed) of a :func:`double_dissociation` table and per kind: the mean over
    its sets of Wasserstein − control (``w_delta_accuracy``), the sets whose verdict holds, and ``words``;
    ``dissociation`` is ``"holds"`` for a control when the Wasserstein ablation is worse on some grammar set
    and better on some non-grammatical set, each by its interval, and no set says the reverse."""
    controls = table[~table["selection"].isin(["dense", "wasserstein"])]
    rows = []
    for (selection, seed), part in controls.groupby(["selection", "seed"], sort=False, dropna=False):
        row = {"selection": selection, "seed": seed}
        for kind in KINDS:
            mine = part[part["kind"] == kind]
            if mine.empty:
                continue
            row[f"{kind}_w_delta"] = float(mine["w_delta_accuracy"].mean())
            row[f"{kind}_holds"] = f"{int((mine['w_verdict'] == 'holds').sum())} of {len(mine)}"
            row[f"{kind}_words"] = "; ".join(
                f"{r.set}: {wording(r.w_verdict, 100 * r.w_delta_acc_low, 100 * r.w_delta_acc_high)}"
                for r in mine.itertuples() if r.w_verdict is not None)
        grammar = part[part["kind"] == "grammar"]["w_verdict"]
        other = part[part["kind"] != "grammar"]["w_verdict"]
        both = (grammar == "holds").any() and (other == "holds").any()
        reversed_ = (grammar == "reversed").any() or (other == "reversed").any()
        row["dissociation"] = "holds" if both and not reversed_ else "reversed somewhere" if reversed_ else \
            "not shown at this sample size"
        rows.append(row)
    return pd.DataFrame(rows)
