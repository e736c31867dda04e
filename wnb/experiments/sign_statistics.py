"""The sign-ablation study's statistics: every row's paired differences to dense (Δ perplexity, Δ NLL per
token, Δ accuracy with their intervals and McNemar's p), the Wasserstein ablation against each control,
the spread of the random control over seeds, and the study worded by what its intervals say."""
from __future__ import annotations

import pandas as pd

from wnb.core.inference import (
    accuracy_difference,
    accuracy_interval,
    across_seeds,
    mcnemar,
    nll_difference,
    perplexity_difference,
    verdict,
    wording,
)
from wnb.scoring.selection import CONTROLS, SEEDED_CONTROLS

# The smallest effects the study's verdicts look for (wnb.core.inference.verdict), declared before any data: the
# follow-up states no effect size in these units. 0.01 nats per token is a 1% change of perplexity.
MINIMUM_DELTA_NLL = 0.01
MINIMUM_DELTA_ACCURACY = 0.02  # 2 points of minimal-pair accuracy


def accuracy_columns(scores: pd.DataFrame) -> dict:
    out = {"accuracy": float(scores["correct"].mean())}
    for phenomenon, group in scores.groupby("phenomenon", sort=False):
        out[f"accuracy_{phenomenon}"] = float(group["correct"].mean())
    return out


