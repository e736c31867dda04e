"""The first paper's claims (W1-W7) on a model: each function takes a
:class:`~wnb.experiments.claim_runner.ClaimContext` and the claim's registry entry and returns its part of
the row: ``value, low, high, verdict, wording, ours, detail`` (``label, value, low, high`` per comparison)
and the ``settings`` that the paper's may differ in. Every computation is an existing wnb function;
the statistics are :mod:`wnb.experiments.claim_statistics`'."""
from __future__ import annotations

import pandas as pd
import torch

from wnb.core.inference import nll_difference, paired_difference
from wnb.data.positions import drop_positions
from wnb.experiments.claim_statistics import (
    correlation,
    group_gaussianisation,
    judge,
    median_change,
    parts_verdict,
    r2_advantage,
    tail_excess,
    tail_ratio,
    window_errors,
)
from wnb.experiments.claims import Claim
from wnb.experiments.layer_study import (
    entanglement_change,
    relative_improvement,
    study_layer,
)
from wnb.experiments.sweeps import ablation
from wnb.model.architectures import block_of, ffn_layers
from wnb.scoring.mapping import mapping_difficulty
from wnb.scoring.selection import CRITERIA
from wnb.scoring.wasserstein import top_neurons, wasserstein_to_gaussian
from wnb.tracing.capture import capture


def first_outputs(ctx) -> dict[str, torch.Tensor]:
    """Outputs of every first FFN projection over the plan's calibration tokens (W1, N1 and the sign studies'
    WD share them)."""
    layers = ctx.first_layers()
    return ctx.once("first_outputs", lambda: {
        name: acts.outputs for name, acts in capture(ctx.lm, layers, ctx.calib, max_tokens=ctx.tokens, inputs=False,
                                                     batch_size=ctx.batch_size, progress=ctx.progress).items()})


def first_scores(ctx) -> dict[str, torch.Tensor]:
    """WD of every neuron of every first FFN projection (the ranking of the Wasserstein neurons)."""
    return ctx.once("first_scores", lambda: {n: wasserstein_to_gaussian(y) for n, y in first_outputs(ctx).items()})


def run_w1(ctx, entry: Claim) -> dict:
    seq_len = ctx.calib.shape[1]
    rows = []
    for name, y in first_outputs(ctx).items():
        kept = drop_positions(y, seq_len, 1)
        part = tail_excess(kept, seq_len - 1, ctx.plan.n_boot, ctx.seed)
        with_first = float(tail_ratio(wasserstein_to_gaussian(y)))
        rows.append({"label": f"block {block_of(ctx.lm, name)}", "layer": name, **part, "ratio_with_first": with_first})
    detail = pd.DataFrame(rows)
    out = parts_verdict(entry, detail)
    out["ours"] = (f"top 3% / median WD without the first token: median {detail['ratio'].median():.2f}x over the "
                   f"layers (Gaussian neurons of the same size: {detail['null'].median():.2f}x); with it "
                   f"{detail['ratio_with_first'].median():.2f}x; {out.pop('parts_holding')} layers hold")
    return {**out, "detail": detail, "settings": {"layers": "the first FFN projection of every block",
                                                  "fraction": 0.03}}


