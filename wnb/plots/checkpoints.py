"""The follow-up over training checkpoints: WD, the Wasserstein set's overlap with the last checkpoint's, and the
sign ablation's paired Δ perplexity (and Δ accuracy) per step, side by side."""
from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from wnb.errors import WnbError
from wnb.plots.figure import PALETTE, finish, new_figure

NEEDED = ("checkpoint", "wd_mean", "wd_top_mean", "overlap_final", "delta_perplexity", "delta_ppl_low", "delta_ppl_high")


def _axis(table: pd.DataFrame) -> tuple[np.ndarray, str, bool]:
    """x values, label, and whether a symmetric log scale suits them (training steps spanning decades)."""
    steps = table["step"] if "step" in table.columns else pd.Series([pd.NA] * len(table))
    if steps.notna().all() and len(table):
        x = steps.to_numpy(float)
        return x, "training step", x.max() > 100 * max(1.0, x[x > 0].min() if (x > 0).any() else 1.0)
    return np.arange(len(table), dtype=float), "checkpoint", False


def _interval(ax, x, table, column, stem, colour, label):
    value = table[column].to_numpy(float)
    err = np.clip(np.vstack([value - table[f"{stem}_low"].to_numpy(float),
                             table[f"{stem}_high"].to_numpy(float) - value]), 0, None)
    ax.errorbar(x, value, yerr=err, marker="o", markersize=3, capsize=3, color=colour, label=label)
    ax.axhline(0, color="black", linewidth=0.8)


def checkpoint_plot(table: pd.DataFrame, title: str | None = None) -> Figure:
    """One figure from a :func:`wnb.experiments.checkpoints.checkpoint_study` table: WD (all neurons and the
    Wasserstein set), the set's overlap with the last checkpoint's, Δ perplexity of the ablation with its
    paired 95% interval and, when the table has it, Δ minimal-pair accuracy with its interval; x is the
    training step (symmetric log scale when the steps span decades) or the checkpoint's order."""
    missing = [c for c in NEEDED if c not in table.columns]
    if missing or table.empty:
        raise WnbError(f"the checkpoint table has no rows or lacks {missing} (make it with checkpoint_study)")
    accuracy = "delta_accuracy" in table.columns
    blue, orange, green, red = sns.color_palette(PALETTE)[:4]
    fig, axes = new_figure(ncols=4 if accuracy else 3, width=3.3, height=3.2, wspace=0.45, suptitle=bool(title))
    x, label, log = _axis(table)
    axes[0].plot(x, table["wd_mean"], marker="o", markersize=3, color=blue, label="all neurons")
    axes[0].plot(x, table["wd_top_mean"], marker="o", markersize=3, color=orange, label="Wasserstein set")
    axes[0].set_ylabel("mean WD")
    axes[1].plot(x, table["overlap_final"], marker="o", markersize=3, color=green)
    axes[1].set_ylim(0, 1.05)
    axes[1].set_ylabel("overlap with the last set")
    _interval(axes[2], x, table, "delta_perplexity", "delta_ppl", orange, "Δ perplexity")
    axes[2].set_ylabel("Δ perplexity (ablated − dense)")
    if accuracy:
        _interval(axes[3], x, table, "delta_accuracy", "delta_acc", red, "Δ accuracy")
        axes[3].set_ylabel("Δ minimal-pair accuracy")
    for i, ax in enumerate(axes):
        ax.set_xlabel(label)
        if log:
            ax.set_xscale("symlog", linthresh=1)
        if label == "checkpoint":
            ax.set_xticks(x, [str(c) for c in table["checkpoint"]], rotation=30, fontsize=7)
        finish(ax, None, legend=i == 0)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
