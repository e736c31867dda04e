"""Widget panels shared by the notebooks and the Voila app.

Every panel draws what a :class:`wnb.session.Session` returns; no analysis happens here. Callbacks
run through :meth:`Panel.guarded`, which shows any error as a one-line message in the panel (the
traceback goes to the server's terminal, never to the page), disables the Run buttons while busy,
and sends tqdm progress bars into the panel.

    app = wnb.widgets.App()     # settings + tabs: Entangled neurons, Model overview, Sparsity, Sparse Expansion
    display(app)
    app.start()                 # analyze the default layer
"""
from __future__ import annotations

import base64
import contextlib
import html
import os
import sys
import time
import traceback
from typing import Callable

import ipywidgets as widgets
import pandas as pd
from IPython.display import Image

from transformers.utils import logging as hf_logging

from . import plots
from .errors import WnbError
from .session import BUDGETS, SCOPES, LayerView, Session, budget_from_env

# The panels say what they are doing in their status line; transformers' own loading and conversion bars
# (some drawn from worker threads, outside the panel's progress area) would stay on the page for good.
hf_logging.disable_progress_bar()

# With WNB_STRICT=1 (the notebook tests) a panel still shows the message, then re-raises, so that a
# failing panel fails the run instead of passing quietly.
STRICT_ENV = "WNB_STRICT"
TABLE_ROWS = 200  # neurons listed in the pick list (all of them are in the CSV download)
CSS = """
<style>
.wnb-table select { font-family: monospace; font-size: 12px; }
.wnb-head { font-family: monospace; font-size: 12px; white-space: pre; }
.wnb-error { color: #8a1020; background: #fdecee; border: 1px solid #f2b8c0; padding: 4px 8px; border-radius: 4px; }
.wnb-info { color: #333; }
</style>
"""


# ---------------------------------------------------------------- small helpers

def show_figure(out: widgets.Output, fig) -> bytes:
    """Replace the contents of ``out`` with the figure as a PNG image; return the PNG bytes."""
    png = plots.to_png(fig)
    out.outputs = ()
    out.append_display_data(Image(data=png, format="png"))
    return png


def data_link(data: bytes, filename: str, mime: str, text: str) -> str:
    """An HTML link that downloads ``data`` as ``filename`` (a data: URI, so it works in Voila and Lab)."""
    b64 = base64.b64encode(data).decode()
    return (f'<a download="{html.escape(filename)}" href="data:{mime};base64,{b64}" target="_blank">'
            f'{html.escape(text)}</a>')


def csv_link(table: pd.DataFrame, filename: str) -> str:
    return data_link(table.to_csv(index=False).encode(), filename, "text/csv", f"⬇ {filename}")


def png_link(png: bytes, filename: str) -> str:
    return data_link(png, filename, "image/png", f"⬇ {filename}")


def slug(name: str) -> str:
    return name.replace("/", "_").replace(" ", "_")


def error_text(exc: BaseException) -> str:
    """One readable line: a WnbError's own message, otherwise the exception type and its first line."""
    if isinstance(exc, WnbError):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Panel(widgets.VBox):
    """A VBox with a status line, a progress area, and guarded callbacks."""

    def __init__(self, children=(), head: int = 1, **kwargs):
        """``children`` with the progress area and the status line after the first ``head`` of them
        (right under the controls, where the user is looking)."""
        self.status = widgets.HTML()
        self.status.add_class("wnb-status")
        self.progress = widgets.Output()
        self.buttons: list[widgets.Button] = []
        self.last_error: str | None = None
        self._syncing = False
        children = list(children)
        super().__init__(children=children[:head] + [self.progress, self.status] + children[head:], **kwargs)

    @contextlib.contextmanager
    def _quiet(self):
        """Set widget values without triggering our own observers."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def _need_view(self) -> LayerView:
        """The panel's analysed layer, or a readable error when none is yet."""
        if getattr(self, "view", None) is None:
            raise WnbError(self._missing_view)
        return self.view

    def info(self, text: str) -> None:
        self.status.value = f'<span class="wnb-info">{html.escape(text)}</span>'

    def error(self, text: str) -> None:
        self.last_error = text
        self.status.value = f'<div class="wnb-error">⚠ {html.escape(text)}</div>'

    @contextlib.contextmanager
    def busy(self, message: str):
        """Disable the buttons, show ``message`` and route progress bars into the panel while working."""
        states = [b.disabled for b in self.buttons]
        for b in self.buttons:
            b.disabled = True
        self.info(message)
        failure = None
        try:
            with self.progress:
                # An exception leaving an Output context is printed into it as a traceback (and
                # swallowed) by IPython; catch it here and re-raise outside for guarded() to report.
                try:
                    yield
                except Exception as exc:
                    failure = exc
            if failure is not None:
                raise failure
        finally:
            self._fresh_progress()
            for b, state in zip(self.buttons, states):
                b.disabled = state

    def _fresh_progress(self) -> None:
        """Swap in an empty progress area. Clearing the old one is not enough: the page appends each
        captured bar to it and sends that state back, which may arrive after the clear and bring back a
        bar tqdm has closed meanwhile ("Error displaying widget: model not found" for good)."""
        old = self.progress
        self.progress = widgets.Output()
        self.children = tuple(self.progress if child is old else child for child in self.children)
        old.close()

    def guarded(self, fn: Callable, *args, **kwargs):
        """Run ``fn``; on any error show one readable line in the panel instead of a traceback."""
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # the page must never show a traceback
            traceback.print_exc(file=sys.__stderr__)
            self.error(error_text(exc))
            if os.environ.get(STRICT_ENV, "") not in ("", "0"):
                raise
            return None
        self.last_error = None
        return result

    def callback(self, fn: Callable) -> Callable:
        """Wrap ``fn`` as a widget callback (``on_click`` / ``observe``) that never raises."""
        return lambda *args: self.guarded(fn, *args)


