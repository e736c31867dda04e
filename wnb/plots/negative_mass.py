"""Where the negative mass sits: the share of WD below the raw zero per layer, one line per model (activation)."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from wnb.errors import WnbError
from wnb.plots.figure import PALETTE, finish, new_figure


def negative_mass_plot(tables, title: str | None = None) -> Figure:
    """``share_below_zero`` of every layer (solid) and ``top_share_below_zero``, the Wasserstein neurons' (dashed),
    against relative depth (block / last block), from :func:`wnb.scoring.negative_mass.negative_mass` tables:
    one table, or ``{label: table}`` for several models (e.g. a SiLU model beside a ReLU one). Each label
    carries its activation. The dotted line at 0.5 is an even split."""
    if isinstance(tables, pd.DataFrame):
        tables = {tables.attrs.get("model", "model"): tables}
    if not isinstance(tables, Mapping) or not tables:
        raise WnbError("negative_mass_plot needs a negative_mass table or {label: table}")
    colours = sns.color_palette(PALETTE, len(tables))
    fig, (ax,) = new_figure(width=5.5, height=3.6, right=1.8)
    for colour, (label, table) in zip(colours, tables.items()):
        for column in ("block", "share_below_zero", "top_share_below_zero", "activation"):
            if column not in table.columns:
                raise WnbError(f"the table of {label!r} has no column {column!r} (make it with negative_mass)")
        blocks = table["block"].to_numpy(float)
        depth = blocks / blocks.max() if len(blocks) > 1 and blocks.max() > 0 else np.zeros_like(blocks)
        acts = "/".join(dict.fromkeys(table["activation"]))
        ax.plot(depth, table["share_below_zero"], marker="o", markersize=3, color=colour, label=f"{label} ({acts})")
        ax.plot(depth, table["top_share_below_zero"], linestyle="--", color=colour, label=f"{label}: top neurons")
    ax.axhline(0.5, color="black", linestyle=":", linewidth=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("relative depth (block / last block)")
    ax.set_ylabel("share of WD below y = 0")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    finish(ax, title, legend=False)
    return fig
