"""How stable a layer's top neurons by WD are: the set picked from one half of the calibration tokens
against the set picked from the other, disjoint half (:func:`wnb.scoring.layers.score_layers`' field
``wd_halves``). A top 1% that two halves of the data agree on is a property of the neurons; one they do
not agree on is partly a property of the sample."""
from __future__ import annotations

from typing import Mapping

import pandas as pd
import torch

from wnb.errors import WnbError
from wnb.scoring.wasserstein import top_neurons


def top_overlap(first: torch.Tensor, second: torch.Tensor, fraction: float) -> tuple[int, int]:
    """``(shared, k)``: how many of the top ``fraction`` of neurons by ``first`` are also in the top
    ``fraction`` by ``second`` (both sets of ``k`` neurons, as :func:`wnb.top_neurons` picks them)."""
    first, second = torch.as_tensor(first), torch.as_tensor(second)
    if first.shape != second.shape:
        raise WnbError(f"the two halves' scores differ in shape: {tuple(first.shape)} vs {tuple(second.shape)}")
    a, b = top_neurons(first, fraction), top_neurons(second, fraction)
    shared = len(set(a.tolist()) & set(b.tolist()))
    return shared, max(a.numel(), b.numel())


def set_stability(halves: Mapping, fraction: float) -> pd.DataFrame:
    """Per layer of ``halves`` (``{layer: [2, n_neurons]}`` WD on each half of the calibration tokens):
    ``layer, k`` (neurons in each half's top ``fraction``), ``shared`` (in both) and ``overlap`` =
    shared / k."""
    rows = []
    for name, wd in halves.items():
        wd = torch.as_tensor(wd)
        if wd.dim() != 2 or wd.shape[0] != 2:
            raise WnbError(f"halves[{name!r}] must be [2, n_neurons] (WD on each half), got {tuple(wd.shape)}")
        shared, k = top_overlap(wd[0], wd[1], fraction)
        rows.append({"layer": name, "k": k, "shared": shared, "overlap": shared / k if k else float("nan")})
    return pd.DataFrame(rows, columns=["layer", "k", "shared", "overlap"])


def stability_summary(table: pd.DataFrame) -> dict:
    """One line of a :func:`set_stability` table: ``top_overlap`` (shared / k over all layers),
    ``top_overlap_min`` (the least stable layer's) and ``top_overlap_layer`` (that layer)."""
    if not len(table):
        return {"top_overlap": float("nan"), "top_overlap_min": float("nan"), "top_overlap_layer": None}
    worst = table.loc[table["overlap"].idxmin()]
    return {"top_overlap": float(table["shared"].sum() / table["k"].sum()), "top_overlap_min": float(worst["overlap"]),
            "top_overlap_layer": worst["layer"]}


def stability_words(summary: Mapping, fraction: float) -> str:
    """A :func:`stability_summary` in words, for the command's summary and the tab."""
    if pd.isna(summary.get("top_overlap")):
        return "stability of the set not measured"
    return (f"the top {fraction:.1%} picked from two disjoint halves of the calibration tokens share "
            f"{summary['top_overlap']:.0%} of their neurons (least: {summary['top_overlap_min']:.0%}, "
            f"{summary['top_overlap_layer']})")
