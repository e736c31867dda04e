"""Entangled neurons: a layer's neurons ranked by WD, one neuron against an ordinary one."""
from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

import ipywidgets as widgets

from wnb import plots
from wnb.app.views import LayerView
from wnb.errors import WnbError
from wnb.widgets.links import csv_link, png_link, slug
from wnb.widgets.messages import rough_duration
from wnb.widgets.panel import CSS, SessionPanel
from wnb.widgets.reading import ReadingSection

TABLE_ROWS = 200  # neurons listed in the pick list (all of them are in the CSV download)

if TYPE_CHECKING:
    from wnb.widgets.settings import Settings


def layer_choices(ffn: list[str], linear: list[str]) -> list[tuple[str, str]]:
    """Every linear layer as a ``(label, name)`` choice, grouped by kind: FFN, attention, the rest."""
    def kind(name: str) -> str:
        if name in ffn:
            return "FFN"
        return "attention" if any(part in name for part in ("attn", "attention")) else "other"

    order = {"FFN": 0, "attention": 1, "other": 2}
    ranked = sorted(enumerate(linear), key=lambda item: (order[kind(item[1])], item[0]))
    return [(f"{kind(name)} · {name}", name) for _, name in ranked]


# ---------------------------------------------------------------- entangled neurons

class NeuronView(SessionPanel):
    """Pick a layer, rank its neurons by WD, and look at one neuron against an ordinary one.

    Shows the neuron table (rank, neuron, WD, MD, mean, variance), the selected neuron's standardized
    output histogram with the N(0, 1) density, the pair scatter of normalized input distance vs
    output difference next to the layer's median-WD neuron (paper Fig. 2b–d), and the WD-vs-MD
    scatter of the layer (Fig. 2e), with CSV / PNG downloads.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        wide = widgets.Layout(width="460px")
        self.layer = widgets.Dropdown(options=[], description="layer", layout=wide)
        self.other = widgets.Text(value="", placeholder="or any linear layer by name, then Enter",
                                  continuous_update=False, layout=widgets.Layout(width="360px"))
        self.run = widgets.Button(description="Analyze layer", icon="play", button_style="primary")
        self.head = widgets.HTML()
        self.table = widgets.Select(options=[], rows=12, layout=widgets.Layout(width="560px"))
        self.table.add_class("wnb-table")
        self.rank = widgets.IntSlider(value=1, min=1, max=1, description="WD rank", continuous_update=False,
                                      layout=widgets.Layout(width="460px"))
        self.neuron = widgets.BoundedIntText(value=0, min=0, max=0, description="neuron",
                                             layout=widgets.Layout(width="180px"))
        self.summary = widgets.HTML()
        self.hist_out = widgets.Output()
        self.pairs_out = widgets.Output()
        self.scatter_out = widgets.Output()
        self.downloads = widgets.HTML()
        # CSS classes name the parts for the browser test and for custom styling
        for part, name in ((self.layer, "layer"), (self.other, "other-layer"), (self.rank, "rank"),
                           (self.neuron, "neuron"), (self.summary, "summary"), (self.hist_out, "histogram"),
                           (self.pairs_out, "pairs"), (self.scatter_out, "wd-md"), (self.downloads, "downloads")):
            part.add_class(f"wnb-{name}")
        self.skip_first = widgets.Checkbox(value=False, indent=False,
                                           description="drop the first token of every window (attention sink)",
                                           layout=widgets.Layout(width="auto"))
        self.skip_first.add_class("wnb-skip-first")
        self.view: LayerView | None = None
        self._syncing = False
        self.reading = ReadingSection(self)
        self.reading_box = widgets.Accordion(children=[self.reading], selected_index=None)
        self.reading_box.set_title(0, "What it reads: contexts of both tails, tokens, differentiating pairs, "
                                      "what it writes, text probe")
        self.reading_box.add_class("wnb-reading-box")
        super().__init__([
            widgets.HTML(CSS),
            widgets.HBox([self.layer, self.other, self.run]),
            self.skip_first,
            widgets.HBox([widgets.VBox([self.head, self.table]),
                          widgets.VBox([self.rank, self.neuron, self.summary, self.downloads])]),
            widgets.HBox([self.hist_out, self.scatter_out]),
            self.pairs_out,
            self.reading_box,
        ], head=3)
        self.buttons = [self.run]
        self.add_class("wnb-neurons")
        self.job_button(self.run, "capturing the layer", lambda job: self.load())
        self.layer.observe(self.callback(self._layer_changed), names="value")
        self.other.observe(self.callback(self._other_entered), names="value")
        self.table.observe(self.callback(self._table_picked), names="value")
        self.rank.observe(self.callback(self._rank_changed), names="value")
        self.neuron.observe(self.callback(self._neuron_changed), names="value")
        self.skip_first.observe(self.callback(self._skip_changed), names="value")
        self.reading_box.observe(self.callback(self._reading_opened), names="selected_index")
        self.follow(settings, lazy=False)

    # -- public actions (also what tests drive)

    def start_view(self) -> None:
        """Fill the layer list from the current session's model and analyze the default layer."""
        self.view = None
        with self.busy(f"loading {self.session.model_name} and the corpus…"):
            layers = layer_choices(self.session.ffn_layers(), self.session.linear_layers())
            default = self.session.default_layer()
            self.session.calib  # noqa: B018 - cut the windows here, under the progress area
        with self._quiet():
            self.layer.options = layers
            self.layer.value = default
        self.load()

    def load(self, layer: str | None = None) -> None:
        """Analyze ``layer`` (default: the dropdown's), then show its most entangled neuron."""
        name = layer or self.layer.value
        if not name:
            raise WnbError("pick a layer first")
        if not self._confirmed(name):
            return
        t0 = time.perf_counter()
        with self.busy(f"capturing {name} and ranking its neurons (cached after the first time)…"):
            view = self.session.layer(name, progress=self.bars)
        self.view = view
        self._fill_table(view)
        self.show(1)
        self.info(f"{name}: {view.n_neurons} neurons × {view.outputs.shape[0]:,} tokens, "
                  f"ready in {time.perf_counter() - t0:.1f} s")

    def show(self, rank: int) -> None:
        """Select the neuron at WD ``rank`` and redraw its plots."""
        view = self._need_view()
        neuron = view.neuron_at(rank)
        with self._quiet():
            self.rank.value = rank
            self.neuron.value = neuron
            # a rank outside the listed top rows clears the pick list's highlight instead of leaving an old row
            self.table.value = rank if rank <= len(self.table.options) else None
        self._draw(view, neuron)

    def _confirmed(self, name: str) -> bool:
        """A layer with a very large capture (e.g. lm_head) waits for a second press of Analyze layer."""
        cost = self.session.layer_cost(name)
        message = "" if not cost["large"] else (
            f"{name} has {cost['neurons']:,} neurons: its capture holds {cost['bytes'] / 2**30:.1f} GiB and "
            f"ranking them takes roughly {rough_duration(cost['seconds'])} here. Press Analyze layer again to go "
            "ahead, or pick another layer.")
        if not self.confirmed(name, cost, message):
            self.view = None
            return False
        return True

    def select_layer(self, name: str) -> None:
        """Analyze any linear layer by name (added to the dropdown if it is not an FFN layer)."""
        name = self.session.check_layer(name)
        with self._quiet():
            if name not in [value for _, value in self.layer.options]:
                self.layer.options = list(self.layer.options) + [(name, name)]
            self.layer.value = name
        self.load(name)

    # -- callbacks

    def _layer_changed(self, change) -> None:
        if not self._syncing and change["new"]:
            self.load(change["new"])

    def _other_entered(self, change) -> None:
        if change["new"].strip():
            self.select_layer(change["new"].strip())

    def _table_picked(self, change) -> None:
        if not self._syncing and change["new"] is not None:
            self.show(change["new"])

    def _rank_changed(self, change) -> None:
        if not self._syncing:
            self.show(change["new"])

    def _skip_changed(self, change) -> None:
        self.session.skip_first = int(change["new"])
        if self.view is not None:
            self.load(self.view.name)

    def _reading_opened(self, change) -> None:
        if change["new"] == 0 and self.view is not None:
            with self.busy("reading the layer's contexts (one pass over its capture, cached afterwards)…"):
                self.reading.draw(self.neuron.value)

    def _neuron_changed(self, change) -> None:
        if not self._syncing:
            self.show(self._need_view().rank_of(change["new"]))

    # -- drawing

    _missing_view = "no layer analyzed yet: pick a layer and press Analyze layer"

    def _fill_table(self, view: LayerView) -> None:
        t = view.table
        has_md = "md" in t.columns
        signs = {"frac_negative", "wd_share_below_zero"} <= set(t.columns)
        self.head.value = ('<div class="wnb-head">' + html.escape(
            f"{'rank':>5} {'neuron':>6} {'WD':>7} {'MD':>7} {'mean':>8} {'variance':>9}" +
            (f" {'y<0':>4} {'WD y<0':>6}" if signs else "")) + "</div>")  # outputs, and WD, below the raw zero
        options = []
        for row in t.head(TABLE_ROWS).itertuples():
            md = f"{row.md:7.3f}" if has_md else f"{'':7}"
            sign = (f" {row.frac_negative:4.0%} {row.wd_share_below_zero:6.0%}" if row.wd > 0 else "") if signs else ""
            sink = " ⚓" if getattr(row, "sink", False) is True else ""
            options.append((f"{row.rank:>5} {row.neuron:>6} {row.wd:7.4f} {md} {row.mean:8.3f} {row.variance:9.4f}"
                            f"{sign}{sink}", int(row.rank)))
        with self._quiet():
            self.table.options = options
            self.rank.max = len(t)
            self.neuron.max = view.n_neurons - 1
        self.csv = csv_link(t, f"neurons_{slug(view.name)}_{self.settings_tag()}.csv")

    def _draw(self, view: LayerView, neuron: int) -> None:
        row = view.row(neuron)
        ordinary = view.ordinary_neuron()
        label = f"ordinary neuron {ordinary} (median WD)"
        if ordinary == neuron:  # the median neuron itself: compare with the most entangled one instead
            ordinary = view.neuron_at(1)
            label = f"most entangled neuron {ordinary} (rank 1)"
        top = set(view.wasserstein_neurons())
        kind = "Wasserstein neuron" if neuron in top else "neuron"
        self.summary.value = (f"<b>neuron {neuron}</b> · rank {int(row['rank'])} of {view.n_neurons}"
                              f"{' (top 3%: a Wasserstein neuron)' if neuron in top else ''}<br>"
                              f"WD {row['wd']:.4f}" + (f" · MD {row['md']:.3f}" if "md" in row else "") +
                              f" · mean {row['mean']:.4f} · variance {row['variance']:.4g}")
        short = view.name.split(".")
        short = ".".join(short[-3:]) if len(short) > 3 else view.name
        hist = plots.output_histogram({f"neuron {neuron}": view.kept_outputs[:, neuron]},
                                      title=f"{short} · {kind} {neuron} · WD {row['wd']:.3f}")
        self.draw_figure("histogram", self.hist_out, hist)
        dx, dy = view.pairs([neuron, ordinary])
        pairs = plots.pair_scatter(dx, dy, {f"{kind} {neuron} (rank {view.rank_of(neuron)})": 0,
                                            label: 1}, seed=view.seed)
        self.draw_figure("pairs", self.pairs_out, pairs)
        if "md" in view.table.columns:
            scatter = plots.neuron_scatter(view.table, "wd", "md", highlight=sorted(top), selected=neuron,
                                           title=f"{short}: WD vs MD of every neuron")
            self.draw_figure("wd_md", self.scatter_out, scatter)
        self.downloads.value = "<br>".join([self.csv] + [png_link(png, f"{kind_}_{self.file_stem()}.png")
                                                         for kind_, png in self.pngs.items()])
        if self.reading_box.selected_index == 0:  # the reading section is open: it follows the neuron
            self.reading.draw(neuron)
        else:
            self.reading.clear()

    def file_stem(self) -> str:
        skip = f"_skip{self.view.skip_first}" if self.view and self.view.skip_first else ""
        return f"{slug(self.view.name)}_neuron{self.neuron.value}{skip}_{self.settings_tag()}" if self.view else "wnb"
