"""A claim's comparisons as a forest plot: each estimate with its 95% interval, the null of no effect and
the band of effects too small to count (the declared minimum), shaded on the paper's side."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from wnb.errors import WnbError
from wnb.plots.figure import finish, new_figure

VERDICT_COLORS = {"holds": "#1a7f37", "reversed": "#b42318", "not observed": "#7a5c00", "inconclusive": "#57606a",
                  "not run": "#8c959f"}


def claim_forest(detail: pd.DataFrame, title: str | None = None, null: float = 0.0, minimum: float | None = None,
                 direction: str = "greater", verdict: str | None = None) -> Figure:
    """One row per comparison of ``detail`` (``label, value, low, high``): the estimate and its interval;
    a solid line at ``null``, dotted lines at ``null ± minimum`` and the paper's side shaded."""
    for column in ("label", "value", "low", "high"):
        if column not in detail.columns:
            raise WnbError(f"the claim's detail table has no column {column!r}")
    longest = max((len(str(label)) for label in detail["label"]), default=0)
    left = max(0.75, 0.068 * longest + 0.2)  # inches for the row labels at 8 pt, so none is cut
    fig, (ax,) = new_figure(width=5.6 + left - 0.75, height=max(1.6, 0.26 * len(detail) + 1.1), right=0.3)
    fig.subplots_adjust(left=left / fig.get_figwidth())
    y = np.arange(len(detail))[::-1]
    value = detail["value"].to_numpy(float)
    low, high = detail["low"].to_numpy(float), detail["high"].to_numpy(float)
    color = VERDICT_COLORS.get(verdict, "#24292f")
    ax.errorbar(value, y, xerr=np.vstack([np.clip(value - low, 0, None), np.clip(high - value, 0, None)]), fmt="o",
                color=color, ecolor=color, capsize=3, linewidth=1.4)
    ax.axvline(null, color="black", linewidth=1)
    span = np.nanmax(np.abs(np.concatenate([low, high, value]) - null)) if len(detail) else 1.0
    span = span if np.isfinite(span) and span > 0 else 1.0
    if minimum:
        for edge in (null - minimum, null + minimum):
            ax.axvline(edge, color="black", linewidth=0.8, linestyle=":")
    side = (null, null + 1.15 * span) if direction == "greater" else (null - 1.15 * span, null)
    ax.axvspan(*side, color="#1a7f37", alpha=0.07, linewidth=0)
    ax.set_xlim(null - 1.15 * span, null + 1.15 * span)
    ax.set_yticks(y)
    ax.set_yticklabels(detail["label"].astype(str), fontsize=8)
    ax.set_ylim(-0.7, len(detail) - 0.3)
    ax.set_xlabel("estimate, 95% interval (shaded: the paper's side; dotted: the minimum effect)", fontsize=8)
    finish(ax, title, legend=False)
    return fig
