"""Figures of the paper's views, drawn with seaborn/matplotlib from data (tensors, arrays, DataFrames).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so figures made in a
widget callback are freed with their last reference and never pile up in a global figure list.
:func:`to_png` turns a figure into PNG bytes for widgets and downloads.
"""
from __future__ import annotations

import io
import re
from typing import Mapping, Sequence

import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from scipy import stats

from wnb.core.stats import standardize
from wnb.errors import WnbError

GAUSSIAN_LABEL = "N(0, 1)"
LABELS = {"wd": "WD", "md": "MD", "ri": "RI = RMSE SparseGPT / RMSE expansion", "rmse": "held-out RMSE",
          "rel_rmse": "held-out RMSE / dense std", "shift": "output shift (W1)", "mean": "output mean",
          "variance": "output variance"}
PALETTE = "deep"


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).ravel()


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.6, wspace: float = 0.28,
            suptitle: bool = False, right: float = 0.2) -> tuple[Figure, list]:
    # Fixed margins (in inches) instead of a layout engine: the engine doubles the drawing time,
    # and re-selecting a neuron must stay under a second. ``right``: the right margin in inches.
    w, h = width * ncols + right - 0.2, height + (0.3 if suptitle else 0)
    fig = Figure(figsize=(w, h))
    fig.subplots_adjust(left=0.75 / w, right=1 - right / w, bottom=0.6 / h, top=1 - (0.7 if suptitle else 0.4) / h,
                        wspace=wspace)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def standardized(values, reference=None) -> np.ndarray:
    """:func:`wnb.core.stats.standardize` of one neuron's outputs for a histogram; refused for a constant
    neuron (nothing to draw against N(0, 1))."""
    z = standardize(_numpy(values), None if reference is None else _numpy(reference))
    if np.isnan(z).all():
        raise WnbError("cannot standardize a constant neuron (its outputs have zero variance)")
    return z


def output_histogram(series, standardize_by: str | None = "each", weights: Mapping[str, float] | None = None,
                     bins: int = 80, gaussian: bool = True, title: str | None = None, ax=None,
                     reference=None) -> Figure:
    """Histograms of one neuron's outputs, overlaid, with the N(0, 1) density.

    ``series`` is one 1-D array/tensor or a mapping ``label → values`` (dense, pruned, expert 3, ...),
    drawn in order on shared bins as densities. ``standardize_by``: ``"each"`` standardizes every
    series by its own mean and std (the paper's view of shape), ``"first"`` uses the first series'
    mean and std for all (shows shifts and scale changes after pruning), ``None`` plots raw outputs
    (no Gaussian overlay). ``reference`` replaces the first series as the source of the mean and std
    of ``"first"`` (e.g. the dense outputs when drawing one expert per panel). ``weights`` (label →
    number, e.g. an expert's token share) is shown in the legend. The Gaussian is the last line.
    """
    if not isinstance(series, Mapping):
        series = {"outputs": series}
    if not series:
        raise WnbError("output_histogram needs at least one series of outputs")
    if standardize_by not in ("each", "first", None):
        raise WnbError(f"standardize_by must be 'each', 'first' or None (got {standardize_by!r})")
    first = _numpy(next(iter(series.values())) if reference is None else reference)
    data = {}
    for label, values in series.items():
        if standardize_by == "each":
            data[label] = standardized(values)
        elif standardize_by == "first":
            data[label] = standardized(values, first)
        else:
            data[label] = _numpy(values)
    if ax is None:
        fig, (ax,) = _figure()
    else:
        fig = ax.figure
    everything = np.concatenate(list(data.values()))
    if everything.size > 2000:
        lo, hi = np.quantile(everything, [0.0005, 0.9995])
    else:
        lo, hi = everything.min(), everything.max()
    if standardize_by is not None:
        lo, hi = min(lo, -4.0), max(hi, 4.0)
    edges = np.linspace(lo, hi, bins + 1)
    colors = sns.color_palette(PALETTE, len(data))
    for (label, values), color in zip(data.items(), colors):
        shown = f"{label} ({weights[label]:.0%} of tokens)" if weights and label in weights else label
        ax.stairs(density(values, edges), edges, fill=len(data) == 1, alpha=0.55 if len(data) == 1 else 0.9,
                  linewidth=1.6, color=color, label=shown)
    if gaussian and standardize_by is not None:
        t = np.linspace(lo, hi, 400)
        ax.plot(t, stats.norm.pdf(t), color="black", linestyle="--", linewidth=1.3, label=GAUSSIAN_LABEL)
    ax.set_xlabel("standardized output" if standardize_by else "output")
    ax.set_ylabel("density")
    _finish(ax, title)
    return fig