# ---------------------------------------------------------------- settings

class Settings(Panel):
    """Model, corpus, token budget and seed shared by every view; ``session`` is the current one."""

    def __init__(self, budget: str | None = None, session: Session | None = None):
        from .data import CORPORA
        from .sources import MAX_UPLOAD_BYTES, UPLOAD, offered_models

        budget = budget or budget_from_env()
        # No box takes a server path: models are the bundled one, a hub id or a folder offered by name;
        # corpora are named or uploaded (wnb.sources).
        self.model = widgets.Combobox(value="", options=sorted(offered_models()), ensure_option=False,
                                      placeholder="bundled SmolLM2-135M-Instruct (or a Hugging Face id)",
                                      description="model", layout=widgets.Layout(width="420px"))
        self.corpus = widgets.Dropdown(options=[*CORPORA, UPLOAD], value="bundled", description="corpus",
                                       layout=widgets.Layout(width="240px"))
        self.upload = widgets.FileUpload(accept=".txt,text/plain", multiple=False,
                                         description=f"upload .txt (≤ {MAX_UPLOAD_BYTES >> 20} MiB)",
                                         layout=widgets.Layout(width="220px", display="none"))
        self.corpus.observe(lambda change: setattr(self.upload.layout, "display",
                                                   "" if change["new"] == UPLOAD else "none"), names="value")
        self.budget = widgets.Dropdown(options=list(BUDGETS), value=budget, description="budget",
                                       layout=widgets.Layout(width="200px"))
        self.seed = widgets.BoundedIntText(value=0, min=0, max=2**31 - 1, description="seed",
                                           layout=widgets.Layout(width="160px"))
        self.apply = widgets.Button(description="Apply settings", icon="check")
        super().__init__([widgets.HBox([self.model, self.corpus, self.upload, self.budget, self.seed, self.apply],
                                       layout=widgets.Layout(flex_flow="row wrap"))])
        self.buttons = [self.apply]
        self._listeners: list[Callable[[Session], None]] = []
        self.session = session or Session(budget=budget, restricted=True)
        self.apply.on_click(self.callback(lambda _: self.apply_settings()))
        self.describe()

    def describe(self) -> None:
        b = self.session.budget
        self.info(f"{self.session.model_name} · corpus {self.session.corpus} · budget {self.session.budget_name}: "
                  f"{b.n_calib} × {b.seq_len} calibration tokens, {b.n_eval} × {b.seq_len} held out · "
                  f"seed {self.session.seed}")

    def uploaded(self) -> bytes | None:
        """The bytes of the uploaded corpus file, if any (ipywidgets 8: a tuple of dicts with 'content')."""
        files = self.upload.value
        if not files:
            return None
        return bytes(files[0]["content"])

    def on_change(self, listener: Callable[[Session], None]) -> None:
        """Call ``listener(session)`` whenever new settings are applied."""
        self._listeners.append(listener)

    def apply_settings(self) -> Session:
        session = Session(model=self.model.value, corpus=self.corpus.value, budget=self.budget.value,
                          seed=self.seed.value, restricted=True, upload=self.uploaded())
        with self.busy(f"loading {session.model_name} and cutting token windows…"):
            session.calib  # load the model and the corpus now, so a bad id or path is reported here
        self.session = session
        self.describe()
        for listener in self._listeners:
            listener(session)
        return session


# ---------------------------------------------------------------- entangled neurons

