"""The follow-up's figures: perplexity and grammar per selection, Δ surprisal by token class, the depth profile."""
from __future__ import annotations

import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from wnb.errors import WnbError
from wnb.plots.figure import PALETTE, finish, new_figure


def sign_palette() -> dict[str, tuple]:
    """The colour of each selection of the sign studies (dense grey, Wasserstein orange, its mirror purple, random
    blue, matched green)."""
    blue, orange, green, red, purple = sns.color_palette(PALETTE)[:5]
    return {"dense": (0.45, 0.45, 0.45), "wasserstein": orange, "mirror": purple, "random": blue, "matched": green,
            "other": red}


def sign_label(selection: str, seed=None) -> str:
    """A row of :func:`wnb.sign_ablation_study` in words: ``"dense"``, ``"wasserstein"``, ``"random s1"``."""
    return selection if seed is None or pd.isna(seed) or selection in ("dense", "wasserstein") else f"{selection} s{int(seed)}"


LOG_SPAN = 4.0  # the perplexity bars switch to a log axis when the highest is this many times the lowest


def sign_ablation_bars(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Held-out perplexity of every row of :func:`wnb.sign_ablation_study` (dense, Wasserstein, its mirror, each
    random seed, matched), one bar per row with its 95% interval (``ppl_low``/``ppl_high`` when present)
    and its neuron count under the label; the dense perplexity is a dashed line. The axis is logarithmic when the
    highest bar is more than :data:`LOG_SPAN` times the lowest (the mirror on SmolLM2: 1,790 against 23)."""
    for column in ("selection", "perplexity", "n_neurons"):
        if column not in table.columns:
            raise WnbError(f"the sign-ablation table has no column {column!r}")
    palette = sign_palette()
    seeds = table["seed"] if "seed" in table.columns else pd.Series([None] * len(table))
    sides = table["side"] if "side" in table.columns else pd.Series([None] * len(table))
    labels = [f"{sign_label(s, seed)}" + (f"\n({side} side)" if s == "mirror" and isinstance(side, str) else "")
              + f"\n{int(n):,} neurons" for s, seed, side, n in zip(table["selection"], seeds, sides, table["n_neurons"])]
    fig, (ax,) = new_figure(width=max(5.0, 1.0 * len(table) + 1), height=3.8)
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
    low, high = (table["ppl_low"] if intervals else table["perplexity"]).min(), np.nanmax(tops)
    log = high > LOG_SPAN * low  # e.g. the mirror: one row far above the rest would flatten them all
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(low * (0.8 if log else 0.95), high * (1.5 if log else 1.08))
    ax.set_ylabel("perplexity (held out" + (", 95% interval" if intervals else "") + (", log scale)" if log else ")"))
    finish(ax, title, legend=False)
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
    palette = sign_palette()
    fig, (ax,) = new_figure(width=max(6.0, 1.1 * len(phenomena) + 1.5), height=3.8, right=1.6)
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
    ax.set_xticks(x, [p.replace("/", "/\n").replace("_", "\n") for p in phenomena], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("minimal-pair accuracy")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    finish(ax, title, legend=False)
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
    palette = sign_palette()
    fig, (ax,) = new_figure(width=max(5.5, 0.75 * len(classes) + 1.5), height=3.8, right=1.4)
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
    finish(ax, title, legend=False)
    return fig


def depth_profile(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Δ perplexity per block of :func:`wnb.sign_ablation_depth`: the ablation of that block's layer
    alone and of layers 0..l (cumulative), with the sum of the single-layer Δ as a dotted line; when the
    table has minimal pairs, a second panel with Δ accuracy (points) of each layer alone per phenomenon."""
    for column in ("mode", "block", "delta_perplexity"):
        if column not in table.columns:
            raise WnbError(f"the depth table has no column {column!r}")
    grammar = [c for c in table.columns if c.startswith("delta_accuracy_")]
    palette = sign_palette()
    fig, axes = new_figure(ncols=2 if grammar else 1, width=6.0, height=3.8, right=1.6, wspace=0.45)
    ax = axes[0]
    single = table[table["mode"] == "layer"]
    cumulative = table[table["mode"] == "cumulative"]
    blocks = single["block"].to_numpy(float)
    ax.plot(blocks, single["delta_perplexity"].to_numpy(float), marker="o", markersize=3,
            color=palette["wasserstein"], label="this layer alone")
    if len(cumulative):
        ax.plot(cumulative["block"].to_numpy(float), cumulative["delta_perplexity"].to_numpy(float), marker="s",
                markersize=3, color=palette["random"], label="layers 0..l")
        ax.plot(blocks, np.cumsum(single["delta_perplexity"].to_numpy(float)),
                linestyle=":", color="#555", label="sum of single layers")
    ax.set_ylabel("Δ perplexity")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    if grammar:
        colors = sns.color_palette(PALETTE, len(grammar))
        for column, color in zip(grammar, colors):
            axes[1].plot(blocks, 100 * single[column].to_numpy(float), marker="o", markersize=3, color=color,
                         label=column.removeprefix("delta_accuracy_"))
        axes[1].set_ylabel("Δ accuracy, this layer alone (points)")
        axes[1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for a in axes:
        a.axhline(0, color="black", linewidth=0.8)
        a.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        a.set_xlabel("block")
        finish(a, None, legend=False)
    if title:
        axes[0].set_title(title, fontsize=10)
    return fig
