"""Scatter plots: input distance vs output difference of token pairs (Fig. 2b–d), one value against another per neuron with R² (Fig. 2e, 7), before vs after expansion (Fig. 5)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from wnb.core.stats import r_squared
from wnb.errors import WnbError
from wnb.plots.figure import LABELS, PALETTE, as_values, finish, new_figure


def pair_scatter(dx, dy, panels: Mapping[str, int], max_points: int = 4000, seed: int = 0) -> Figure:
    """Normalized input distance vs normalized output difference of token pairs (paper Fig. 2b–d).

    ``dx [P]`` and ``dy [P, n]`` are what :func:`wnb.pair_distances` returns; ``panels`` maps a panel
    title to a column of ``dy`` (e.g. ``{"Wasserstein neuron 761": 0, "ordinary neuron 12": 1}``).
    At most ``max_points`` pairs are drawn (a seeded random subset, the same one in every panel).
    """
    x = as_values(dx)
    y = dy.detach().cpu().double().numpy() if isinstance(dy, torch.Tensor) else np.asarray(dy, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape[0] != x.size:
        raise WnbError(f"dx has {x.size} pairs but dy has {y.shape[0]}")
    keep = np.arange(x.size)
    if x.size > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(x.size, max_points, replace=False))
    fig, axes = new_figure(len(panels), width=4.2)
    top = max(np.quantile(y[keep][:, list(panels.values())], 0.995), 1.0) * 1.05
    for ax, (title, column) in zip(axes, panels.items()):
        ax.scatter(x[keep], y[keep, column], s=4, alpha=0.35, linewidths=0, color=sns.color_palette(PALETTE)[0])
        above = int((y[keep, column] > top).sum())
        if above:  # the axis stops at the 99.5th percentile of both panels: say what is cut off
            ax.text(0.98, 0.98, f"{above} pair{'s' * (above > 1)} above the axis (clipped at the 99.5th "
                    "percentile)", transform=ax.transAxes, ha="right", va="top", fontsize=7, color="#555")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("normalized input distance")
        ax.set_ylim(0, top)
        ax.set_xlim(0, 1.02)
        sns.despine(ax=ax)
    axes[0].set_ylabel("normalized output difference")
    return fig


def neuron_scatter(table: pd.DataFrame, x: str = "wd", y: str = "md", highlight: Sequence[int] = (),
                   selected: int | None = None, fit: bool = True, title: str | None = None, ax=None) -> Figure:
    """Scatter of two per-neuron columns of a neuron table (WD vs MD: paper Fig. 2e; RI vs WD: Fig. 7).

    Rows whose ``neuron`` is in ``highlight`` (e.g. the Wasserstein neurons) are drawn in a second
    colour, ``selected`` is circled, and with ``fit`` the least-squares line and its R² are shown.
    """
    for column in (x, y, "neuron"):
        if column not in table.columns:
            raise WnbError(f"the table has no column {column!r}; it has {', '.join(map(str, table.columns))}")
    if ax is None:
        fig, (ax,) = new_figure(width=4.6)
    else:
        fig = ax.figure
    data = table[np.isfinite(table[x].to_numpy(float)) & np.isfinite(table[y].to_numpy(float))]
    is_top = data["neuron"].isin(list(highlight))
    blue, orange = sns.color_palette(PALETTE)[:2]
    ax.scatter(data.loc[~is_top, x], data.loc[~is_top, y], s=6, alpha=0.5, linewidths=0, color=blue, label="neurons")
    if is_top.any():
        ax.scatter(data.loc[is_top, x], data.loc[is_top, y], s=10, alpha=0.9, linewidths=0, color=orange,
                   label=f"top {int(is_top.sum())} by WD")
    if selected is not None and (data["neuron"] == selected).any():
        row = data[data["neuron"] == selected].iloc[0]
        ax.scatter([row[x]], [row[y]], s=90, facecolors="none", edgecolors="crimson", linewidths=1.8,
                   label=f"neuron {selected}")
    if fit and len(data) >= 3:
        r2 = r_squared(data[x], data[y])
        slope, intercept = np.polyfit(data[x].to_numpy(float), data[y].to_numpy(float), 1)
        t = np.linspace(data[x].min(), data[x].max(), 50)
        ax.plot(t, slope * t + intercept, color="black", linewidth=1, label=f"fit, R² = {r2:.2f}")
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    finish(ax, title)
    return fig


def before_after(table: pd.DataFrame, metrics=("wd", "md"), highlight: Sequence[int] = (),
                 title: str | None = None) -> Figure:
    """Per-neuron ``<metric>_before`` vs ``<metric>_after`` (paper Fig. 5), one panel per metric, with
    the line y = x and the median ratio after / before in the panel title."""
    metrics = [m for m in metrics if f"{m}_before" in table.columns and f"{m}_after" in table.columns]
    if not metrics:
        raise WnbError("the table has no <metric>_before / <metric>_after columns (see wnb.entanglement_change)")
    fig, axes = new_figure(len(metrics), width=4.2, height=3.8, wspace=0.35, suptitle=bool(title))
    blue, orange = sns.color_palette(PALETTE)[:2]
    for ax, metric in zip(axes, metrics):
        before, after = table[f"{metric}_before"].to_numpy(float), table[f"{metric}_after"].to_numpy(float)
        ok = np.isfinite(before) & np.isfinite(after)
        top = table["neuron"].isin(list(highlight)).to_numpy() & ok
        ax.scatter(before[ok & ~top], after[ok & ~top], s=12, alpha=0.7, linewidths=0, color=blue, label="neurons")
        if top.any():
            ax.scatter(before[top], after[top], s=14, alpha=0.9, linewidths=0, color=orange, label="highlighted")
        lo = min(before[ok].min(), after[ok].min()) if ok.any() else 0
        hi = max(before[ok].max(), after[ok].max()) if ok.any() else 1
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="no change")
        ratio = np.median(after[ok] / before[ok]) if ok.any() else float("nan")
        name = metric.upper()
        ax.set_title(f"{name}: median after / before = {ratio:.2f}", fontsize=10)
        ax.set_xlabel(f"{name} before (dense)")
        ax.set_ylabel(f"{name} after (per expert, share-weighted)")
        ax.legend(fontsize=8, frameon=False)
        sns.despine(ax=ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
