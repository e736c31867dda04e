"""The depth profile of the sign ablation: the Wasserstein ablation one layer at a time and over layers
0..l, against the dense model, by perplexity and — the follow-up's depth claims are about grammar (early
layers most sensitive) — by minimal-pair accuracy per phenomenon, each as a paired difference to dense."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from tqdm.auto import tqdm

from wnb.core.inference import accuracy_difference, mcnemar, perplexity_difference
from wnb.experiments.pair_sets import check_score
from wnb.experiments.sign_ablation import ablated_nll, evaluate_selection, prepare_study
from wnb.model.architectures import block_of
from wnb.scoring.selection import count_per_layer, select_wasserstein


def sign_ablation_depth(lm, calib, held_out, layers=None, fraction: float = 0.01, side: str = "negative",
                        pairs=None, progress: bool = True, scores: Mapping | None = None,
                        cumulative: bool = True, batch_size: int = 8, pair_batch_size: int = 32,
                        nll_fn=None, skip_first: int = 0, pair_score: str | None = None,
                        prefix: str | None = None) -> pd.DataFrame:
    """The Wasserstein ablation one layer at a time (``mode="layer"``) and over layers 0..l
    (``mode="cumulative"``), against the dense model (``mode="dense"``, first row); WD as in
    :func:`wnb.sign_ablation_study` (over ``calib`` with ``skip_first``, or ``scores``).

    Columns: ``mode, block, layer, n_neurons, perplexity, ppl_low, ppl_high, delta_perplexity,
    delta_ppl_low, delta_ppl_high`` (the paired bootstrap interval over the same windows) and, with
    ``pairs`` (scored by ``pair_score`` after ``prefix``, as in the study), ``accuracy, delta_accuracy,
    delta_acc_low, delta_acc_high`` (paired, Bonett–Price), ``mcnemar_p`` (against dense on the same
    pairs), ``accuracy_<phenomenon>`` and ``delta_accuracy_<phenomenon>`` for every phenomenon,
    ``pair_score, scoring_rule``; and ``seconds``. The last cumulative row is the whole study's
    Wasserstein ablation. ``nll_fn`` as there.
    """
    check_score(pair_score)
    held_out, pairs, scores, _ = prepare_study(lm, calib, held_out, layers, fraction, side, pairs, scores,
                                               batch_size, progress, skip_first=skip_first)
    wasserstein = select_wasserstein(scores, fraction)
    names = list(wasserstein)
    plan = [("dense", None, {})]
    plan += [("layer", name, {name: wasserstein[name]}) for name in names]
    if cumulative:
        plan += [("cumulative", name, {n: wasserstein[n] for n in names[:i + 1]}) for i, name in enumerate(names)]
    opts = dict(side=side, pairs=pairs, batch_size=batch_size, pair_batch_size=pair_batch_size,
                progress=progress, seed=0, nll_fn=nll_fn or ablated_nll, pair_score=pair_score, prefix=prefix)
    rows, raws = [], []
    with tqdm(plan, desc="depth profile", disable=not progress, leave=False) as bar:
        for mode, name, chosen in bar:
            row = {"mode": mode, "block": block_of(lm, name) if name else None, "layer": name,
                   "n_neurons": count_per_layer(chosen)}
            measured, raw = evaluate_selection(lm, held_out, chosen, **opts)
            rows.append({**row, **measured})
            raws.append(raw)
    table = _paired(pd.DataFrame(rows), raws)
    table["block"] = table["block"].astype("Int64")
    return table


def _paired(table: pd.DataFrame, raws: list[dict]) -> pd.DataFrame:
    """Every row against dense (row 0) over the same windows and pairs."""
    dense = table.iloc[0]
    table.insert(7, "delta_perplexity", table["perplexity"] - dense["perplexity"])
    paired = [perplexity_difference(raws[0]["nll"], raw["nll"]) for raw in raws]
    table.insert(8, "delta_ppl_low", [d.low for d in paired])
    table.insert(9, "delta_ppl_high", [d.high for d in paired])
    if raws[0]["scores"] is None:
        return table
    right = [raw["scores"]["correct"].to_numpy() for raw in raws]
    acc = [accuracy_difference(right[0], r) for r in right]
    at = table.columns.get_loc("accuracy") + 1
    for offset, (column, values) in enumerate((
            ("delta_accuracy", table["accuracy"] - dense["accuracy"]), ("delta_acc_low", [d.low for d in acc]),
            ("delta_acc_high", [d.high for d in acc]), ("mcnemar_p", [mcnemar(right[0], r).p for r in right]))):
        table.insert(at + offset, column, values)
    for column in [c for c in table.columns if c.startswith("accuracy_")]:
        table[f"delta_{column}"] = table[column] - dense[column]
    return table