class NeuronView(Panel):
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
        self.view: LayerView | None = None
        self.pngs: dict[str, bytes] = {}
        self._syncing = False
        super().__init__([
            widgets.HTML(CSS),
            widgets.HBox([self.layer, self.other, self.run]),
            widgets.HBox([widgets.VBox([self.head, self.table]),
                          widgets.VBox([self.rank, self.neuron, self.summary, self.downloads])]),
            widgets.HBox([self.hist_out, self.scatter_out]),
            self.pairs_out,
        ], head=2)
        self.buttons = [self.run]
        self.add_class("wnb-neurons")
        self.run.on_click(self.callback(lambda _: self.load()))
        self.layer.observe(self.callback(self._layer_changed), names="value")
        self.other.observe(self.callback(self._other_entered), names="value")
        self.table.observe(self.callback(self._table_picked), names="value")
        self.rank.observe(self.callback(self._rank_changed), names="value")
        self.neuron.observe(self.callback(self._neuron_changed), names="value")
        settings.on_change(lambda _: self.guarded(self.reset))

    @property
    def session(self) -> Session:
        return self.settings.session

    # -- public actions (also what tests drive)

    def reset(self) -> None:
        """Fill the layer list from the current session's model and analyze the default layer."""
        self.view = None
        with self.busy(f"loading {self.session.model_name} and the corpus…"):
            layers = self.session.ffn_layers()
            default = self.session.default_layer()
            self.session.calib  # noqa: B018 - cut the windows here, under the progress area
        if default not in layers:
            layers = [default] + layers
        with self._quiet():
            self.layer.options = layers
            self.layer.value = default
        self.load()

    def start(self) -> None:
        self.guarded(self.reset)

    def load(self, layer: str | None = None) -> None:
        """Analyze ``layer`` (default: the dropdown's), then show its most entangled neuron."""
        name = layer or self.layer.value
        if not name:
            raise WnbError("pick a layer first")
        t0 = time.perf_counter()
        with self.busy(f"capturing {name} and ranking its neurons (cached after the first time)…"):
            view = self.session.layer(name)
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
            if rank <= len(self.table.options):
                self.table.value = rank
        self._draw(view, neuron)

    def select_layer(self, name: str) -> None:
        """Analyze any linear layer by name (added to the dropdown if it is not an FFN layer)."""
        name = self.session.check_layer(name)
        with self._quiet():
            if name not in self.layer.options:
                self.layer.options = list(self.layer.options) + [name]
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

    def _neuron_changed(self, change) -> None:
        if not self._syncing:
            self.show(self._need_view().rank_of(change["new"]))

    # -- drawing

    _missing_view = "no layer analyzed yet: pick a layer and press Analyze layer"

    def _fill_table(self, view: LayerView) -> None:
        t = view.table
        has_md = "md" in t.columns
        self.head.value = ('<div class="wnb-head">' + html.escape(
            f"{'rank':>5} {'neuron':>6} {'WD':>7} {'MD':>7} {'mean':>8} {'variance':>9}") + "</div>")
        options = []
        for row in t.head(TABLE_ROWS).itertuples():
            md = f"{row.md:7.3f}" if has_md else f"{'':7}"
            options.append((f"{row.rank:>5} {row.neuron:>6} {row.wd:7.4f} {md} {row.mean:8.3f} {row.variance:9.4f}",
                            int(row.rank)))
        with self._quiet():
            self.table.options = options
            self.rank.max = len(t)
            self.neuron.max = view.n_neurons - 1
        self.csv = csv_link(t, f"neurons_{slug(view.name)}.csv")

    def _draw(self, view: LayerView, neuron: int) -> None:
        row = view.row(neuron)
        ordinary = view.ordinary_neuron()
        if ordinary == neuron:
            ordinary = view.neuron_at(1)
        top = set(view.wasserstein_neurons())
        kind = "Wasserstein neuron" if neuron in top else "neuron"
        self.summary.value = (f"<b>neuron {neuron}</b> · rank {int(row['rank'])} of {view.n_neurons}"
                              f"{' (top 3%: a Wasserstein neuron)' if neuron in top else ''}<br>"
                              f"WD {row['wd']:.4f}" + (f" · MD {row['md']:.3f}" if "md" in row else "") +
                              f" · mean {row['mean']:.4f} · variance {row['variance']:.4g}")
        short = view.name.split(".")
        short = ".".join(short[-3:]) if len(short) > 3 else view.name
        hist = plots.output_histogram({f"neuron {neuron}": view.outputs[:, neuron]},
                                      title=f"{short} · {kind} {neuron} · WD {row['wd']:.3f}")
        self.pngs["histogram"] = show_figure(self.hist_out, hist)
        dx, dy = view.pairs([neuron, ordinary])
        pairs = plots.pair_scatter(dx, dy, {f"{kind} {neuron} (rank {view.rank_of(neuron)})": 0,
                                            f"ordinary neuron {ordinary} (median WD)": 1}, seed=view.seed)
        self.pngs["pairs"] = show_figure(self.pairs_out, pairs)
        if "md" in view.table.columns:
            scatter = plots.neuron_scatter(view.table, "wd", "md", highlight=sorted(top), selected=neuron,
                                           title=f"{short}: WD vs MD of every neuron")
            self.pngs["wd_md"] = show_figure(self.scatter_out, scatter)
        stem = f"{slug(view.name)}_neuron{neuron}"
        self.downloads.value = "<br>".join([self.csv] + [png_link(png, f"{kind_}_{stem}.png")
                                                         for kind_, png in self.pngs.items()])


