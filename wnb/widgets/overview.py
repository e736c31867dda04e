"""Model overview: WD of every FFN neuron per block, as a heat map or violins."""
from __future__ import annotations

import html
import math
import time
from typing import TYPE_CHECKING, Callable

import ipywidgets as widgets
import pandas as pd

from wnb import plots
from wnb.widgets.links import csv_link, png_link, slug
from wnb.widgets.panel import CSS, SessionPanel

if TYPE_CHECKING:
    from wnb.widgets.settings import Settings


def layer_map(frame: pd.DataFrame, on_pick: Callable[[str], None]) -> widgets.GridBox:
    """One clickable cell per layer of the overview table (rows: kinds, columns: blocks), coloured by the
    Wasserstein neurons' mean WD over the layer's median (darker: more entangled); ``on_pick(layer)`` on a click.
    A dot marks a layer with first-token (attention sink) neurons; the tooltip gives the numbers."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["mako_r"]
    ratios = [v for v in frame["top_over_median"] if math.isfinite(v)]
    low, high = (min(ratios), max(ratios)) if ratios else (0.0, 1.0)
    blocks = sorted(frame["block"].unique())
    kinds = list(dict.fromkeys(frame["kind"]))
    cells: list[widgets.Widget] = [widgets.HTML("")] + [
        widgets.HTML(f"<small>{html.escape(str(b))}</small>" if i % 5 == 0 else "") for i, b in enumerate(blocks)]
    by_place = {(row.kind, row.block): row for row in frame.itertuples()}
    for kind in kinds:
        cells.append(widgets.HTML(f"<small>{html.escape(str(kind))}</small>"))
        for block in blocks:
            row = by_place.get((kind, block))
            if row is None:
                cells.append(widgets.HTML(""))
                continue
            ratio = row.top_over_median
            shade = (ratio - low) / (high - low) if math.isfinite(ratio) and high > low else 0.0
            sinks = int(getattr(row, "sinks", 0) or 0)
            cell = widgets.Button(description="•" if sinks else "", tooltip=(
                f"{row.layer}\ntop-3% WD / median WD: {ratio:.2f}\nfirst-token neurons: {sinks}\nclick to open"),
                layout=widgets.Layout(width="auto", height="20px", padding="0", margin="0"))
            cell.style.button_color = to_hex(cmap(0.1 + 0.8 * shade))
            cell.style.text_color = "white" if shade > 0.5 else "black"
            cell.add_class("wnb-map-cell")
            cell.on_click(lambda _, name=row.layer: on_pick(name))
            cells.append(cell)
    grid = widgets.GridBox(cells, layout=widgets.Layout(
        grid_template_columns=f"80px repeat({len(blocks)}, minmax(10px, 1fr))", grid_gap="2px", width="100%"))
    grid.add_class("wnb-layer-map")
    return grid


class OverviewView(SessionPanel):
    """WD of every neuron of every FFN layer, per block: heat map or violins, and a per-layer table."""

    def __init__(self, settings: Settings, open_layer: Callable[[str], None] | None = None):
        self.settings = settings
        self.open_layer = open_layer
        self.run = widgets.Button(description="Compute overview", icon="play", button_style="primary")
        self.style = widgets.ToggleButtons(options=[("heat map", "heatmap"), ("violins", "violin")], value="heatmap")
        self.plot_out = widgets.Output()
        self.plot_out.add_class("wnb-overview-plot")
        self.table = widgets.HTML()
        self.map_box = widgets.VBox()
        self.pick = widgets.Dropdown(options=[], description="layer", layout=widgets.Layout(width="420px"))
        self.open_button = widgets.Button(description="Open in Entangled neurons", icon="search", disabled=True,
                                          layout=widgets.Layout(width="auto"))
        self.downloads = widgets.HTML()
        self.scores = None
        self.frame: pd.DataFrame | None = None
        self.png: bytes | None = None
        super().__init__([
            widgets.HTML(CSS),
            widgets.HTML("WD of every neuron of every FFN layer on the overview budget. Heat map: one column per "
                         "block, WD upwards, colour = share of the layer's neurons at that WD (dark: many, light: "
                         "few, blank: none). Cells far up, even light ones, are a layer's strongly non-Gaussian "
                         "(entangled) neurons. The layer map under it has one cell per layer, darker where the "
                         "Wasserstein neurons stand further above the layer's median; a dot marks layers with "
                         "first-token (attention sink) neurons. Click a cell, or pick the layer below, to open it."),
            widgets.HBox([self.run, self.style]),
            self.plot_out,
            self.map_box,
            widgets.HBox([self.pick, self.open_button]),
            self.downloads,
            self.table,
        ], head=3)
        self.buttons = [self.run, self.open_button]
        self.add_class("wnb-overview")
        self.job_button(self.run, "model overview", lambda job: self.compute())
        self.style.observe(self.callback(lambda _: self.draw()), names="value")
        self.open_button.on_click(self.callback(lambda _: self._open()))
        self.follow(settings)

    def clear(self) -> None:
        self.scores = self.frame = self.png = None
        self.plot_out.outputs = ()
        self.map_box.children = ()
        self.table.value = self.downloads.value = ""
        self.open_button.disabled = True
        self.info("press Compute overview (one reading pass over the model; cached afterwards)")

    def start_view(self) -> None:
        """Compute (or load from the cache) and draw the overview."""
        self.compute()

    def compute(self) -> None:
        session = self.settings.session
        t0 = time.perf_counter()
        with self.busy(f"scoring every FFN layer of {session.model_name} in one pass "
                       f"({session.budget.overview_tokens:,} tokens per layer, or every calibration token when the "
                       "whole reading is stored)…"):
            self.scores, self.frame = session.overview(progress=self.bars)
        self.pick.options = list(self.frame["layer"])
        self.pick.value = self.frame.sort_values("top_over_median", ascending=False)["layer"].iloc[0]
        self.open_button.disabled = self.open_layer is None
        self.map_box.children = (widgets.HTML("<b>Layer map</b> (click a cell to open the layer)"),
                                 layer_map(self.frame, self.guarded_open))
        self.draw()
        sinks = self.frame["sinks"]
        self.info(f"{len(self.frame)} layers scored in {time.perf_counter() - t0:.1f} s; {int(sinks.sum()):,} "
                  f"first-token (attention sink) neurons in {int((sinks > 0).sum())} layer(s)")

    def draw(self) -> None:
        if self.scores is None:
            return
        self.draw_figure("overview", self.plot_out, plots.wd_overview(self.scores, style=self.style.value))
        self.png = self.pngs["overview"]
        shown = self.frame.drop(columns=["constant", "wd_min"]).copy()
        self.table.value = shown.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0,
                                         classes="wnb-overview")
        name = f"{slug(self.settings.session.model_name)}_{self.settings_tag()}"
        self.downloads.value = (csv_link(self.frame, f"overview_{name}.csv") + " · " +
                                png_link(self.png, f"overview_{self.style.value}_{name}.png"))

    def _open(self) -> None:
        if self.open_layer is not None and self.pick.value:
            self.open_layer(self.pick.value)

    def guarded_open(self, layer: str) -> None:
        """Open ``layer`` in Entangled neurons (a click on the layer map); errors go to the panel."""
        self.pick.value = layer
        self.guarded(self._open)
