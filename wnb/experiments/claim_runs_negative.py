"""The follow-up's claims (N1-N6) on a model, as :mod:`wnb.experiments.claim_runs` does the first paper's:
the sign-ablation study with its controls and statistics (:func:`wnb.sign_ablation_study`), the knowledge
items, Δ surprisal by token class and the depth profile, all sharing their held-out passes."""
from __future__ import annotations

import numpy as np
import pandas as pd

from wnb.errors import WnbError
from wnb.experiments.claim_runs import first_outputs, first_scores
from wnb.experiments.claim_statistics import (
    below_zero_share,
    class_difference,
    early_late,
    judge,
    parts_verdict,
    share_excess,
)
from wnb.experiments.claims import Claim, NotRun
from wnb.experiments.knowledge import knowledge_pairs
from wnb.experiments.minimal_pairs import minimal_pairs
from wnb.experiments.sign_ablation import sign_ablation_study
from wnb.experiments.sign_depth import sign_ablation_depth
from wnb.experiments.surprisal import token_surprisal
from wnb.model.architectures import block_of
from wnb.scoring.selection import select_wasserstein

FRACTION = 0.01  # the follow-up's Wasserstein neurons: the top 1% of each layer
VALUE_COLUMNS = {"nll": "w_delta_nll", "acc": "w_delta_accuracy"}  # the study's W − control columns


def run_n1(ctx, entry: Claim) -> dict:
    outputs, scores = first_outputs(ctx), first_scores(ctx)
    rows, shares = [], []
    for name, y in outputs.items():
        part = below_zero_share(y, scores[name], FRACTION, seed=ctx.seed)
        shares.append(part.pop("shares"))
        rows.append({"label": f"block {block_of(ctx.lm, name)}", "layer": name, **part})
    pooled = np.concatenate(shares)
    result = share_excess(pooled, seed=ctx.seed)
    out = judge(entry, result["value"], result["low"], result["high"])
    mean = result["value"] + 0.5
    out["ours"] = (f"{mean:.0%} of the Wasserstein neurons' WD lies below y = 0 on average ({pooled.size} neurons, "
                   f"{(pooled > 0.5).mean():.0%} of them with more than half below)")
    return {**out, "detail": pd.DataFrame(rows), "settings": {"fraction": FRACTION}}


def _pairs(ctx, kind: str):
    ctx.require_tokenizer()
    if kind == "knowledge":
        return ctx.once("knowledge_pairs", lambda: knowledge_pairs(n=ctx.plan.knowledge_per_phenomenon, seed=ctx.seed))
    try:
        return ctx.once("grammar_pairs", lambda: minimal_pairs(ctx.plan.pairs, n=ctx.plan.pairs_per_phenomenon,
                                                                seed=ctx.seed))
    except WnbError as exc:
        raise NotRun(f"the {ctx.plan.pairs} minimal pairs are not available: {exc}") from None


CLAIM_CONTROLS = ("random", "matched")  # the controls N2-N4 are stated against (the mirror is in no claim)


def sign_study(ctx, kind: str | None = "grammar") -> pd.DataFrame:
    """The follow-up's study (negative side, top 1% of every first FFN projection; random and matched
    controls), with the grammatical pairs, the knowledge items, or none; held-out passes shared."""
    ctx.require_weights("the sign ablation")
    pairs = None if kind is None else _pairs(ctx, kind)
    seeds = [ctx.seed + i for i in range(ctx.plan.control_seeds)]
    return ctx.once(("sign_study", kind), lambda: sign_ablation_study(
        ctx.lm, None, ctx.held_out, fraction=FRACTION, controls=CLAIM_CONTROLS, seeds=seeds, pairs=pairs,
        scores=first_scores(ctx), batch_size=ctx.batch_size, progress=ctx.progress, nll_fn=ctx.nll))


def _rows(study: pd.DataFrame, selections, stem: str) -> pd.DataFrame:
    part = study[study["selection"].isin(selections)]
    labels = [s if pd.isna(seed) else f"{s} {int(seed)}" for s, seed in zip(part["selection"], part["seed"])]
    return pd.DataFrame({"label": [f"W − {label}" for label in labels],
                         "value": part[VALUE_COLUMNS[stem]].to_numpy(float),
                         "low": part[f"w_delta_{stem}_low"].to_numpy(float),
                         "high": part[f"w_delta_{stem}_high"].to_numpy(float)})


def _pairs_settings(ctx, kind: str) -> dict:
    pairs = _pairs(ctx, kind)
    source = ctx.plan.pairs if kind == "grammar" else "knowledge"
    return {"fraction": FRACTION, "pairs": f"{source}, {len(pairs)} items"}


def run_n2(ctx, entry: Claim) -> dict:
    try:  # the study with the grammatical pairs, which N3 reads too; without them when there are none
        study = sign_study(ctx, "grammar")
    except NotRun:
        study = sign_study(ctx, None)
    detail = _rows(study, ("random",), "nll")
    out = parts_verdict(entry, detail)
    w = study[study["selection"] == "wasserstein"].iloc[0]
    out["ours"] = (f"perplexity {w['perplexity']:.2f} with the ablation vs {study.iloc[0]['perplexity']:.2f} dense; "
                   "W − random Δ perplexity " + ", ".join(
                       f"{r.w_delta_perplexity:+.2f}" for r in study[study['selection'] == 'random'].itertuples())
                   + f"; {out.pop('parts_holding')} seeds hold")
    return {**out, "detail": detail, "table": study, "settings": {"fraction": FRACTION}}