# ---------------------------------------------------------------- model overview

class OverviewView(Panel):
    """WD of every neuron of every FFN layer, per block: heat map or violins, and a per-layer table."""

    def __init__(self, settings: Settings, open_layer: Callable[[str], None] | None = None):
        self.settings = settings
        self.open_layer = open_layer
        self.run = widgets.Button(description="Compute overview", icon="play", button_style="primary")
        self.style = widgets.ToggleButtons(options=[("heat map", "heatmap"), ("violins", "violin")], value="heatmap")
        self.plot_out = widgets.Output()
        self.plot_out.add_class("wnb-overview-plot")
        self.table = widgets.HTML()
        self.pick = widgets.Dropdown(options=[], description="layer", layout=widgets.Layout(width="420px"))
        self.open_button = widgets.Button(description="Open in Entangled neurons", icon="search", disabled=True)
        self.downloads = widgets.HTML()
        self.scores = None
        self.frame: pd.DataFrame | None = None
        self.png: bytes | None = None
        super().__init__([
            widgets.HTML(CSS),
            widgets.HTML("WD of every neuron of every FFN layer on the overview budget. Bright cells high up "
                         "are layers with strongly non-Gaussian (entangled) neurons."),
            widgets.HBox([self.run, self.style]),
            self.plot_out,
            widgets.HBox([self.pick, self.open_button]),
            self.downloads,
            self.table,
        ], head=3)
        self.buttons = [self.run, self.open_button]
        self.add_class("wnb-overview")
        self.run.on_click(self.callback(lambda _: self.compute()))
        self.style.observe(self.callback(lambda _: self.draw()), names="value")
        self.open_button.on_click(self.callback(lambda _: self._open()))
        settings.on_change(lambda _: self.guarded(self.clear))

    def clear(self) -> None:
        self.scores = self.frame = self.png = None
        self.plot_out.outputs = ()
        self.table.value = self.downloads.value = ""
        self.open_button.disabled = True
        self.info("press Compute overview (one capture pass over the model; cached afterwards)")

    def start(self) -> None:
        """Compute (or load from the cache) and draw the overview; errors go to the panel."""
        self.guarded(self.compute)

    def compute(self) -> None:
        session = self.settings.session
        t0 = time.perf_counter()
        with self.busy(f"scoring every FFN layer of {session.model_name} "
                       f"({session.budget.overview_tokens:,} tokens per layer)…"):
            self.scores, self.frame = session.overview()
        self.pick.options = list(self.frame["layer"])
        self.pick.value = self.frame.sort_values("top_over_median", ascending=False)["layer"].iloc[0]
        self.open_button.disabled = self.open_layer is None
        self.draw()
        self.info(f"{len(self.frame)} layers scored in {time.perf_counter() - t0:.1f} s")

    def draw(self) -> None:
        if self.scores is None:
            return
        self.png = show_figure(self.plot_out, plots.wd_overview(self.scores, style=self.style.value))
        shown = self.frame.drop(columns=["constant", "wd_min"]).copy()
        self.table.value = shown.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0,
                                         classes="wnb-overview")
        name = slug(self.settings.session.model_name)
        self.downloads.value = (csv_link(self.frame, f"overview_{name}.csv") + " · " +
                                png_link(self.png, f"overview_{self.style.value}_{name}.png"))

    def _open(self) -> None:
        if self.open_layer is not None and self.pick.value:
            self.open_layer(self.pick.value)


# ---------------------------------------------------------------- shared layer + neuron picker

