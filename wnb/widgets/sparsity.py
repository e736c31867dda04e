"""Sparsity: one layer pruned, per-neuron errors, perplexity sweeps and the Fig. 3 ablation."""
from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as widgets
import pandas as pd

from wnb import plots
from wnb.app.budgets import SCOPES
from wnb.app.limits import BOUNDS, MAX_SPARSITIES, bounded
from wnb.compression.quantize import effective_bits
from wnb.compression.sparsity import parse_sparsity
from wnb.errors import WnbError
from wnb.widgets.layer_panel import LayerNeuronPanel
from wnb.widgets.links import csv_link, png_link, slug
from wnb.widgets.messages import cost_message

SWEEP_METHODS = ("magnitude", "wanda", "sparsegpt")

if TYPE_CHECKING:
    from wnb.widgets.settings import Settings


def parse_sparsities(text: str) -> list[str]:
    """``"0.3, 0.5, 2:4"`` → ``["0.3", "0.5", "2:4"]``, each checked by wnb's sparsity parser."""

    items = [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]
    if not items:
        raise WnbError("give at least one sparsity, e.g. 0.3, 0.5, 0.7, 2:4")
    if len(items) > MAX_SPARSITIES:
        raise WnbError(f"a sweep takes at most {MAX_SPARSITIES} sparsities (got {len(items)})")
    for item in items:
        parse_sparsity(item)
    return items


def scope_title(scope: str, layers: list[str]) -> str:
    """What a whole-model run changed, in words for headings: the layer, its block, or every FFN layer."""
    if scope == "layer":
        return f"{layers[0]} only"
    if scope == "block":
        return f"the {len(layers)} FFN layers of the selected layer's block"
    return f"every FFN layer ({len(layers)})"


def bits_dropdown() -> widgets.Dropdown:
    """Joint quantization of the kept weights (``bits=`` of pruning and expansion), off by default."""
    # 0 stands for "not quantized": a Dropdown's value None means "nothing selected" on the page
    bits = widgets.Dropdown(options=[("not quantized", 0), ("8-bit", 8), ("4-bit", 4), ("3-bit", 3),
                                     ("2-bit", 2)], value=0, description="weights",
                            layout=widgets.Layout(width="220px"))
    bits.add_class("wnb-bits")
    return bits


def bits_of(dropdown: widgets.Dropdown) -> int | None:
    """The ``bits=`` a :func:`bits_dropdown` stands for (None: not quantized)."""
    return dropdown.value or None


def bits_tag(dropdown: widgets.Dropdown) -> str:
    """The part of a download's name for a :func:`bits_dropdown`: ``"4bit_"``, or ``""`` unquantized."""
    return f"{dropdown.value}bit_" if dropdown.value else ""


def scope_dropdown(value: str) -> widgets.Dropdown:
    scope = widgets.Dropdown(options=[(text, key) for key, text in SCOPES.items()], value=value,
                             description="layers", layout=widgets.Layout(width="420px"))
    scope.add_class("wnb-scope")
    return scope


# ---------------------------------------------------------------- sparsity

