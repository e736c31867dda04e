"""The interventions side by side (:func:`wnb.intervention_study`): each one's paired Δ perplexity to dense,
Wasserstein neurons beside random ones."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from wnb.errors import WnbError
from wnb.plots.figure import finish, new_figure
from wnb.plots.sign import sign_palette


def intervention_bars(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Δ perplexity (this row − dense, paired over the held-out windows, with its 95% interval) of every
    intervention of :func:`wnb.intervention_study`: the Wasserstein neurons' bar beside the random sets'
    (their mean over seeds, the bar's whiskers their range). Zero (no change) is the dashed line."""
    for column in ("intervention", "selection", "delta_perplexity"):
        if column not in table.columns:
            raise WnbError(f"the interventions table has no column {column!r} (make it with wnb.intervention_study)")
    rows = table[table["selection"] != "dense"]
    names = list(dict.fromkeys(rows["intervention"]))
    if not names:
        raise WnbError("the interventions table has no intervention rows")
    palette = sign_palette()
    fig, (ax,) = new_figure(width=max(4.5, 1.3 * len(names) + 1.5), height=3.6)
    width = 0.38
    for offset, selection in ((-width / 2, "wasserstein"), (width / 2, "random")):
        values, low, high = [], [], []
        for name in names:
            part = rows[(rows["intervention"] == name) & (rows["selection"] == selection)]
            v = part["delta_perplexity"].to_numpy(float)
            if selection == "wasserstein" and {"delta_ppl_low", "delta_ppl_high"} <= set(part.columns) and len(v):
                lo, hi = float(part["delta_ppl_low"].iloc[0]), float(part["delta_ppl_high"].iloc[0])
            else:
                lo, hi = (float(v.min()), float(v.max())) if len(v) else (np.nan, np.nan)
            values.append(float(v.mean()) if len(v) else np.nan)
            low.append(lo)
            high.append(hi)
        values = np.array(values)
        yerr = np.clip(np.vstack([values - np.array(low), np.array(high) - values]), 0, None)
        label = "Wasserstein (95% interval)" if selection == "wasserstein" else "random (mean, range over seeds)"
        ax.bar(np.arange(len(names)) + offset, values, width, yerr=yerr, capsize=3, label=label,
               color=palette.get(selection, palette["other"]), error_kw={"linewidth": 1, "ecolor": "#333"})
    ax.axhline(0, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("Δ perplexity vs dense (paired)")
    finish(ax, title)
    return fig