class LayerNeuronPanel(Panel):
    """A panel with its own layer dropdown and WD-rank slider (neurons ranked as in Entangled neurons).

    Subclasses implement ``recompute()`` (the layer-level work, run when the layer or a setting
    changes) and ``redraw()`` (the neuron-level figures, run when the rank changes).
    """

    def __init__(self, settings: Settings, controls, body, head_text: str, lazy: bool = False):
        """``lazy``: on new settings only clear (the app restarts the view when its tab is shown);
        otherwise recompute the default layer at once."""
        self.settings = settings
        self.layer = widgets.Dropdown(options=[], description="layer", layout=widgets.Layout(width="420px"))
        self.rank = widgets.IntSlider(value=1, min=1, max=1, description="WD rank", continuous_update=False,
                                      layout=widgets.Layout(width="420px"))
        self.summary = widgets.HTML()
        self.downloads = widgets.HTML()
        self.view: LayerView | None = None
        self._syncing = False
        for part, name in ((self.layer, "layer"), (self.rank, "rank"), (self.summary, "summary"),
                           (self.downloads, "downloads")):
            part.add_class(f"wnb-{name}")
        super().__init__([widgets.HTML(CSS), widgets.HTML(head_text), widgets.HBox([self.layer, self.rank]),
                          *controls, self.summary, *body, self.downloads], head=3 + len(controls))
        self.layer.observe(self.callback(self._layer_changed), names="value")
        self.rank.observe(self.callback(lambda change: None if self._syncing else self.redraw()), names="value")
        settings.on_change(lambda _: self.guarded(self.clear if lazy else self.reset))

    @property
    def session(self) -> Session:
        return self.settings.session

    def clear(self) -> None:
        """Forget the layer and the results (new settings)."""
        self.view = self.result = None
        self.summary.value = self.downloads.value = ""
        for child in self._outputs():
            child.outputs = ()
        self.info("")

    def _outputs(self) -> list[widgets.Output]:
        return [w for w in vars(self).values() if isinstance(w, widgets.Output) and w is not self.progress]

    @property
    def neuron(self) -> int:
        return self._need_view().neuron_at(self.rank.value)

    def reset(self) -> None:
        """Fill the layer list from the current session and compute the default layer."""
        with self.busy(f"loading {self.session.model_name} and the corpus…"):
            layers = self.session.ffn_layers()
            default = self.session.default_layer()
        with self._quiet():
            self.layer.options = layers
            self.layer.value = default
        self.load()

    def start(self) -> None:
        self.guarded(self.reset)

    def load(self) -> None:
        """Rank the layer's neurons (cached), then recompute the layer-level results and redraw."""
        with self.busy(f"capturing {self.layer.value} and ranking its neurons…"):
            self.view = self.session.layer(self.layer.value)
        with self._quiet():
            self.rank.max = len(self.view.table)
            self.rank.value = 1
        self.recompute()

    def _layer_changed(self, change) -> None:
        if not self._syncing and change["new"]:
            self.load()

    _missing_view = "no layer analyzed yet: pick a layer"

    def short_name(self) -> str:
        parts = self.layer.value.split(".")
        return ".".join(parts[-3:]) if len(parts) > 3 else self.layer.value

    def current(self):
        """The layer-level result if it belongs to the selected layer (else None: nothing to redraw)."""
        result = self.result
        return result if result is not None and result.layer == self.layer.value else None

    def recompute(self) -> None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def redraw(self) -> None:  # pragma: no cover
        raise NotImplementedError


def parse_sparsities(text: str) -> list[str]:
    """``"0.3, 0.5, 2:4"`` → ``["0.3", "0.5", "2:4"]``, each checked by wnb's sparsity parser."""
    from .prune import parse_sparsity

    items = [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]
    if not items:
        raise WnbError("give at least one sparsity, e.g. 0.3, 0.5, 0.7, 2:4")
    for item in items:
        parse_sparsity(item)
    return items


def scope_dropdown(value: str) -> widgets.Dropdown:
    return widgets.Dropdown(options=[(text, key) for key, text in SCOPES.items()], value=value,
                            description="layers", layout=widgets.Layout(width="420px"))


# ---------------------------------------------------------------- sparsity