def _finish(ax, title: str | None, legend: bool = True) -> None:
    """The common ending of a single-axes figure: optional title, small frameless legend, no top/right spines."""
    if title:
        ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=8, frameon=False)
    sns.despine(ax=ax)


def density(values, edges) -> np.ndarray:
    """Histogram heights as a density of *all* values: count / (n · bin width); values outside the
    edges are left out of the bars but still counted in n, so far tails lower the bars honestly."""
    x = _numpy(values)
    counts, _ = np.histogram(x, bins=edges)
    return counts / (x.size * np.diff(edges))


def pair_scatter(dx, dy, panels: Mapping[str, int], max_points: int = 4000, seed: int = 0) -> Figure:
    """Normalized input distance vs normalized output difference of token pairs (paper Fig. 2b–d).

    ``dx [P]`` and ``dy [P, n]`` are what :func:`wnb.pair_distances` returns; ``panels`` maps a panel
    title to a column of ``dy`` (e.g. ``{"Wasserstein neuron 761": 0, "ordinary neuron 12": 1}``).
    At most ``max_points`` pairs are drawn (a seeded random subset, the same one in every panel).
    """
    x = _numpy(dx)
    y = dy.detach().cpu().double().numpy() if isinstance(dy, torch.Tensor) else np.asarray(dy, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape[0] != x.size:
        raise WnbError(f"dx has {x.size} pairs but dy has {y.shape[0]}")
    keep = np.arange(x.size)
    if x.size > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(x.size, max_points, replace=False))
    fig, axes = _figure(len(panels), width=4.2)
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


def r_squared(x, y) -> float:
    """R² of the least-squares line of ``y`` on ``x`` (the squared Pearson correlation), NaNs dropped."""
    x, y = _numpy(x), _numpy(y)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or x[ok].std() == 0 or y[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1] ** 2)


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
        fig, (ax,) = _figure(width=4.6)
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
    _finish(ax, title)
    return fig


def block_index(name: str) -> int:
    """The first integer part of a dotted layer name (``model.layers.3.mlp.gate_proj`` → 3)."""
    for part in name.split("."):
        if re.fullmatch(r"\d+", part):
            return int(part)
    raise WnbError(f"layer name {name!r} has no block number; pass blocks= explicitly")


