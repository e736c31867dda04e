"""Perplexity against sparsity per method (Fig. 9), the Fig. 3 ablation's bars, downstream tasks' bars."""
from __future__ import annotations

import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from wnb.compression.sparsity import sparsity_value
from wnb.errors import WnbError
from wnb.plots.figure import PALETTE, finish, new_figure


def perplexity_curves(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Perplexity vs sparsity per method (paper Fig. 9) from :func:`wnb.sweep` / :func:`wnb.expansion_sweep`.

    Unstructured sparsities are joined by lines; N:M patterns are open markers at their fraction of
    zeros; a ``dense`` row is a dashed horizontal line. With ``ppl_low`` / ``ppl_high`` columns (the
    95% bootstrap interval over held-out windows) the intervals are drawn as bands and error bars. The
    perplexity axis is logarithmic when the values span more than a factor of 3.
    """
    for column in ("method", "sparsity", "perplexity"):
        if column not in table.columns:
            raise WnbError(f"the sweep table has no column {column!r}")
    fig, (ax,) = new_figure(width=5.4, height=3.8)
    colors = dict(zip([m for m in dict.fromkeys(table["method"]) if m != "dense"], sns.color_palette(PALETTE)))
    dense = table[table["method"] == "dense"]
    intervals = {"ppl_low", "ppl_high"} <= set(table.columns)
    if len(dense):
        ax.axhline(dense["perplexity"].iloc[0], color="black", linestyle="--", linewidth=1, label="dense")
        if intervals:
            ax.axhspan(dense["ppl_low"].iloc[0], dense["ppl_high"].iloc[0], color="black", alpha=0.08, linewidth=0)
    for method, color in colors.items():
        part = table[table["method"] == method]
        nm = part["sparsity"].str.contains(":")
        line = part[~nm].assign(x=lambda d: d["sparsity"].map(sparsity_value)).sort_values("x")
        if len(line):
            ax.plot(line["x"], line["perplexity"], marker="o", color=color, label=method)
            if intervals:
                ax.fill_between(line["x"], line["ppl_low"], line["ppl_high"], color=color, alpha=0.18, linewidth=0)
        for _, row in part[nm].iterrows():
            x = sparsity_value(row["sparsity"])
            ax.scatter([x], [row["perplexity"]], s=60, facecolors="none",
                       edgecolors=color, linewidths=1.6, label=f"{method} {row['sparsity']}", zorder=3)
            if intervals:
                ax.errorbar([x], [row["perplexity"]], yerr=[[row["perplexity"] - row["ppl_low"]],
                                                            [row["ppl_high"] - row["perplexity"]]],
                            color=color, capsize=3, linewidth=1, fmt="none")
    values = table["perplexity"].to_numpy(float)
    if np.nanmax(values) > 3 * np.nanmin(values):  # log only when the range is wide
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("sparsity (fraction of weights set to zero)")
    ax.set_ylabel("perplexity (held out" + (", 95% interval)" if intervals else ")"))
    finish(ax, title)
    return fig


def ablation_bars(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Perplexity after sparsifying a few neurons per layer chosen by each criterion (paper Fig. 3),
    from :func:`wnb.ablation`; the WD bar is highlighted and the dense perplexity is a dashed line."""
    for column in ("criterion", "perplexity"):
        if column not in table.columns:
            raise WnbError(f"the ablation table has no column {column!r}")
    fig, (ax,) = new_figure(width=5.4, height=3.8)
    bars = table[table["criterion"] != "dense"]
    blue, orange = sns.color_palette(PALETTE)[:2]
    colors = [orange if c == "wd" else blue for c in bars["criterion"]]
    intervals = {"ppl_low", "ppl_high"} <= set(table.columns)
    yerr = [bars["perplexity"] - bars["ppl_low"], bars["ppl_high"] - bars["perplexity"]] if intervals else None
    ax.bar(bars["criterion"], bars["perplexity"], color=colors, yerr=yerr, capsize=3,
           error_kw={"linewidth": 1, "ecolor": "#333"})
    tops = bars["ppl_high"] if intervals else bars["perplexity"]
    for x, (value, top) in enumerate(zip(bars["perplexity"], tops)):
        ax.text(x, top, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    dense = table[table["criterion"] == "dense"]
    if len(dense):
        ax.axhline(dense["perplexity"].iloc[0], color="black", linestyle="--", linewidth=1, label="dense")
        ax.legend(fontsize=8, frameon=False, loc="lower right")
        if intervals:
            ax.axhspan(dense["ppl_low"].iloc[0], dense["ppl_high"].iloc[0], color="black", alpha=0.08, linewidth=0)
        low = min(dense["perplexity"].iloc[0], (bars["ppl_low"] if intervals else bars["perplexity"]).min())
        ax.set_ylim(low * 0.97, tops.max() * 1.05)
    ax.set_xlabel("neurons chosen by")
    ax.set_ylabel("perplexity (held out" + (", 95% interval)" if intervals else ")"))
    finish(ax, title, legend=False)
    return fig


def task_bars(table: pd.DataFrame, metric: str = "acc", title: str | None = None) -> Figure:
    """Downstream task scores (:func:`wnb.experiments.tasks.compare_tasks`): one group of bars per task, one bar per
    model (dense, SparseGPT, expansion), ``metric`` with its standard error where lm-eval gives one."""
    for column in ("model", "task", "metric", "value"):
        if column not in table.columns:
            raise WnbError(f"the task table has no column {column!r}")
    part = table[(table["metric"] == metric) & (table["filter"].fillna("none") == "none")] \
        if "filter" in table.columns else table[table["metric"] == metric]
    if part.empty:
        raise WnbError(f"no {metric!r} scores in the table; it has {', '.join(sorted(set(table['metric'])))}")
    tasks, models = list(dict.fromkeys(part["task"])), list(dict.fromkeys(part["model"]))
    fig, (ax,) = new_figure(width=max(4.0, 1.4 * len(tasks) * len(models) / 2 + 2), height=3.6)
    width = 0.8 / len(models)
    colors = sns.color_palette(PALETTE, len(models))
    for m, (model, color) in enumerate(zip(models, colors)):
        rows = part[part["model"] == model].set_index("task").reindex(tasks)
        x = np.arange(len(tasks)) + (m - (len(models) - 1) / 2) * width
        stderr = rows["stderr"].to_numpy(float) if "stderr" in rows.columns else None
        ax.bar(x, rows["value"].to_numpy(float), width, color=color, label=model,
               yerr=None if stderr is None or np.isnan(stderr).all() else np.nan_to_num(stderr), capsize=3,
               error_kw={"linewidth": 1, "ecolor": "#333"})
    ax.set_xticks(np.arange(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylabel(f"{metric} (± standard error)")
    top = 1.0 if part["value"].max() <= 1 else part["value"].max()
    ax.set_ylim(0, top * 1.18)  # room for the legend above the bars
    ax.legend(fontsize=8, frameon=False, loc="upper center", ncol=len(models))
    finish(ax, title, legend=False)
    return fig