class SparsityView(LayerNeuronPanel):
    """Prune the selected layer (magnitude / Wanda / SparseGPT, unstructured or N:M) and look at the
    per-neuron error against WD and the selected neuron's dense vs pruned histograms; run whole-model
    perplexity-vs-sparsity sweeps and the paper's Fig. 3 ablation."""

    def __init__(self, settings: Settings, lazy: bool = False):
        self.method = widgets.ToggleButtons(options=["magnitude", "wanda", "sparsegpt"], value="sparsegpt",
                                            description="method")
        self.sparsity = widgets.FloatSlider(value=0.5, min=BOUNDS["sparsity"][0], max=BOUNDS["sparsity"][1], step=0.05,
                                            description="sparsity",
                                            continuous_update=False, readout_format=".0%")
        self.pattern = widgets.Dropdown(options=["unstructured", "2:4", "4:8"], value="unstructured",
                                        description="pattern", layout=widgets.Layout(width="220px"))
        self.bits = bits_dropdown()
        self.hist_out = widgets.Output()
        self.error_out = widgets.Output()
        self.scope = scope_dropdown(settings.session.budget.scope)
        self.sparsities = widgets.Text(value=settings.session.budget.sweep, description="sparsities",
                                       continuous_update=False, layout=widgets.Layout(width="320px"))
        self.run_sweep = widgets.Button(description="Run sweep", icon="play", button_style="primary",
                                        layout=widgets.Layout(width="auto", min_width="120px"))
        self.sweep_out = widgets.Output()
        self.sweep_table = widgets.HTML()
        self.fraction = widgets.BoundedFloatText(value=0.03, min=BOUNDS["ablation_fraction"][0],
                                                 max=BOUNDS["ablation_fraction"][1], step=0.01, description="neurons",
                                                 layout=widgets.Layout(width="180px"))
        self.ablation_sparsity = widgets.FloatSlider(value=0.9, min=BOUNDS["ablation_sparsity"][0],
                                                     max=BOUNDS["ablation_sparsity"][1], step=0.01, readout_format=".0%",
                                                     description="of their weights", continuous_update=False,
                                                     style={"description_width": "110px"})
        self.run_ablation = widgets.Button(description="Run ablation", icon="play", button_style="primary")
        self.ablation_out = widgets.Output()
        self.ablation_table = widgets.HTML()
        for part, name in ((self.hist_out, "pruned-histogram"), (self.error_out, "errors"), (self.sweep_out, "sweep"),
                           (self.ablation_out, "ablation")):
            part.add_class(f"wnb-{name}")
        self.result: object = None
        self.sweep_result: pd.DataFrame | None = None
        self.ablation_result: pd.DataFrame | None = None
        super().__init__(
            settings,
            controls=[widgets.HBox([self.method, self.pattern, self.bits]), self.sparsity],
            body=[widgets.HBox([self.hist_out, self.error_out]),
                  widgets.HTML("<h4>Whole model: perplexity vs sparsity</h4>"),
                  widgets.HBox([self.scope, self.sparsities, self.run_sweep],
                               layout=widgets.Layout(flex_flow="row wrap")), self.sweep_out, self.sweep_table,
                  widgets.HTML("<h4>Which neurons hurt most when sparsified (paper Fig. 3)</h4>"
                               "<p>Sparsify only a fraction of the neurons of every chosen layer, picked by WD, "
                               "at random, by output mean, by variance or by weight norm.</p>"),
                  widgets.HBox([self.fraction, self.ablation_sparsity, self.run_ablation]),
                  self.ablation_out, self.ablation_table],
            head_text="Prune the layer on its calibration tokens and compare its outputs on held-out tokens.",
            lazy=lazy)
        self.buttons = [self.run_sweep, self.run_ablation]
        self.add_class("wnb-sparsity")
        for control in (self.method, self.sparsity, self.pattern, self.bits):
            control.observe(self.callback(lambda _: self.recompute() if self.view is not None else None),
                            names="value")
        self.pattern.observe(lambda change: setattr(self.sparsity, "disabled", change["new"] != "unstructured"),
                             names="value")
        self.job_button(self.run_sweep, "perplexity sweep", lambda job: self.compute_sweep(job))
        self.job_button(self.run_ablation, "ablation", lambda job: self.compute_ablation(job))

    @property
    def sparsity_value(self):
        """The pattern, or the slider's sparsity checked against the server's bounds."""
        return bounded("sparsity", self.sparsity.value) if self.pattern.value == "unstructured" else self.pattern.value

    def recompute(self) -> None:
        view = self._need_view()
        with self.busy(f"pruning {view.name} with {self.method.value}…"):
            self.result = self.session.prune_view(view.name, self.method.value, self.sparsity_value, progress=self.bars,
                                                  bits=bits_of(self.bits))
        self.redraw()
        self.info(f"{view.name} pruned alone with {self.result.method} at {self.result.sparsity}; errors on "
                  f"{self.result.dense.shape[0]:,} held-out tokens")

    def redraw(self) -> None:
        result = self.current()
        if result is None:
            return
        neuron = self.neuron
        row = result.errors[result.errors["neuron"] == neuron].iloc[0]
        bits = bits_of(self.bits)
        storage = ""
        if bits is not None:  # what the pruned and quantized layer costs per weight
            columns = self._need_view().inputs.shape[1]
            storage = f" · {effective_bits(bits, self.sparsity_value, columns=columns):.2f} bits per weight"
        self.summary.value = (f"<b>neuron {neuron}</b> · WD rank {int(row['rank'])} · WD {row['wd']:.4f} · "
                              f"{result.method} {result.sparsity}{storage}: held-out RMSE {row['rmse']:.4g} "
                              f"({row['rel_rmse']:.1%} of the dense std), distribution shift {row['shift']:.4g}")
        name = f"{self.short_name()} · neuron {neuron}"
        hist = plots.output_histogram({"dense": result.dense[:, neuron],
                                       f"{result.method} {result.sparsity}": result.pruned[:, neuron]},
                                      standardize_by="first", title=f"{name}: dense vs pruned (held out)")
        self.draw_figure("histogram", self.hist_out, hist)
        top = self._need_view().wasserstein_neurons()
        scatter = plots.neuron_scatter(result.errors, "wd", "rel_rmse", highlight=top, selected=neuron,
                                       title=f"{self.short_name()}: error after pruning vs WD")
        self.draw_figure("error_vs_wd", self.error_out, scatter)
        self._links()

    def compute_sweep(self, job=None) -> None:
        layers = self.session.scope_layers(self.scope.value, self.layer.value)
        sparsities = parse_sparsities(self.sparsities.value)
        cost = self.session.sweep_cost(SWEEP_METHODS, sparsities, layers, bits=bits_of(self.bits))
        if not self.confirmed(f"sweep {layers} {sparsities} {self.bits.value}", cost,
                              cost_message(cost, "this sweep", "Run sweep")):
            return
        with self.busy(f"pruning {len(layers)} layer(s) with 3 methods × {len(sparsities)} sparsities and "
                       "measuring perplexity (cached afterwards)…"):
            self.sweep_result = self.session.sweep(SWEEP_METHODS, sparsities, layers, progress=self.bars,
                                                   on_run=job.begin if job else None, bits=bits_of(self.bits))
        self.sweep_scope = scope_title(self.scope.value, layers)
        fig = plots.perplexity_curves(self.sweep_result, title=f"pruned: {self.sweep_scope}")
        self.draw_figure("sweep", self.sweep_out, fig)
        self.sweep_table.value = self.sweep_result.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
        self.info(f"sweep done: {len(self.sweep_result)} runs, {self.sweep_scope} pruned")
        self._links()

    def compute_ablation(self, job=None) -> None:
        layers = self.session.scope_layers(self.scope.value, self.layer.value)
        fraction = bounded("ablation_fraction", self.fraction.value)
        sparsity = bounded("ablation_sparsity", self.ablation_sparsity.value)
        cost = self.session.ablation_cost(layers, fraction, sparsity)
        if not self.confirmed(f"ablation {layers} {fraction} {sparsity}", cost,
                              cost_message(cost, "this ablation", "Run ablation")):
            return
        with self.busy(f"sparsifying {fraction:.1%} of the neurons of {len(layers)} layer(s), 5 ways…"):
            self.ablation_result = self.session.ablation(layers, fraction, sparsity,
                                                         progress=self.bars, on_run=job.begin if job else None)
        self.ablation_scope = scope_title(self.scope.value, layers)
        fig = plots.ablation_bars(self.ablation_result, title=f"{self.fraction.value:.0%} of the neurons of "
                                  f"{self.ablation_scope} at {self.ablation_sparsity.value:.0%} sparsity")
        self.draw_figure("ablation", self.ablation_out, fig)
        self.ablation_table.value = self.ablation_result.to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                                                 border=0)
        self.info("ablation done")
        self._links()

    def file_stem(self) -> str:
        result = self.current()
        what = f"_{result.method}_{slug(result.sparsity)}" if result is not None else ""
        return f"{slug(self.layer.value)}_neuron{self.neuron}{what}_{self.settings_tag()}"

    def _links(self) -> None:
        stem, tag, scope = self.file_stem(), self.settings_tag(), slug(self.scope.value)
        links = []
        if self.result is not None:
            links.append(csv_link(self.result.errors, f"errors_{stem}.csv"))
        if self.sweep_result is not None:
            links.append(csv_link(self.sweep_result, f"sparsity_sweep_{slug(self.layer.value)}_{scope}_"
                                                     f"{slug(self.sparsities.value)}_{bits_tag(self.bits)}{tag}.csv"))
        if self.ablation_result is not None:
            links.append(csv_link(self.ablation_result, f"ablation_{slug(self.layer.value)}_{scope}_"
                                                        f"{self.fraction.value:g}_{self.ablation_sparsity.value:g}_{tag}.csv"))
        links += [png_link(png, f"{kind}_{stem}.png") for kind, png in self.pngs.items()]
        self.downloads.value = " · ".join(links)