def run_w2(ctx, entry: Claim) -> dict:
    layer = ctx.detail_layer()
    acts = capture(ctx.lm, [layer], ctx.calib, max_tokens=ctx.tokens, batch_size=ctx.batch_size,
                   progress=ctx.progress)[layer]
    wd = wasserstein_to_gaussian(acts.outputs)
    n_pairs = min(ctx.plan.n_pairs, acts.inputs.shape[0] // 2)
    md = torch.stack([mapping_difficulty(acts.inputs, acts.outputs, n_pairs=n_pairs, seed=ctx.seed + s)
                      for s in range(ctx.plan.pair_seeds)])
    result = correlation(wd.numpy(), md.numpy(), seed=ctx.seed)
    out = judge(entry, result["value"], result["low"], result["high"])
    detail = pd.DataFrame([{"label": "Spearman ρ", "value": result["value"], "low": result["low"],
                            "high": result["high"]},
                           {"label": "R²", "value": result["r2"], "low": result["r2_low"], "high": result["r2_high"]}])
    out["ours"] = (f"{layer}: ρ = {result['value']:.2f}, R² = {result['r2']:.2f} over {result['n']} neurons, "
                   f"{n_pairs:,} pairs x {ctx.plan.pair_seeds} seeds")
    return {**out, "detail": detail, "scatter": pd.DataFrame({"wd": wd.numpy(), "md": md[0].numpy()}),
            "settings": {"token pairs": n_pairs}}


def ablation_layers(ctx) -> list[str]:
    layers = ffn_layers(ctx.lm)
    if ctx.plan.ablation_blocks is None:
        return layers
    return [n for n in layers if block_of(ctx.lm, n) < ctx.plan.ablation_blocks]


def run_w3(ctx, entry: Claim) -> dict:
    ctx.require_weights("sparsifying neurons")
    layers = ablation_layers(ctx)
    nlls: dict[str, object] = {}
    table = ablation(ctx.lm, ctx.calib, ctx.held_out, fraction=0.03, sparsity=ctx.plan.sparsity, layers=layers,
                     seed=ctx.seed, batch_size=ctx.batch_size, progress=ctx.progress,
                     on_nll=lambda criterion, nll: nlls.__setitem__(criterion, nll))
    rows = []
    for criterion in (c for c in CRITERIA if c != "wd"):
        d = nll_difference(nlls[criterion], nlls["wd"], seed=ctx.seed)
        rows.append({"label": f"WD − {criterion}", "value": d.delta, "low": d.low, "high": d.high})
    detail = pd.DataFrame(rows)
    out = parts_verdict(entry, detail)
    ppl = table.set_index("criterion")["perplexity"]
    out["ours"] = (f"perplexity dense {ppl['dense']:.2f}, WD {ppl['wd']:.2f}, "
                   + ", ".join(f"{c} {ppl[c]:.2f}" for c in CRITERIA if c != "wd")
                   + f"; {out.pop('parts_holding')} comparisons hold")
    every = len(layers) == len(ffn_layers(ctx.lm))
    return {**out, "detail": detail, "table": table,
            "settings": {"layers": "every FFN layer" if every else
                         f"the FFN layers of blocks 0-{ctx.plan.ablation_blocks - 1}",
                         "sparsity": ctx.plan.sparsity, "fraction": 0.03}}


def study(ctx, k: int):
    """The layer study of the detail layer with ``k`` experts at the plan's sparsity (shared by W4-W7)."""
    ctx.require_weights("Sparse Expansion")
    return ctx.once(("study", k), lambda: study_layer(ctx.lm, ctx.detail_layer(), ctx.calib, ctx.held_out,
                                                      n_experts=k, sparsity=ctx.plan.sparsity, n_init=ctx.plan.n_init,
                                                      seed=ctx.seed, max_tokens=ctx.tokens, progress=ctx.progress))


def _k_settings(ctx) -> dict:
    return {"k": max(ctx.plan.experts), "sparsity": ctx.plan.sparsity}


def run_w4(ctx, entry: Claim) -> dict:
    seq_len = ctx.held_out.shape[1]
    errors, rows = {}, []
    for k in ctx.plan.experts:
        s = study(ctx, k)
        dense = s.outputs("dense")
        if not errors:
            errors[1] = window_errors(dense, s.outputs("sparsegpt"), seq_len)
        errors[k] = window_errors(dense, s.outputs("expansion"), seq_len)
        d = paired_difference(errors[1], errors[k], seed=ctx.seed)
        rows.append({"label": f"k = {k} − SparseGPT", "value": d.delta, "low": d.low, "high": d.high})
    ks = sorted(ctx.plan.experts)
    parts = [rows[ctx.plan.experts.index(ks[-1])]]
    if len(ks) > 1:
        d = paired_difference(errors[ks[0]], errors[ks[-1]], seed=ctx.seed)
        parts.append({"label": f"k = {ks[-1]} − k = {ks[0]}", "value": d.delta, "low": d.low, "high": d.high})
        rows.append(parts[-1])
    out = parts_verdict(entry, pd.DataFrame(parts))
    out.pop("parts_holding")
    out["ours"] = ", ".join(f"k = {k}: {errors[k].mean():.3f}" for k in [1, *ks]) + \
        " relative error on held-out tokens (k = 1: SparseGPT)"
    return {**out, "detail": pd.DataFrame(rows),
            "settings": {"k": ", ".join(map(str, [1, *ks])), "sparsity": ctx.plan.sparsity,
                         "evaluated": f"relative output error of {ctx.detail_layer()}"}}


def run_w5(ctx, entry: Claim) -> dict:
    table = ctx.once("ri", lambda: relative_improvement(study(ctx, max(ctx.plan.experts))))
    result = r2_advantage(table, seed=ctx.seed)
    out = judge(entry, result["value"], result["low"], result["high"])
    detail = pd.DataFrame([{"label": "R² WD − best other", "value": result["value"], "low": result["low"],
                            "high": result["high"]}])
    out["ours"] = (f"R² of RI on WD {result['r2_wd']:.3f}, mean {result['r2_mean']:.3f}, variance "
                   f"{result['r2_variance']:.3f} over {result['n']} neurons")
    return {**out, "detail": detail, "scatter": table[["wd", "ri"]], "settings": _k_settings(ctx)}


def _wasserstein_neurons(s) -> torch.Tensor:
    return top_neurons(wasserstein_to_gaussian(s.outputs("dense")), fraction=0.03)


def run_w6(ctx, entry: Claim) -> dict:
    k = max(ctx.plan.experts)
    s = study(ctx, k)
    top = _wasserstein_neurons(s)
    table = group_gaussianisation(s.outputs("expansion")[:, top], s.labels(), k, ctx.plan.random_partitions, ctx.seed)
    corrected = median_change(table["ratio_corrected"], seed=ctx.seed)
    raw = median_change(table["ratio_raw"], seed=ctx.seed)
    out = judge(entry, corrected["value"], corrected["low"], corrected["high"])
    detail = pd.DataFrame([{"label": "per expert / random partition − 1", **{c: corrected[c] for c in
                                                                                ("value", "low", "high")}},
                           {"label": "per expert / before − 1 (uncorrected)", **{c: raw[c] for c in
                                                                                  ("value", "low", "high")}}])
    out["ours"] = (f"median {corrected['value']:+.0%} against random partitions ({corrected['share_fallen']:.0%} of "
                   f"{corrected['n']} neurons fall); uncorrected {raw['value']:+.0%} ({raw['share_fallen']:.0%} fall)")
    return {**out, "detail": detail, "table": table, "settings": _k_settings(ctx)}


def run_w7(ctx, entry: Claim) -> dict:
    s = study(ctx, max(ctx.plan.experts))
    change = entanglement_change(s, neurons=_wasserstein_neurons(s), n_pairs=ctx.plan.n_pairs, seed=ctx.seed)
    result = median_change(change["md_ratio"], seed=ctx.seed)
    out = judge(entry, result["value"], result["low"], result["high"])
    detail = pd.DataFrame([{"label": "MD after / before − 1", **{c: result[c] for c in ("value", "low", "high")}}])
    out["ours"] = (f"median MD change {result['value']:+.0%} ({result['share_fallen']:.0%} of {result['n']} "
                   "Wasserstein neurons fall; not corrected for the experts' smaller samples)")
    return {**out, "detail": detail, "table": change, "settings": _k_settings(ctx)}


RUNS = {"W1": run_w1, "W2": run_w2, "W3": run_w3, "W4": run_w4, "W5": run_w5, "W6": run_w6, "W7": run_w7}
