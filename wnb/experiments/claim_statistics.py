"""The statistics behind the claims' verdicts, on plain tensors and tables (no model): each is tested on
data whose truth is known by construction (tests/unit/experiments/test_claim_statistics.py).

Every interval is a 95% percentile bootstrap (:func:`wnb.core.inference.bootstrap`) over the unit that
carries the noise — held-out windows, neurons, items —, a delete-half jackknife over calibration windows
for a layer's WD ratio (W1), or, where only per-layer accuracies exist (N6), a normal interval that treats
the layers as independent (conservative: they share the pairs).
The verdicts are :func:`wnb.core.inference.verdict`'s, on the claim's own direction and minimum effect.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import torch
from scipy import stats

from wnb.core.inference import LEVEL, bootstrap, verdict, wording
from wnb.errors import WnbError
from wnb.experiments.claims import Claim
from wnb.experiments.layer_study import random_partition, weighted_group_wd
from wnb.scoring.sign import wasserstein_split
from wnb.scoring.wasserstein import wasserstein_to_gaussian

N_BOOT = 1000


# ---------------------------------------------------------------- verdicts

def judge(entry: Claim, value: float, low: float, high: float) -> dict:
    """The row's verdict and its words: :func:`wnb.core.inference.verdict` of ``[low, high]`` against the
    claim's null, direction and effect (or minimum)."""
    result = verdict(low - entry.null, high - entry.null, entry.direction, effect=entry.effect,
                     minimum=None if entry.effect is not None else entry.minimum)
    words = wording(result, low, high, effect=entry.effect, minimum=None if entry.effect is not None else entry.minimum)
    return {"value": float(value), "low": float(low), "high": float(high), "verdict": result, "wording": words}


def combine(verdicts) -> str:
    """One verdict for a claim about every part (every layer, every control): reversed if any part is
    reversed, holds if all hold, not observed if any part is not observed, else inconclusive."""
    verdicts = list(verdicts)
    if not verdicts:
        raise WnbError("no verdicts to combine")
    if "reversed" in verdicts:
        return "reversed"
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "not observed" if "not observed" in verdicts else "inconclusive"


def parts_verdict(entry: Claim, parts: pd.DataFrame) -> dict:
    """A claim about every row of ``parts`` (``label, value, low, high``): each row judged, the verdict
    combined (:func:`combine`), and the statistic of the weakest row (nearest the null on the paper's side)."""
    verdicts = [judge(entry, *r)["verdict"] for r in parts[["value", "low", "high"]].itertuples(index=False)]
    sign = 1 if entry.direction == "greater" else -1
    weakest = parts.iloc[int(np.argmin(sign * parts["value"].to_numpy(float)))]
    out = judge(entry, weakest["value"], weakest["low"], weakest["high"])
    out["verdict"] = combine(verdicts)
    if out["verdict"] not in ("holds", "reversed"):
        out["wording"] = f"{out['verdict']}: weakest part {weakest['label']}, " + out["wording"]
    out["parts_holding"] = f"{verdicts.count('holds')} of {len(verdicts)}"
    return out


# ---------------------------------------------------------------- W1: heavy-tailed neurons per layer

def tail_ratio(wd) -> torch.Tensor:
    """Mean WD of the top 3% of the neurons over the median WD, along the last axis (NaN left out)."""
    wd = torch.as_tensor(wd, dtype=torch.float64)
    wd = torch.nan_to_num(wd, nan=0.0)
    k = max(1, round(0.03 * wd.shape[-1]))
    return wd.topk(k, dim=-1).values.mean(-1) / wd.median(dim=-1).values


MEDIAN_NEURONS = 128  # a wide layer's resamples take the median over this many neurons drawn at random


