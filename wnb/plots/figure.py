"""The parts every figure shares: the labels and palette, a new figure built without pyplot (so figures
made in a widget callback are freed with their last reference and never pile up in a global figure
list), its finishing touches, histogram densities, and :func:`to_png` for widgets and downloads."""
from __future__ import annotations

import io

import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure

GAUSSIAN_LABEL = "N(0, 1)"
LABELS = {"wd": "WD", "md": "MD", "ri": "RI = RMSE SparseGPT / RMSE expansion", "rmse": "held-out RMSE",
          "rel_rmse": "held-out RMSE / dense std", "shift": "output shift (W1)", "mean": "output mean",
          "variance": "output variance"}
PALETTE = "deep"


def as_values(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).ravel()


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6, wspace: float = 0.28,
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



def finish(ax, title: str | None, legend: bool = True) -> None:
    """The common ending of a single-axes figure: optional title, small frameless legend, no top/right spines."""
    if title:
        ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=8, frameon=False)
    sns.despine(ax=ax)


def density(values, edges) -> np.ndarray:
    """Histogram heights as a density of *all* values: count / (n · bin width); values outside the
    edges are left out of the bars but still counted in n, so far tails lower the bars honestly."""
    x = as_values(values)
    counts, _ = np.histogram(x, bins=edges)
    return counts / (x.size * np.diff(edges))




# ---------------------------------------------------------------- sparsity and Sparse Expansion views



# ---------------------------------------------------------------- sign ablation (the follow-up, issue 12)