class SparsityView(LayerNeuronPanel):
    """Prune the selected layer (magnitude / Wanda / SparseGPT, unstructured or N:M) and look at the
    per-neuron error against WD and the selected neuron's dense vs pruned histograms; run whole-model
    perplexity-vs-sparsity sweeps and the paper's Fig. 3 ablation."""

    def __init__(self, settings: Settings, lazy: bool = False):
        self.method = widgets.ToggleButtons(options=["magnitude", "wanda", "sparsegpt"], value="sparsegpt",
                                            description="method")
        self.sparsity = widgets.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.05, description="sparsity",
                                            continuous_update=False, readout_format=".0%")
        self.pattern = widgets.Dropdown(options=["unstructured", "2:4", "4:8"], value="unstructured",
                                        description="pattern", layout=widgets.Layout(width="220px"))
        self.hist_out = widgets.Output()
        self.error_out = widgets.Output()
        self.scope = scope_dropdown(settings.session.budget.scope)
        self.sparsities = widgets.Text(value=settings.session.budget.sweep, description="sparsities",
                                       continuous_update=False, layout=widgets.Layout(width="320px"))
        self.run_sweep = widgets.Button(description="Run sweep", icon="play", button_style="primary")
        self.sweep_out = widgets.Output()
        self.sweep_table = widgets.HTML()
        self.fraction = widgets.BoundedFloatText(value=0.03, min=0.001, max=1.0, step=0.01, description="neurons",
                                                 layout=widgets.Layout(width="180px"))
        self.ablation_sparsity = widgets.FloatSlider(value=0.9, min=0.1, max=0.99, step=0.01, readout_format=".0%",
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
        self.pngs: dict[str, bytes] = {}
        super().__init__(
            settings,
            controls=[widgets.HBox([self.method, self.pattern]), self.sparsity],
            body=[widgets.HBox([self.hist_out, self.error_out]),
                  widgets.HTML("<h4>Whole model: perplexity vs sparsity</h4>"),
                  widgets.HBox([self.scope, self.sparsities, self.run_sweep]), self.sweep_out, self.sweep_table,
                  widgets.HTML("<h4>Which neurons hurt most when sparsified (paper Fig. 3)</h4>"
                               "<p>Sparsify only a fraction of the neurons of every chosen layer, picked by WD, "
                               "at random, by output mean, by variance or by weight norm.</p>"),
                  widgets.HBox([self.fraction, self.ablation_sparsity, self.run_ablation]),
                  self.ablation_out, self.ablation_table],
            head_text="Prune the layer on its calibration tokens and compare its outputs on held-out tokens.",
            lazy=lazy)
        self.buttons = [self.run_sweep, self.run_ablation]
        self.add_class("wnb-sparsity")
        for control in (self.method, self.sparsity, self.pattern):
            control.observe(self.callback(lambda _: self.recompute() if self.view is not None else None),
                            names="value")
        self.pattern.observe(lambda change: setattr(self.sparsity, "disabled", change["new"] != "unstructured"),
                             names="value")
        self.run_sweep.on_click(self.callback(lambda _: self.compute_sweep()))
        self.run_ablation.on_click(self.callback(lambda _: self.compute_ablation()))

    @property
    def sparsity_value(self):
        return self.sparsity.value if self.pattern.value == "unstructured" else self.pattern.value

    def recompute(self) -> None:
        view = self._need_view()
        with self.busy(f"pruning {view.name} with {self.method.value}…"):
            self.result = self.session.prune_view(view.name, self.method.value, self.sparsity_value)
        self.redraw()
        self.info(f"{view.name} pruned alone with {self.result.method} at {self.result.sparsity}; errors on "
                  f"{self.result.dense.shape[0]:,} held-out tokens")

    def redraw(self) -> None:
        result = self.current()
        if result is None:
            return
        neuron = self.neuron
        row = result.errors[result.errors["neuron"] == neuron].iloc[0]
        self.summary.value = (f"<b>neuron {neuron}</b> · WD rank {int(row['rank'])} · WD {row['wd']:.4f} · "
                              f"{result.method} {result.sparsity}: held-out RMSE {row['rmse']:.4g} "
                              f"({row['rel_rmse']:.1%} of the dense std), distribution shift {row['shift']:.4g}")
        name = f"{self.short_name()} · neuron {neuron}"
        hist = plots.output_histogram({"dense": result.dense[:, neuron],
                                       f"{result.method} {result.sparsity}": result.pruned[:, neuron]},
                                      standardize_by="first", title=f"{name}: dense vs pruned (held out)")
        self.pngs["histogram"] = show_figure(self.hist_out, hist)
        top = self._need_view().wasserstein_neurons()
        scatter = plots.neuron_scatter(result.errors, "wd", "rel_rmse", highlight=top, selected=neuron,
                                       title=f"{self.short_name()}: error after pruning vs WD")
        self.pngs["error_vs_wd"] = show_figure(self.error_out, scatter)
        self._links()

    def compute_sweep(self) -> None:
        layers = self.session.scope_layers(self.scope.value, self.layer.value)
        sparsities = parse_sparsities(self.sparsities.value)
        with self.busy(f"pruning {len(layers)} layer(s) with 3 methods × {len(sparsities)} sparsities and "
                       "measuring perplexity (cached afterwards)…"):
            self.sweep_result = self.session.sweep(("magnitude", "wanda", "sparsegpt"), sparsities, layers)
        fig = plots.perplexity_curves(self.sweep_result, title=f"{len(layers)} layer(s) pruned")
        self.pngs["sweep"] = show_figure(self.sweep_out, fig)
        self.sweep_table.value = self.sweep_result.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
        self.info(f"sweep done: {len(self.sweep_result)} runs")
        self._links()

    def compute_ablation(self) -> None:
        layers = self.session.scope_layers(self.scope.value, self.layer.value)
        with self.busy(f"sparsifying {self.fraction.value:.1%} of the neurons of {len(layers)} layer(s), "
                       "5 ways…"):
            self.ablation_result = self.session.ablation(layers, self.fraction.value, self.ablation_sparsity.value)
        fig = plots.ablation_bars(self.ablation_result, title=f"{self.fraction.value:.0%} of the neurons of "
                                  f"{len(layers)} layer(s) at {self.ablation_sparsity.value:.0%} sparsity")
        self.pngs["ablation"] = show_figure(self.ablation_out, fig)
        self.ablation_table.value = self.ablation_result.to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                                                 border=0)
        self.info("ablation done")
        self._links()

    def _links(self) -> None:
        stem = slug(self.layer.value)
        links = []
        if self.result is not None:
            links.append(csv_link(self.result.errors, f"errors_{stem}_{self.result.method}.csv"))
        if self.sweep_result is not None:
            links.append(csv_link(self.sweep_result, "sparsity_sweep.csv"))
        if self.ablation_result is not None:
            links.append(csv_link(self.ablation_result, "ablation.csv"))
        links += [png_link(png, f"{kind}_{stem}.png") for kind, png in self.pngs.items()]
        self.downloads.value = " · ".join(links)


