"""Sparse Expansion: experts of one layer, RI vs WD, WD and MD before vs after, perplexity."""
from __future__ import annotations

import html
from typing import TYPE_CHECKING

import ipywidgets as widgets
import pandas as pd

from wnb import plots
from wnb.app.limits import BOUNDS, EXPERTS, bounded, experts
from wnb.app.report import SHOWN, contexts_block, section
from wnb.widgets.layer_panel import LayerNeuronPanel
from wnb.widgets.links import csv_link, png_link, slug
from wnb.widgets.messages import cost_message
from wnb.widgets.sparsity import bits_dropdown, bits_of, bits_tag, scope_dropdown
from wnb.widgets.tasks import TasksSection

if TYPE_CHECKING:
    from wnb.widgets.settings import Settings


class ExpansionView(LayerNeuronPanel):
    """Sparse Expansion of the selected layer: the neuron's dense / SparseGPT / expansion histograms,
    each expert's histogram with its token share (Fig. 1f), RI vs WD with R² (Fig. 7), WD and MD before
    vs after for the Wasserstein neurons (Fig. 5), and a perplexity table (dense, SparseGPT, expansion)."""

    def __init__(self, settings: Settings, lazy: bool = False):
        self.k = widgets.Dropdown(options=list(EXPERTS), value=16, description="experts",
                                  layout=widgets.Layout(width="180px"))
        self.sparsity = widgets.FloatSlider(value=0.5, min=BOUNDS["expansion_sparsity"][0],
                                            max=BOUNDS["expansion_sparsity"][1], step=0.05, description="sparsity",
                                            continuous_update=False, readout_format=".0%")
        self.bits = bits_dropdown()
        self.compare_out = widgets.Output()
        self.experts_out = widgets.Output()
        self.ri_out = widgets.Output()
        self.ri_table = widgets.HTML()
        self.change_out = widgets.Output()
        self.expert_reading = widgets.HTML()
        self.expert_reading.add_class("wnb-expert-reading")
        self.scope = scope_dropdown(settings.session.budget.scope)
        self.run_ppl = widgets.Button(description="Measure perplexity", icon="play", button_style="primary")
        self.ppl_table = widgets.HTML()
        for part, name in ((self.compare_out, "compare"), (self.experts_out, "experts"), (self.ri_out, "ri"),
                           (self.change_out, "change"), (self.ppl_table, "perplexity")):
            part.add_class(f"wnb-{name}")
        self.result = None
        self.ri: pd.DataFrame | None = None
        self.shares: pd.DataFrame | None = None
        self.change: pd.DataFrame | None = None
        self.ppl: pd.DataFrame | None = None
        self.tasks_box = widgets.VBox()
        super().__init__(
            settings,
            controls=[widgets.HBox([self.k, self.sparsity, self.bits])],
            body=[self.compare_out, self.experts_out, self.expert_reading,
                  widgets.HBox([self.ri_out, self.ri_table]), self.change_out,
                  widgets.HTML("<h4>Perplexity: dense, SparseGPT and Sparse Expansion</h4>"),
                  widgets.HBox([self.scope, self.run_ppl]), self.ppl_table, self.tasks_box],
            head_text="Cluster the layer's inputs (PCA + k-means) and give every cluster its own SparseGPT copy "
                      "of the weight; each token uses its cluster's expert.", lazy=lazy)
        self.buttons = [self.run_ppl]
        self.add_class("wnb-expansion")
        for control in (self.k, self.sparsity, self.bits):
            control.observe(self.callback(lambda _: self.recompute() if self.view is not None else None),
                            names="value")
        self.job_button(self.run_ppl, "expansion perplexity", lambda job: self.compute_perplexity(job))
        self.tasks = TasksSection(self)
        self.tasks_box.children = (self.tasks,)

    @property
    def k_value(self) -> int:
        return experts(self.k.value)

    @property
    def sparsity_value(self) -> float:
        return bounded("expansion_sparsity", self.sparsity.value)

    def clear(self) -> None:
        super().clear()
        self.ppl = None
        self.ppl_table.value = ""
        self.tasks.clear()

    def recompute(self) -> None:
        view = self._need_view()
        with self.busy(f"building {self.k.value} experts of {view.name} at {self.sparsity.value:.0%} sparsity "
                       "(cached afterwards)…"):
            study = self.session.study(view.name, self.k_value, self.sparsity_value, progress=self.bars,
                                       bits=bits_of(self.bits))
            tables = self.session.expansion_analysis(view.name, self.k_value, self.sparsity_value, progress=self.bars,
                                                     bits=bits_of(self.bits))
        self.result = study
        self.ri, self.shares, self.change = tables["ri"], tables["shares"], tables["change"]
        regression = tables["regression"]
        fig = plots.neuron_scatter(self.ri, "wd", "ri", highlight=view.wasserstein_neurons(),
                                   title=f"{self.short_name()}: RI vs WD, k = {self.k.value}")
        self.draw_figure("ri_vs_wd", self.ri_out, fig)
        self.ri_table.value = ("<b>RI = RMSE(SparseGPT) / RMSE(expansion)</b> regressed on each predictor:" +
                               regression.to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0))
        fig = plots.before_after(self.change,
                                 title=f"{self.short_name()}: top {len(self.change)} neurons by WD, before vs "
                                       f"after expansion")
        self.draw_figure("before_after", self.change_out, fig)
        self.redraw()
        small = [c for c, t in enumerate(study.expansion.tokens) if t < study.weight.shape[1]]
        self.info(f"{study.expansion.n_experts} experts of {view.name} at {self.sparsity.value:.0%} sparsity; "
                  f"RI and histograms on {study.held_inputs.shape[0]:,} held-out tokens" +
                  (f". Caution: {len(small)} of the experts rest on fewer calibration tokens than the layer has "
                   f"inputs ({study.weight.shape[1]}); their WD is biased upward by the small sample — compare "
                   f"'WD after' with the random-partition control in the before/after table" if small else ""))

    def redraw(self) -> None:

        study = self.current()
        if study is None:
            return
        neuron = self.neuron
        experts_of = self.session.expert_view(study.layer, neuron, self.k_value, self.sparsity_value,
                                              progress=self.bars, bits=bits_of(self.bits))
        frame = experts_of["outputs"]
        row = self.ri[self.ri["neuron"] == neuron].iloc[0]
        self.summary.value = (f"<b>neuron {neuron}</b> · WD rank {self.rank.value} · WD {row['wd']:.4f} · held-out "
                              f"RMSE SparseGPT {row['rmse_sparsegpt']:.4g}, expansion {row['rmse_expansion']:.4g} · "
                              f"<b>RI {row['ri']:.2f}</b>")
        name = f"{self.short_name()} · neuron {neuron}"
        fig = plots.histogram_grid({"dense": frame["dense"], "SparseGPT": frame["sparsegpt"],
                                    f"expansion, k = {study.expansion.n_experts}": frame["expansion"]},
                                   standardize_by="first", ncols=3, title=f"{name}: held-out outputs")
        self.draw_figure("dense_sparse_expansion", self.compare_out, fig)
        shares = dict(zip(self.shares["expert"], self.shares["share"]))
        groups = dict(iter(frame.groupby("expert")))
        empty = frame["expansion"].iloc[:0]
        experts = {f"expert {c}": groups[c]["expansion"] if c in groups else empty
                   for c in range(study.expansion.n_experts)}
        weights = {f"expert {c}": shares[c] for c in shares}
        fig = plots.histogram_grid(experts, standardize_by="each", weights=weights, ncols=4,
                                   title=f"{name}: each expert's outputs on its own tokens, standardized per expert")
        self.draw_figure("experts", self.experts_out, fig)
        self._expert_texts(experts_of)
        self._links()

    def _expert_texts(self, experts_of: dict) -> None:
        """Whether the router separates the neuron's tails (against random groups of the same sizes), and
        each expert's highest and lowest held-out contexts (:meth:`wnb.app.session.Session.expert_view`)."""
        routing, summary, contexts = (experts_of[k] for k in ("tail_routing", "expert_summary", "expert_contexts"))
        self.expert_tables = {"tail_routing": routing, "expert_summary": summary, "expert_contexts": contexts}
        lines = [f"{html.escape(r.tail)} tail, {r.tail_tokens} tokens: {r.largest_share:.0%} in expert "
                 f"{r.largest_expert} (random groups of the same sizes: {r.control_share:.0%}); entropy "
                 f"{r.entropy:.2f} bits (random: {r.control_entropy:.2f})" for r in routing.itertuples()
                 if r.tail_tokens]
        scale = float(contexts["value"].abs().max()) if len(contexts) else 1.0
        parts = [section("Does the router separate the neuron's tails?", "<br>".join(lines) or "<i>no tail tokens</i>")]
        for expert, part in contexts.groupby("expert"):
            row = summary[summary["expert"] == expert].iloc[0]
            title = (f"expert {expert}: {row['share']:.0%} of the held-out tokens, WD of its outputs "
                     f"{row['wd_expansion']:.3f}")
            body = "".join(contexts_block(part[part["side"] == side].head(SHOWN), scale) for side in ("high", "low"))
            parts.append(section(title, body))
        self.expert_reading.value = "".join(parts)

    def compute_perplexity(self, job=None) -> None:
        layers = self.session.scope_layers(self.scope.value, self.layer.value)
        cost = self.session.expansion_cost(layers, self.k_value, self.sparsity_value, bits=bits_of(self.bits))
        if not self.confirmed(f"expansion {layers} {self.k.value} {self.sparsity.value} {self.bits.value}", cost,
                              cost_message(cost, "this expansion", "Measure perplexity")):
            return
        with self.busy(f"expanding {len(layers)} layer(s) into {self.k.value} experts and measuring perplexity…"):
            self.ppl = self.session.expansion_perplexity(layers, self.k_value, self.sparsity_value, progress=self.bars,
                                                         on_run=job.begin if job else None, bits=bits_of(self.bits))
        self.ppl_table.value = self.ppl.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
        self.info(f"perplexity measured with {len(layers)} layer(s) changed")
        self._links()

    def file_stem(self) -> str:
        return (f"{slug(self.layer.value)}_neuron{self.neuron}_k{self.k.value}_{slug(f'{self.sparsity.value:.0%}')}_"
                f"{bits_tag(self.bits)}{self.settings_tag()}")

    def _links(self) -> None:
        stem = self.file_stem()
        layer = (f"{slug(self.layer.value)}_k{self.k.value}_{slug(f'{self.sparsity.value:.0%}')}_"
                 f"{bits_tag(self.bits)}{self.settings_tag()}")
        links = []
        if self.ri is not None:
            links.append(csv_link(self.ri, f"relative_improvement_{layer}.csv"))
        if self.change is not None:
            links.append(csv_link(self.change, f"before_after_{layer}.csv"))
        if self.ppl is not None:
            links.append(csv_link(self.ppl, f"expansion_perplexity_{slug(self.scope.value)}_{layer}.csv"))
        for kind, table in getattr(self, "expert_tables", {}).items():
            links.append(csv_link(table, f"{kind}_{stem}.csv"))
        links += [png_link(png, f"{kind}_{stem}.png") for kind, png in self.pngs.items()]
        self.downloads.value = " · ".join(links)