def scores_frame(scores: Mapping[str, torch.Tensor], blocks: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Long table of per-layer WD scores: one row per (layer, neuron) with ``block`` and ``kind``; NaN dropped."""
    frames = []
    for name, wd in scores.items():
        values = _numpy(wd)
        frames.append(pd.DataFrame({"layer": name, "block": blocks[name] if blocks else block_index(name),
                                    "kind": name.rsplit(".", 1)[-1], "neuron": np.arange(values.size), "wd": values}))
    if not frames:
        raise WnbError("no layer scores to plot")
    frame = pd.concat(frames, ignore_index=True)
    return frame[np.isfinite(frame["wd"])]


def wd_overview(scores: Mapping[str, torch.Tensor], style: str = "heatmap", bins: int = 40,
                blocks: Mapping[str, int] | None = None) -> Figure:
    """WD of every neuron of every layer, per block: one panel per layer kind (gate/up/down ...).

    ``style="heatmap"``: x = block, y = WD bin, colour = share of the layer's neurons in the bin
    (log scale); ``style="violin"``: a violin of WD per block.
    """
    if style not in ("heatmap", "violin"):
        raise WnbError(f"style must be 'heatmap' or 'violin' (got {style!r})")
    frame = scores_frame(scores, blocks)
    kinds = list(dict.fromkeys(frame["kind"]))
    heatmap = style == "heatmap"
    fig, axes = _figure(len(kinds), width=4.2, height=3.8, wspace=0.3, right=1.3 if heatmap else 0.2)
    if heatmap:  # one colour bar for all panels (they share the scale), in the right margin
        w, h = fig.get_size_inches()
        colorbar = fig.add_axes((1 - 1.05 / w, 0.6 / h, 0.15 / w, 1 - 1.0 / h))
    edges = np.linspace(0.0, frame["wd"].max() * 1.0001, bins + 1)
    for ax, kind in zip(axes, kinds):
        part = frame[frame["kind"] == kind]
        if style == "violin":
            sns.violinplot(data=part, x="block", y="wd", ax=ax, density_norm="width", cut=0, inner=None,
                           linewidth=0.5, color=sns.color_palette(PALETTE)[0])
            ax.set_ylabel("WD")
            step = max(1, part["block"].nunique() // 10)
            for i, label in enumerate(ax.get_xticklabels()):
                label.set_visible(i % step == 0)
        else:
            grid = share_grid(part, edges)
            share = grid.to_numpy().T
            with np.errstate(divide="ignore"):
                sns.heatmap(np.log10(share), mask=share == 0, ax=ax, cmap="mako_r", cbar=ax is axes[-1],
                            cbar_ax=colorbar if ax is axes[-1] else None,
                            cbar_kws={"label": "log10 share of the layer's neurons (blank: none)"},
                            xticklabels=max(1, grid.shape[0] // 10), yticklabels=False, vmin=-4, vmax=0)
            ax.invert_yaxis()
            ticks = np.linspace(0, bins, 5)
            ax.set_yticks(ticks)
            ax.set_yticklabels([f"{edges[0] + t * (edges[1] - edges[0]):.2f}" for t in ticks])
            ax.set_xticklabels([str(b) for b in grid.index[::max(1, grid.shape[0] // 10)]])
            ax.set_ylabel("WD")
        ax.set_xlabel("block")
        ax.set_title(kind, fontsize=10)
    return fig


def share_grid(frame: pd.DataFrame, edges: np.ndarray) -> pd.DataFrame:
    """Share of each block's neurons per WD bin: rows = blocks (sorted), columns = bins (rows sum to 1)."""
    rows = {}
    for block, part in frame.groupby("block"):
        counts, _ = np.histogram(part["wd"].to_numpy(), bins=edges)
        rows[block] = counts / max(1, counts.sum())
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


# ---------------------------------------------------------------- sparsity and Sparse Expansion views

def histogram_grid(series: Mapping[str, object], standardize_by: str | None = "each",
                   weights: Mapping[str, float] | None = None, ncols: int = 4, bins: int = 50,
                   title: str | None = None, width: float = 3.2, height: float = 2.5) -> Figure:
    """One :func:`output_histogram` panel per series (dense / SparseGPT / expansion side by side, or one
    panel per expert). With ``standardize_by="first"`` every panel uses the first series' mean and std,
    so shifts show; ``weights`` (e.g. token shares) go into the panel titles."""
    if not series:
        raise WnbError("histogram_grid needs at least one series")
    labels = list(series)
    ncols = min(ncols, len(labels))
    nrows = -(-len(labels) // ncols)
    fig = Figure(figsize=(width * ncols, height * nrows + (0.35 if title else 0)))
    top = 1 - (0.75 if title else 0.4) / (height * nrows + (0.35 if title else 0))
    fig.subplots_adjust(left=0.5 / (width * ncols), right=1 - 0.1 / (width * ncols), bottom=0.45 / (height * nrows),
                        top=top, wspace=0.3, hspace=0.55)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    first = _numpy(series[labels[0]])
    for ax, label in zip(axes, labels):
        share = f" · {weights[label]:.0%} of tokens" if weights and label in weights else ""
        if _numpy(series[label]).size < 2:  # an expert no held-out token reached: say so, do not drop it
            ax.text(0.5, 0.5, "no held-out tokens" if _numpy(series[label]).size == 0 else "1 held-out token",
                    ha="center", va="center", transform=ax.transAxes, fontsize=9, color="#666")
            ax.set_title(f"{label}{share}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        output_histogram({label: series[label]}, standardize_by=standardize_by, bins=bins, ax=ax, reference=first)
        ax.set_xlabel(f"standardized by {labels[0]}" if standardize_by == "first" else ax.get_xlabel(), fontsize=8)
        ax.set_title(f"{label}{share}", fontsize=9)
        ax.set_ylabel("density" if ax in axes[::ncols] else "", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend():
            ax.get_legend().remove()
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def sparsity_value(label: str) -> float:
    """The fraction of zeros of a sparsity label (``"50%"`` → 0.5, ``"2:4"`` → 0.5)."""
    from wnb.compression.sparsity import parse_sparsity

    return parse_sparsity(label)[0]


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
    fig, (ax,) = _figure(width=5.4, height=3.8)
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
    _finish(ax, title)
    return fig


def ablation_bars(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Perplexity after sparsifying a few neurons per layer chosen by each criterion (paper Fig. 3),
    from :func:`wnb.ablation`; the WD bar is highlighted and the dense perplexity is a dashed line."""
    for column in ("criterion", "perplexity"):
        if column not in table.columns:
            raise WnbError(f"the ablation table has no column {column!r}")
    fig, (ax,) = _figure(width=5.4, height=3.8)
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
    _finish(ax, title, legend=False)
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
    fig, (ax,) = _figure(width=max(4.0, 1.4 * len(tasks) * len(models) / 2 + 2), height=3.6)
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
    _finish(ax, title, legend=False)
    return fig


def before_after(table: pd.DataFrame, metrics=("wd", "md"), highlight: Sequence[int] = (),
                 title: str | None = None) -> Figure:
    """Per-neuron ``<metric>_before`` vs ``<metric>_after`` (paper Fig. 5), one panel per metric, with
    the line y = x and the median ratio after / before in the panel title."""
    metrics = [m for m in metrics if f"{m}_before" in table.columns and f"{m}_after" in table.columns]
    if not metrics:
        raise WnbError("the table has no <metric>_before / <metric>_after columns (see wnb.entanglement_change)")
    fig, axes = _figure(len(metrics), width=4.2, height=3.8, wspace=0.35, suptitle=bool(title))
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


# ---------------------------------------------------------------- sign ablation (the follow-up, issue 12)

def _sign_palette() -> dict[str, tuple]:
    blue, orange, green, red = sns.color_palette(PALETTE)[:4]
    return {"dense": (0.45, 0.45, 0.45), "wasserstein": orange, "random": blue, "matched": green, "other": red}


def sign_label(selection: str, seed=None) -> str:
    """A row of :func:`wnb.sign_ablation_study` in words: ``"dense"``, ``"wasserstein"``, ``"random s1"``."""
    return selection if seed is None or pd.isna(seed) or selection in ("dense", "wasserstein") else f"{selection} s{int(seed)}"


def sign_ablation_bars(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Held-out perplexity of every row of :func:`wnb.sign_ablation_study` (dense, Wasserstein, each
    random seed, matched), one bar per row with its 95% interval (``ppl_low``/``ppl_high`` when present)
    and its neuron count under the label; the dense perplexity is a dashed line."""
    for column in ("selection", "perplexity", "n_neurons"):
        if column not in table.columns:
            raise WnbError(f"the sign-ablation table has no column {column!r}")
    palette = _sign_palette()
    seeds = table["seed"] if "seed" in table.columns else pd.Series([None] * len(table))
    labels = [f"{sign_label(s, seed)}\n{int(n):,} neurons" for s, seed, n in
              zip(table["selection"], seeds, table["n_neurons"])]
    fig, (ax,) = _figure(width=max(5.0, 1.0 * len(table) + 1), height=3.8)
    intervals = {"ppl_low", "ppl_high"} <= set(table.columns)
    values = table["perplexity"].to_numpy(float)
    yerr = None
    if intervals:
        yerr = np.clip(np.vstack([values - table["ppl_low"].to_numpy(float),
                                  table["ppl_high"].to_numpy(float) - values]), 0, None)
    ax.bar(range(len(table)), values, color=[palette.get(s, palette["other"]) for s in table["selection"]],
           yerr=yerr, capsize=3, error_kw={"linewidth": 1, "ecolor": "#333"})
    tops = table["ppl_high"].to_numpy(float) if intervals else values
    for x, (value, top) in enumerate(zip(values, tops)):
        ax.text(x, top, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(table)), labels, fontsize=8)
    dense = table[table["selection"] == "dense"]
    if len(dense):
        ax.axhline(dense["perplexity"].iloc[0], color="black", linestyle="--", linewidth=1, label="dense")
        ax.legend(fontsize=8, frameon=False, loc="upper left")
    low = (table["ppl_low"] if intervals else table["perplexity"]).min()
    ax.set_ylim(low * 0.95, np.nanmax(tops) * 1.08)
    ax.set_ylabel("perplexity (held out" + (", 95% interval)" if intervals else ")"))
    _finish(ax, title, legend=False)
    return fig


def minimal_pair_bars(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Minimal-pair accuracy per phenomenon (the ``accuracy_<phenomenon>`` columns of
    :func:`wnb.sign_ablation_study`) for each selection, grouped by phenomenon; several rows of one
    selection (the random seeds) are averaged and their range drawn as an error bar. Chance (0.5) is
    a dotted line."""
    columns = [c for c in table.columns if c.startswith("accuracy_")]
    if not columns:
        raise WnbError("the table has no accuracy_<phenomenon> columns; run the study with pairs=")
    phenomena = [c.removeprefix("accuracy_") for c in columns]
    grouped = table.groupby("selection", sort=False)[columns]
    mean, low, high = grouped.mean(), grouped.min(), grouped.max()
    counts = grouped.size()
    palette = _sign_palette()
    fig, (ax,) = _figure(width=max(6.0, 1.1 * len(phenomena) + 1.5), height=3.8, right=1.6)
    width = 0.8 / len(mean)
    x = np.arange(len(phenomena))
    for i, selection in enumerate(mean.index):
        m = mean.loc[selection].to_numpy(float)
        err = None
        if counts[selection] > 1:
            err = np.clip(np.vstack([m - low.loc[selection].to_numpy(float),
                                     high.loc[selection].to_numpy(float) - m]), 0, None)
        label = selection + (f" (mean of {counts[selection]})" if counts[selection] > 1 else "")
        ax.bar(x - 0.4 + width * (i + 0.5), m, width, yerr=err, capsize=2, label=label,
               color=palette.get(selection, palette["other"]), error_kw={"linewidth": 1, "ecolor": "#333"})
    ax.axhline(0.5, color="black", linestyle=":", linewidth=1)
    ax.set_xticks(x, [p.replace("_", "\n") for p in phenomena], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("minimal-pair accuracy")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _finish(ax, title, legend=False)
    return fig


def surprisal_bars(table: pd.DataFrame, by: str = "token_class", title: str | None = None) -> Figure:
    """Mean Δ NLL per token class (or group) from :func:`wnb.surprisal_by_class` tables, one bar per
    ``selection`` (Wasserstein, matched) with ±1 standard error; the class's share of the tokens is in
    its label."""
    for column in (by, "delta_nll"):
        if column not in table.columns:
            raise WnbError(f"the surprisal table has no column {column!r}")
    if "selection" not in table.columns:
        table = table.assign(selection="ablated")
    classes = list(dict.fromkeys(table[by]))
    selections = list(dict.fromkeys(table["selection"]))
    palette = _sign_palette()
    fig, (ax,) = _figure(width=max(5.5, 0.75 * len(classes) + 1.5), height=3.8, right=1.4)
    width = 0.8 / len(selections)
    x = np.arange(len(classes))
    for i, selection in enumerate(selections):
        part = table[table["selection"] == selection].set_index(by).reindex(classes)
        err = part["delta_sem"].to_numpy(float) if "delta_sem" in part.columns else None
        ax.bar(x - 0.4 + width * (i + 0.5), part["delta_nll"].to_numpy(float), width, yerr=err, capsize=2,
               label=selection, color=palette.get(selection, palette["other"]),
               error_kw={"linewidth": 1, "ecolor": "#333"})
    first = table[table["selection"] == selections[0]].set_index(by).reindex(classes)
    labels = [f"{c}\n{s:.0%}" for c, s in zip(classes, first["token_share"])] if "token_share" in first.columns else classes
    ax.set_xticks(x, labels, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("Δ NLL per token (nats)")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _finish(ax, title, legend=False)
    return fig


def depth_profile(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Δ perplexity per block of :func:`wnb.sign_ablation_depth`: the ablation of that block's layer
    alone and of layers 0..l (cumulative), with the sum of the single-layer Δ as a dotted line."""
    for column in ("mode", "block", "delta_perplexity"):
        if column not in table.columns:
            raise WnbError(f"the depth table has no column {column!r}")
    palette = _sign_palette()
    fig, (ax,) = _figure(width=6.0, height=3.8, right=1.6)
    single = table[table["mode"] == "layer"]
    cumulative = table[table["mode"] == "cumulative"]
    ax.plot(single["block"].to_numpy(float), single["delta_perplexity"].to_numpy(float), marker="o", markersize=3,
            color=palette["wasserstein"], label="this layer alone")
    if len(cumulative):
        ax.plot(cumulative["block"].to_numpy(float), cumulative["delta_perplexity"].to_numpy(float), marker="s",
                markersize=3, color=palette["random"], label="layers 0..l")
        ax.plot(single["block"].to_numpy(float), np.cumsum(single["delta_perplexity"].to_numpy(float)),
                linestyle=":", color="#555", label="sum of single layers")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("block")
    ax.set_ylabel("Δ perplexity")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _finish(ax, title, legend=False)
    return fig