# ---------------------------------------------------------------- Sparse Expansion

class ExpansionView(LayerNeuronPanel):
    """Sparse Expansion of the selected layer: the neuron's dense / SparseGPT / expansion histograms,
    each expert's histogram with its token share (Fig. 1f), RI vs WD with R² (Fig. 7), WD and MD before
    vs after for the Wasserstein neurons (Fig. 5), and a perplexity table (dense, SparseGPT, expansion)."""

    def __init__(self, settings: Settings, lazy: bool = False):
        self.k = widgets.Dropdown(options=[1, 2, 4, 8, 16], value=16, description="experts",
                                  layout=widgets.Layout(width="180px"))
        self.sparsity = widgets.FloatSlider(value=0.5, min=0.1, max=0.95, step=0.05, description="sparsity",
                                            continuous_update=False, readout_format=".0%")
        self.compare_out = widgets.Output()
        self.experts_out = widgets.Output()
        self.ri_out = widgets.Output()
        self.ri_table = widgets.HTML()
        self.change_out = widgets.Output()
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
        self.pngs: dict[str, bytes] = {}
        super().__init__(
            settings,
            controls=[widgets.HBox([self.k, self.sparsity])],
            body=[self.compare_out, self.experts_out,
                  widgets.HBox([self.ri_out, self.ri_table]), self.change_out,
                  widgets.HTML("<h4>Perplexity: dense, SparseGPT and Sparse Expansion</h4>"),
                  widgets.HBox([self.scope, self.run_ppl]), self.ppl_table],
            head_text="Cluster the layer's inputs (PCA + k-means) and give every cluster its own SparseGPT copy "
                      "of the weight; each token uses its cluster's expert.", lazy=lazy)
        self.buttons = [self.run_ppl]
        self.add_class("wnb-expansion")
        for control in (self.k, self.sparsity):
            control.observe(self.callback(lambda _: self.recompute() if self.view is not None else None),
                            names="value")
        self.run_ppl.on_click(self.callback(lambda _: self.compute_perplexity()))

    def recompute(self) -> None:
        view = self._need_view()
        with self.busy(f"building {self.k.value} experts of {view.name} at {self.sparsity.value:.0%} sparsity "
                       "(cached afterwards)…"):
            study = self.session.study(view.name, self.k.value, self.sparsity.value)
            tables = self.session.expansion_analysis(view.name, self.k.value, self.sparsity.value)
        self.result = study
        self.ri, self.shares, self.change = tables["ri"], tables["shares"], tables["change"]
        regression = tables["regression"]
        fig = plots.neuron_scatter(self.ri, "wd", "ri", highlight=view.wasserstein_neurons(),
                                   title=f"{self.short_name()}: RI vs WD, k = {self.k.value}")
        self.pngs["ri_vs_wd"] = show_figure(self.ri_out, fig)
        self.ri_table.value = ("<b>RI = RMSE(SparseGPT) / RMSE(expansion)</b> regressed on each predictor:" +
                               regression.to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0))
        fig = plots.before_after(self.change,
                                 title=f"{self.short_name()}: top {len(self.change)} neurons by WD, before vs "
                                       f"after expansion")
        self.pngs["before_after"] = show_figure(self.change_out, fig)
        self.redraw()
        self.info(f"{study.expansion.n_experts} experts of {view.name} at {self.sparsity.value:.0%} sparsity; "
                  f"RI and histograms on {study.held_inputs.shape[0]:,} held-out tokens")

    def redraw(self) -> None:
        from . import analysis

        study = self.current()
        if study is None:
            return
        neuron = self.neuron
        frame = analysis.expert_outputs(study, neuron)
        row = self.ri[self.ri["neuron"] == neuron].iloc[0]
        self.summary.value = (f"<b>neuron {neuron}</b> · WD rank {self.rank.value} · WD {row['wd']:.4f} · held-out "
                              f"RMSE SparseGPT {row['rmse_sparsegpt']:.4g}, expansion {row['rmse_expansion']:.4g} · "
                              f"<b>RI {row['ri']:.2f}</b>")
        name = f"{self.short_name()} · neuron {neuron}"
        fig = plots.histogram_grid({"dense": frame["dense"], "SparseGPT": frame["sparsegpt"],
                                    f"expansion, k = {study.expansion.n_experts}": frame["expansion"]},
                                   standardize_by="first", ncols=3, title=f"{name}: held-out outputs")
        self.pngs["dense_sparse_expansion"] = show_figure(self.compare_out, fig)
        shares = dict(zip(self.shares["expert"], self.shares["share"]))
        experts = {f"expert {c}": part["expansion"] for c, part in frame.groupby("expert") if len(part) >= 2}
        weights = {f"expert {c}": shares[c] for c in shares}
        fig = plots.histogram_grid(experts, standardize_by="each", weights=weights, ncols=4,
                                   title=f"{name}: each expert's outputs on its own tokens, standardized per expert")
        self.pngs["experts"] = show_figure(self.experts_out, fig)
        self._links()

    def compute_perplexity(self) -> None:
        layers = self.session.scope_layers(self.scope.value, self.layer.value)
        with self.busy(f"expanding {len(layers)} layer(s) into {self.k.value} experts and measuring perplexity…"):
            self.ppl = self.session.expansion_perplexity(layers, self.k.value, self.sparsity.value)
        self.ppl_table.value = self.ppl.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)
        self.info(f"perplexity measured with {len(layers)} layer(s) changed")
        self._links()

    def _links(self) -> None:
        stem = slug(self.layer.value)
        links = []
        if self.ri is not None:
            links.append(csv_link(self.ri, f"relative_improvement_{stem}_k{self.k.value}.csv"))
        if self.change is not None:
            links.append(csv_link(self.change, f"before_after_{stem}_k{self.k.value}.csv"))
        if self.ppl is not None:
            links.append(csv_link(self.ppl, "expansion_perplexity.csv"))
        links += [png_link(png, f"{kind}_{stem}.png") for kind, png in self.pngs.items()]
        self.downloads.value = " · ".join(links)


