"""Output histograms of a neuron against N(0, 1): dense, pruned, expanded, and one per expert (paper Fig. 1, 6, 1f)."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from scipy import stats

from wnb.core.stats import standardize
from wnb.errors import WnbError
from wnb.plots.figure import (
    GAUSSIAN_LABEL,
    PALETTE,
    as_values,
    density,
    finish,
    new_figure,
)


def standardized(values, reference=None) -> np.ndarray:
    """:func:`wnb.core.stats.standardize` of one neuron's outputs for a histogram; refused for a constant
    neuron (nothing to draw against N(0, 1))."""
    z = standardize(as_values(values), None if reference is None else as_values(reference))
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
    first = as_values(next(iter(series.values())) if reference is None else reference)
    data = {}
    for label, values in series.items():
        if standardize_by == "each":
            data[label] = standardized(values)
        elif standardize_by == "first":
            data[label] = standardized(values, first)
        else:
            data[label] = as_values(values)
    if ax is None:
        fig, (ax,) = new_figure()
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
    finish(ax, title)
    return fig


def share_grid(frame: pd.DataFrame, edges: np.ndarray) -> pd.DataFrame:
    """Share of each block's neurons per WD bin: rows = blocks (sorted), columns = bins (rows sum to 1)."""
    rows = {}
    for block, part in frame.groupby("block"):
        counts, _ = np.histogram(part["wd"].to_numpy(), bins=edges)
        rows[block] = counts / max(1, counts.sum())
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


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
    first = as_values(series[labels[0]])
    for ax, label in zip(axes, labels):
        share = f" · {weights[label]:.0%} of tokens" if weights and label in weights else ""
        if as_values(series[label]).size < 2:  # an expert no held-out token reached: say so, do not drop it
            ax.text(0.5, 0.5, "no held-out tokens" if as_values(series[label]).size == 0 else "1 held-out token",
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