def run_n3(ctx, entry: Claim) -> dict:
    study = sign_study(ctx, "grammar")
    detail = _rows(study, ("random", "matched"), "acc")
    detail["mcnemar_p"] = study[study["selection"].isin(("random", "matched"))]["w_mcnemar_p"].to_numpy(float)
    out = parts_verdict(entry, detail)
    out["ours"] = ("minimal-pair accuracy " + ", ".join(
        f"{(s if pd.isna(seed) else f'{s} {int(seed)}')} {a:.0%}"
        for s, seed, a in zip(study["selection"], study["seed"], study["accuracy"]))
        + f"; {out.pop('parts_holding')} controls hold")
    return {**out, "detail": detail, "table": study, "settings": _pairs_settings(ctx, "grammar")}


def run_n4(ctx, entry: Claim) -> dict:
    study = sign_study(ctx, "knowledge")
    detail = _rows(study, ("matched",), "acc")
    if detail.empty:
        raise NotRun("the matched control is needed")
    out = judge(entry, *detail.iloc[0][["value", "low", "high"]])
    acc = study.set_index("selection")["accuracy"]
    out["ours"] = (f"knowledge accuracy dense {acc['dense']:.0%}, Wasserstein {acc['wasserstein']:.0%}, matched "
                   f"{acc['matched']:.0%}")
    return {**out, "detail": detail, "table": study, "settings": _pairs_settings(ctx, "knowledge")}


def run_n5(ctx, entry: Claim) -> dict:
    ctx.require_weights("the sign ablation")
    ctx.require_tokenizer()
    chosen = select_wasserstein(first_scores(ctx), FRACTION)
    dense = ctx.nll(ctx.lm, ctx.held_out, {}, batch_size=ctx.batch_size, progress=ctx.progress)
    ablated = ctx.nll(ctx.lm, ctx.held_out, chosen, batch_size=ctx.batch_size, progress=ctx.progress)
    table = token_surprisal(ctx.lm, ctx.held_out, chosen, dense_nll=dense, ablated_nll=ablated, progress=ctx.progress)
    result = class_difference(table, seed=ctx.seed)
    out = judge(entry, result["value"], result["low"], result["high"])
    means = table.groupby("group")["delta_nll"].mean()
    detail = pd.DataFrame([{"label": "function − content", **{c: result[c] for c in ("value", "low", "high")}}])
    out["ours"] = ", ".join(f"{g} {means[g]:+.3f}" for g in means.index) + " nats mean Δ NLL per token"
    return {**out, "detail": detail, "settings": {"token classes": "wnb's closed word list"}}


def depth_layers(ctx) -> list[str]:
    layers = ctx.first_layers()
    want = ctx.plan.depth_layers
    if want is None or want >= len(layers):
        return layers
    picks = np.unique(np.linspace(0, len(layers) - 1, max(2, want)).round().astype(int))
    return [layers[i] for i in picks]


def run_n6(ctx, entry: Claim) -> dict:
    ctx.require_weights("the sign ablation")
    pairs = _pairs(ctx, "grammar")
    layers = depth_layers(ctx)
    scores = first_scores(ctx)
    depth = ctx.once("depth", lambda: sign_ablation_depth(
        ctx.lm, None, ctx.held_out, layers=layers, fraction=FRACTION, pairs=pairs,
        scores={n: scores[n] for n in layers}, cumulative=False, batch_size=ctx.batch_size, progress=ctx.progress,
        nll_fn=ctx.nll))
    single = depth[depth["mode"] == "layer"]
    result = early_late(single["block"].to_numpy(int), single["accuracy"].to_numpy(float), len(pairs))
    out = judge(entry, result["value"], result["low"], result["high"])
    dense = float(depth.iloc[0]["accuracy"])
    detail = pd.DataFrame({"label": [f"block {b}" for b in single["block"]],
                           "value": single["delta_accuracy"].to_numpy(float)})
    detail["low"] = detail["high"] = detail["value"]
    detail = pd.concat([pd.DataFrame([{"label": "early − late", **{c: result[c] for c in ("value", "low", "high")}}]),
                        detail], ignore_index=True)
    out["ours"] = (f"dense accuracy {dense:.0%}; Δ accuracy per layer ablated alone: " + ", ".join(
        f"block {b} {d:+.0%}" for b, d in zip(single["block"], single["delta_accuracy"])))
    return {**out, "detail": detail, "table": depth,
            "settings": {"layers": "every block" if len(layers) == len(ctx.first_layers())
                         else f"{len(layers)} of {len(ctx.first_layers())} blocks"}}


RUNS = {"N1": run_n1, "N2": run_n2, "N3": run_n3, "N4": run_n4, "N5": run_n5, "N6": run_n6}
