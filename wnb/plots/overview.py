"""The model overview: WD of every neuron of every FFN layer per block, as a heat map or violins."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from wnb.errors import WnbError
from wnb.model.architectures import block_index
from wnb.plots.figure import PALETTE, as_values, new_figure
from wnb.plots.histograms import share_grid


def scores_frame(scores: Mapping[str, torch.Tensor], blocks: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Long table of per-layer WD scores: one row per (layer, neuron) with ``block`` and ``kind``; NaN dropped."""
    frames = []
    for name, wd in scores.items():
        values = as_values(wd)
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
    fig, axes = new_figure(len(kinds), width=4.2, height=3.8, wspace=0.3, right=1.3 if heatmap else 0.2)
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
