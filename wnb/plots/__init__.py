"""Figures of every view (seaborn): one module per kind of view, each function taking tables or tensors
and returning a matplotlib Figure; :func:`to_png` renders one.

May import: every package except wnb.app, wnb.widgets and wnb.cli."""
from wnb.plots.claims import VERDICT_COLORS, claim_forest
from wnb.plots.figure import GAUSSIAN_LABEL, LABELS, PALETTE, density, to_png
from wnb.plots.histograms import (
           histogram_grid,
           output_histogram,
           share_grid,
           standardized,
)
from wnb.plots.interventions import intervention_bars
from wnb.plots.overview import scores_frame, wd_overview
from wnb.plots.scatter import before_after, neuron_scatter, pair_scatter
from wnb.plots.sign import (
           depth_profile,
           minimal_pair_bars,
           sign_ablation_bars,
           sign_label,
           surprisal_bars,
)
from wnb.plots.sweeps import ablation_bars, perplexity_curves, task_bars

__all__ = ["ablation_bars", "before_after", "claim_forest", "density", "depth_profile", "GAUSSIAN_LABEL", "histogram_grid", "intervention_bars", "LABELS",
           "minimal_pair_bars", "neuron_scatter", "output_histogram", "PALETTE", "pair_scatter", "perplexity_curves",
           "scores_frame", "share_grid", "sign_ablation_bars", "sign_label", "standardized", "surprisal_bars",
           "task_bars", "to_png", "VERDICT_COLORS", "wd_overview"]