# ---------------------------------------------------------------- pages

class Page(widgets.VBox):
    """Settings + one view (``view_cls(settings)``): the panel of a notebook."""

    def __init__(self, view_cls, budget: str | None = None, session: Session | None = None):
        self.settings = Settings(budget, session)
        self.view = view_cls(self.settings)
        super().__init__([self.settings, self.view])

    def start(self) -> None:
        self.view.start()


class EntangledNeurons(widgets.VBox):
    """Settings + :class:`NeuronView`: the panel of notebook 01."""

    def __init__(self, budget: str | None = None, session: Session | None = None):
        self.settings = Settings(budget, session)
        self.neurons = NeuronView(self.settings)
        super().__init__([self.settings, self.neurons])

    def start(self) -> None:
        self.neurons.start()


class App(widgets.VBox):
    """The Voila app: shared settings and one tab per view."""

    TITLES = ("Entangled neurons", "Model overview", "Sparsity", "Sparse Expansion")

    def __init__(self, budget: str | None = None, session: Session | None = None):
        self.settings = Settings(budget, session)
        self.neurons = NeuronView(self.settings)
        self.overview = OverviewView(self.settings, open_layer=self._open_layer)
        self.sparsity = SparsityView(self.settings, lazy=True)
        self.expansion = ExpansionView(self.settings, lazy=True)
        self.tabs = widgets.Tab(children=[self.neurons, self.overview, self.sparsity, self.expansion])
        self.tabs.titles = self.TITLES
        self._started: set[int] = set()
        self.tabs.observe(self._tab_opened, names="selected_index")
        self.settings.on_change(self._new_settings)
        header = widgets.HTML("<h2 style='margin:4px 0'>wnb · Wasserstein neurons</h2>"
                              "<p style='margin:0 0 6px 0'>Find a model's entangled neurons: outputs far from "
                              "Gaussian (high Wasserstein distance, WD) that map similar inputs to very different "
                              "outputs (high mapping difficulty, MD).</p>")
        super().__init__([header, self.settings, self.tabs])

    def _open_layer(self, name: str) -> None:
        self.tabs.selected_index = 0
        self.neurons.select_layer(name)

    def _tab_opened(self, change) -> None:
        """The sparsity and expansion views compute their default layer the first time they are opened."""
        index = change["new"]
        if index in (2, 3) and index not in self._started:
            self._started.add(index)
            self.tabs.children[index].start()

    def _new_settings(self, _session) -> None:
        self._started.clear()
        self._tab_opened({"new": self.tabs.selected_index})

    def start(self) -> None:
        """Analyze the default layer so the first plots appear without a click."""
        self.neurons.start()
        self.overview.clear()