def _accuracy_intervals(scores: pd.DataFrame) -> dict:
    """Wilson intervals of the accuracy, overall (``acc_low, acc_high``) and per phenomenon
    (``acc_low_<phenomenon>, acc_high_<phenomenon>``; not ``accuracy_*``, which names phenomena)."""

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
    (:func:`wnb.core.inference.across_seeds`) of perplexity, w_delta_perplexity, accuracy (named ``acc``: columns
    that start with ``accuracy`` are the phenomena's) and w_delta_accuracy."""

    names = {"perplexity": "perplexity", "w_delta_perplexity": "w_delta_perplexity", "accuracy": "acc",
             "w_delta_accuracy": "w_delta_accuracy"}
    for control in SEEDED_CONTROLS:
        rows = table["selection"] == control
        if not rows.any():
            continue
        table.loc[rows, "n_seeds"] = int(rows.sum())
        for column in (c for c in names if c in table):
            spread = across_seeds(table.loc[rows, column].to_numpy(float))
            for stat in ("mean", "sd", "min", "max"):
                table.loc[rows, f"{names[column]}_seeds_{stat}"] = getattr(spread, stat)
    return table


def compare_rows(rows: list[dict], raws: list[dict], minimum_nll: float, minimum_accuracy: float) -> pd.DataFrame:
    """The study's table with its paired columns (:func:`wnb.experiments.sign_ablation.sign_ablation_study`);
    ``rows[0]`` is dense.

    Paired comparisons (:mod:`wnb.core.inference`; the same held-out windows, resampled together, and the same
    minimal pairs, so no extra model pass), 95% percentile bootstrap intervals, seed 0:

    - every ablation row against dense (this row − dense): ``delta_perplexity, delta_ppl_low,
      delta_ppl_high`` (``exp(mean NLL)`` difference), ``delta_nll, delta_nll_low, delta_nll_high`` (nats per
      token) and ``nll_verdict`` (that the ablation raises NLL: holds / reversed / not observed / inconclusive,
      :func:`wnb.core.inference.verdict` against ``minimum_nll``);
    - every control row against the Wasserstein ablation (the Wasserstein row − this row): the same
      columns prefixed ``w_`` (``w_delta_perplexity, w_delta_ppl_low, …, w_nll_verdict``: that ablating the
      Wasserstein neurons raises NLL more than this control). These intervals are over windows, for one
      draw of the control; the spread over draws is in the seed columns. On the ``mirror`` row (the same neurons,
      the other side clamped) they are this side's effect − the other side's: the test of sign specificity;
    - with pairs, ``acc_low, acc_high`` and ``acc_low_<phenomenon>, acc_high_<phenomenon>`` (Wilson) on
      every row; ``delta_accuracy, delta_acc_low, delta_acc_high`` (the Bonett–Price interval of a paired
      difference of proportions, :func:`wnb.core.inference.accuracy_difference`), ``mcnemar_p`` (McNemar's
      test against dense on the same pairs) and ``acc_verdict`` (that the ablation lowers accuracy,
      against ``minimum_accuracy``); on control rows ``w_delta_accuracy, w_delta_acc_low, w_delta_acc_high,
      w_mcnemar_p, w_acc_verdict`` (the Wasserstein ablation against this control);
    - on the rows of each control (the per-seed rows are kept), ``n_seeds`` and ``<column>_seeds_mean,
      _sd, _min, _max`` over its seeds of ``perplexity, w_delta_perplexity`` (and, with pairs,
      ``acc_seeds_*`` of the accuracy and ``w_delta_accuracy_seeds_*``; sd is NaN for one seed).

    Every column that starts with ``accuracy`` is the overall accuracy or a phenomenon's (the plots read
    them so); the accuracy's other columns start with ``acc_``.
    """
    w = next((raw for row, raw in zip(rows, raws) if row["selection"] == "wasserstein"), None)
    for row, raw in zip(rows, raws):
        if raw["scores"] is not None:
            row.update(_accuracy_intervals(raw["scores"]))
        if row["selection"] != "dense":
            row.update(_versus(raws[0], raw, "delta", minimum_nll, minimum_accuracy))
        if row["selection"] in CONTROLS and w is not None:
            row.update(_versus(raw, w, "w_delta", minimum_nll, minimum_accuracy))
    return _seed_spread(pd.DataFrame(rows))


def _span(row, column: str, stem: str, scale: float = 1.0, digits: int = 2) -> str:
    """``+x [+low, +high]`` of a paired difference column and its ``<stem>_low`` / ``<stem>_high`` interval."""
    return (f"{scale * row[column]:+.{digits}f} [{scale * row[stem + '_low']:+.{digits}f}, "
            f"{scale * row[stem + '_high']:+.{digits}f}]")


def study_words(study: pd.DataFrame, minimum_nll: float = MINIMUM_DELTA_NLL,
                minimum_accuracy: float = MINIMUM_DELTA_ACCURACY) -> str:
    """A :func:`sign_ablation_study` table in words, for the command's last line and the app's summary: every
    comparison as a paired difference with its 95% interval, and its verdict worded by that interval
    (:func:`wnb.core.inference.wording`; pass the study's minimum effects if they were not the defaults)."""

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
    mirror = study[study["selection"] == "mirror"]
    if len(mirror):
        parts.append(f"{w.get('side', 'negative')} − {mirror.iloc[0]['side']} side of the same neurons (the mirror): Δ "
                     f"perplexity {_span(mirror.iloc[0], 'w_delta_perplexity', 'w_delta_ppl')} "
                     f"({says(mirror.iloc[0], 'w_delta')})")
    for _, t in study[~study["selection"].isin(("dense", "wasserstein", "mirror", *SEEDED_CONTROLS))].iterrows():
        parts.append(f"Wasserstein − {t['selection']} twins: Δ perplexity {_span(t, 'w_delta_perplexity', 'w_delta_ppl')}"
                     f" ({says(t, 'w_delta')})")
    if "accuracy" in study.columns:
        text = (f"minimal pairs {dense['accuracy']:.1%} [{dense['acc_low']:.1%}, {dense['acc_high']:.1%}] dense, "
                f"{w['accuracy']:.1%} Wasserstein: Δ {_span(w, 'delta_accuracy', 'delta_acc', 100, 1)} points, "
                f"McNemar p {w['mcnemar_p']:.2g} ({says(w, 'delta', 'accuracy')})")
        if len(matched):
            text += (f"; Wasserstein − matched Δ {_span(m, 'w_delta_accuracy', 'w_delta_acc', 100, 1)} points, "
                     f"McNemar p {m['w_mcnemar_p']:.2g} ({says(m, 'w_delta', 'accuracy')})")
        if len(mirror):
            r = mirror.iloc[0]
            text += (f"; {w.get('side', 'negative')} − {r['side']} side Δ "
                     f"{_span(r, 'w_delta_accuracy', 'w_delta_acc', 100, 1)} points, McNemar p {r['w_mcnemar_p']:.2g} "
                     f"({says(r, 'w_delta', 'accuracy')})")
        parts.append(text)
    return "; ".join(parts)