def _half_sample_ratios(y: torch.Tensor, seq_len: int, n_half: int, seed: int) -> tuple[float, np.ndarray]:
    """:func:`tail_ratio` of ``y`` and of ``n_half`` half-samples of its windows (each a random half of the
    windows, drawn without replacement: no repeated tokens, whose ties would bias WD). A layer wider than
    ``3 x top + MEDIAN_NEURONS`` is re-scored on its ``2 x top`` highest neurons (where a half-sample's top 3%
    comes from) and ``MEDIAN_NEURONS`` drawn at random (the median), so a half-sample costs one WD of a few
    hundred neurons; only the half-samples' spread is used."""
    n, d = y.shape
    k = max(1, round(0.03 * d))
    wd = torch.nan_to_num(wasserstein_to_gaussian(y), nan=0.0)
    gen = torch.Generator().manual_seed(int(seed))
    if d > 3 * k + MEDIAN_NEURONS:
        cols = torch.cat([wd.topk(2 * k).indices, torch.randperm(d, generator=gen)[:MEDIAN_NEURONS]])

        def ratio(w):
            return float(w[:2 * k].topk(k).values.mean() / w[2 * k:].median())
    else:
        cols = torch.arange(d)

        def ratio(w):
            return float(tail_ratio(w))
    rng = np.random.default_rng(int(seed))
    windows = n // seq_len
    out = np.empty(int(n_half))
    for b in range(int(n_half)):
        pick = torch.as_tensor(np.sort(rng.permutation(windows)[:max(1, windows // 2)]))
        rows = (pick[:, None] * seq_len + torch.arange(seq_len)).reshape(-1)
        out[b] = ratio(torch.nan_to_num(wasserstein_to_gaussian(y[rows][:, cols]), nan=0.0))
    return float(tail_ratio(wd)), out


@functools.lru_cache(maxsize=8)
def gaussian_reference(n: int, d: int, seq_len: int, n_half: int, seed: int) -> tuple[float, np.ndarray]:
    """:func:`_half_sample_ratios` of ``d`` Gaussian neurons over ``n`` tokens (seeded): what a layer without
    non-Gaussian neurons shows (a top 3% sits above the median for any sample). Kept for the layers of one size."""
    gauss = torch.randn(n, d, generator=torch.Generator().manual_seed(int(seed) + 1), dtype=torch.float32)
    return _half_sample_ratios(gauss, seq_len, n_half, seed)


def tail_excess(outputs: torch.Tensor, seq_len: int, n_boot: int = 50, seed: int = 0) -> dict:
    """W1 for one layer: :func:`tail_ratio` of its WD (``ratio``), the same ratio for Gaussian neurons of the
    same size (``null``, :func:`gaussian_reference`), and their difference (``value``) with a 95% normal
    interval whose standard error is the spread of the difference over ``n_boot`` half-samples of the windows
    (the same halves for the layer and the reference): the delete-half jackknife (Shao & Wu, Ann. Statist. 17,
    1989), whose variance of half-sample means is exactly that of the full mean. A bootstrap with replacement
    repeats windows, and the ties inflate WD and the top 3% more than the median."""
    y = torch.as_tensor(outputs)
    n, d = y.shape
    if n % seq_len or n // seq_len < 2:
        raise WnbError(f"outputs must be whole windows of {seq_len} tokens, at least 2 (got {n} tokens)")
    ratio, halves = _half_sample_ratios(y, seq_len, n_boot, seed)
    null, null_halves = gaussian_reference(n, d, seq_len, int(n_boot), int(seed))
    spread = float(np.std(halves - null_halves, ddof=1)) if n_boot > 1 else 0.0
    z = float(stats.norm.ppf(1 - (1 - LEVEL) / 2))
    value = ratio - null
    return {"ratio": ratio, "null": null, "value": value, "low": value - z * spread, "high": value + z * spread}


# ---------------------------------------------------------------- W2, W5: correlations over neurons

def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson_rows(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))


def correlation(x, ys, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """W2: Spearman ρ (and R², Pearson r²) of ``x`` (e.g. WD, ``[n]``) and ``ys`` (e.g. MD from several
    seeds of token pairs, ``[n_seeds, n]`` or ``[n]``) over the items, averaged over the seeds, with 95%
    bootstrap intervals over items and seeds (resample b takes seed b mod n_seeds). Items with a NaN in
    any column are left out."""
    x = np.asarray(x, dtype=np.float64)
    ys = np.atleast_2d(np.asarray(ys, dtype=np.float64))
    keep = np.isfinite(x) & np.isfinite(ys).all(0)
    if keep.sum() < 3:
        raise WnbError(f"at least 3 items with finite values are needed (got {int(keep.sum())})")
    x, ys = x[keep], ys[:, keep]
    seeds = ys.shape[0]

    def per_seed(fn):
        def stat(xr, yr):  # xr [B, n], yr [B, n, seeds]
            which = np.arange(xr.shape[0]) % seeds
            return fn(xr, yr[np.arange(xr.shape[0]), :, which])
        return stat

    rho = float(np.mean([stats.spearmanr(x, y).statistic for y in ys]))
    r2 = float(np.mean([stats.pearsonr(x, y).statistic ** 2 for y in ys]))
    rho_low, rho_high = bootstrap(per_seed(_spearman_rows), x, ys.T, n_boot=n_boot, seed=seed)
    r2_low, r2_high = bootstrap(per_seed(lambda a, b: _pearson_rows(a, b) ** 2), x, ys.T, n_boot=n_boot, seed=seed)
    return {"value": rho, "low": rho_low, "high": rho_high, "r2": r2, "r2_low": r2_low, "r2_high": r2_high,
            "n": int(x.size)}


def r2_advantage(table: pd.DataFrame, target: str = "ri", best: str = "wd", others=("mean", "variance"),
                 n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """W5: R² of ``target`` on ``best`` minus the largest R² on ``others`` (least-squares lines, one
    predictor each), with a 95% bootstrap interval over the rows (neurons); NaN rows left out."""
    columns = [best, *others, target]
    data = table[columns].replace([np.inf, -np.inf], np.nan).dropna().to_numpy(np.float64)
    if len(data) < 3:
        raise WnbError(f"at least 3 neurons with finite {', '.join(columns)} are needed (got {len(data)})")

    def advantage(rows):  # rows [B, n, columns]
        r2 = [_pearson_rows(rows[..., i], rows[..., -1]) ** 2 for i in range(len(columns) - 1)]
        return r2[0] - np.max(np.stack(r2[1:]), axis=0)

    value = float(advantage(data[None])[0])
    low, high = bootstrap(advantage, data, n_boot=n_boot, seed=seed)
    r2 = {f"r2_{c}": float(_pearson_rows(data[:, i], data[:, -1]) ** 2) for i, c in enumerate(columns[:-1])}
    return {"value": value, "low": low, "high": high, **r2, "n": len(data)}


# ---------------------------------------------------------------- W6, W7: after expansion

def group_gaussianisation(outputs: torch.Tensor, labels: torch.Tensor, n_groups: int, n_random: int = 5,
                          seed: int = 0) -> pd.DataFrame:
    """W6 per neuron: WD of all tokens (``wd_before``), token-share weighted WD within the groups
    (``wd_after``: :func:`wnb.experiments.layer_study.weighted_group_wd`) and within ``n_random`` random
    partitions of the same sizes (``wd_random``, their mean: WD on fewer tokens is biased upward, so only
    ``wd_after`` below it says the grouping made the outputs more Gaussian), and the ratios."""
    labels = torch.as_tensor(labels)
    before = wasserstein_to_gaussian(outputs)
    after = weighted_group_wd(outputs, labels, n_groups)
    random = torch.stack([weighted_group_wd(outputs, random_partition(labels, seed + s), n_groups)
                          for s in range(int(n_random))]).mean(0)
    return pd.DataFrame({"wd_before": before.numpy(), "wd_after": after.numpy(), "wd_random": random.numpy(),
                         "ratio_raw": (after / before).numpy(), "ratio_corrected": (after / random).numpy()})


def median_change(ratios, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Median of ``ratios − 1`` (after / before, per neuron) and the share below 1, with a 95% bootstrap
    interval of the median over neurons (NaN left out)."""
    r = np.asarray(ratios, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise WnbError("no finite ratios")
    low, high = bootstrap(lambda x: np.median(x, axis=1) - 1, r, n_boot=n_boot, seed=seed)
    return {"value": float(np.median(r) - 1), "low": low, "high": high, "share_fallen": float((r < 1).mean()),
            "n": int(r.size)}


# ---------------------------------------------------------------- W4: held-out error per window

def window_errors(dense: torch.Tensor, other: torch.Tensor, seq_len: int) -> np.ndarray:
    """Relative output error ``‖y − y_dense‖ / ‖y_dense‖`` of each window of ``seq_len`` tokens, ``[n_windows]``."""
    if dense.shape != other.shape or dense.shape[0] % seq_len:
        raise WnbError(f"outputs must match and be whole windows of {seq_len} tokens "
                       f"(got {tuple(dense.shape)} and {tuple(other.shape)})")
    err = (other.double() - dense.double()).square().reshape(-1, seq_len * dense.shape[1]).sum(1)
    ref = dense.double().square().reshape(-1, seq_len * dense.shape[1]).sum(1)
    return (err / ref).sqrt().numpy()


# ---------------------------------------------------------------- N1: where the WD sits

def below_zero_share(outputs, wd, fraction: float = 0.01, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """N1 for one layer: the share of each Wasserstein neuron's WD (top ``fraction`` by ``wd``) below the raw
    zero (:func:`wnb.wasserstein_split`), ``[k]`` as ``shares``; the mean share − 0.5 with a 95% bootstrap
    interval over those neurons."""
    wd = torch.as_tensor(wd, dtype=torch.float64)
    k = max(1, math.ceil(fraction * wd.numel()))
    top = torch.nan_to_num(wd, nan=-math.inf).topk(k).indices
    lower, upper = wasserstein_split(torch.as_tensor(outputs)[:, top])
    shares = (lower / (lower + upper)).numpy()
    return {**share_excess(shares, n_boot, seed), "shares": shares[np.isfinite(shares)]}


def share_excess(shares, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """The mean of ``shares`` (one per neuron, NaN left out) − 0.5, with a 95% bootstrap interval over neurons."""
    shares = np.asarray(shares, dtype=np.float64)
    shares = shares[np.isfinite(shares)]
    if shares.size == 0:
        raise WnbError("no finite shares")
    low, high = bootstrap(lambda s: s.mean(1) - 0.5, shares, n_boot=n_boot, seed=seed)
    return {"value": float(shares.mean() - 0.5), "low": low, "high": high, "n": int(shares.size)}


# ---------------------------------------------------------------- N5, N6

def class_difference(table: pd.DataFrame, first: str = "function", second: str = "content", by: str = "group",
                     n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """N5: mean Δ NLL of the ``first`` class's tokens − of the ``second``'s in a :func:`wnb.token_surprisal`
    table, with a 95% bootstrap interval over its windows (each resample pools the tokens of the windows drawn)."""
    sums = []
    for _, part in table.groupby("window", sort=True):
        one, two = part[part[by] == first]["delta_nll"], part[part[by] == second]["delta_nll"]
        sums.append([one.sum(), len(one), two.sum(), len(two)])
    sums = np.asarray(sums, dtype=np.float64)
    if sums[:, 1].sum() == 0 or sums[:, 3].sum() == 0:
        raise WnbError(f"the table has no {first if sums[:, 1].sum() == 0 else second} tokens")

    def diff(s):
        with np.errstate(invalid="ignore", divide="ignore"):
            out = s[..., 0].sum(-1) / s[..., 1].sum(-1) - s[..., 2].sum(-1) / s[..., 3].sum(-1)
        return np.nan_to_num(out, nan=0.0)

    low, high = bootstrap(diff, sums, n_boot=n_boot, seed=seed)
    return {"value": float(diff(sums[None])[0]), "low": low, "high": high, "windows": len(sums)}


def early_late(blocks, accuracies, n_items: int, level: float = LEVEL) -> dict:
    """N6: mean accuracy with the early half of the layers ablated (one at a time) − with the late half
    (the dense accuracy cancels), and a normal interval from the binomial variances ``p(1 − p)/n_items``
    of each layer's accuracy, taken as independent (they share the items, so the true interval is narrower)."""
    order = np.argsort(np.asarray(blocks))
    acc = np.asarray(accuracies, dtype=np.float64)[order]
    if acc.size < 2:
        raise WnbError("the depth profile needs at least 2 layers")
    half = acc.size // 2
    early, late = acc[:half], acc[acc.size - half:]
    value = early.mean() - late.mean()
    var = (early * (1 - early)).sum() / n_items / half ** 2 + (late * (1 - late)).sum() / n_items / half ** 2
    z = float(stats.norm.ppf(1 - (1 - level) / 2))
    half_width = z * math.sqrt(max(var, 1.0 / n_items ** 2))
    return {"value": float(value), "low": float(value - half_width), "high": float(value + half_width),
            "early_layers": int(half), "late_layers": int(half)}
