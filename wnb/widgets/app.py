"""The Voila app and the notebook pages: settings and one tab per view."""
from __future__ import annotations

import ipywidgets as widgets

from wnb.app.session import Session
from wnb.widgets.claims import ClaimsView
from wnb.widgets.expansion import ExpansionView
from wnb.widgets.negative import NegativeView
from wnb.widgets.neurons import NeuronView
from wnb.widgets.overview import OverviewView
from wnb.widgets.settings import Settings
from wnb.widgets.sparsity import SparsityView


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

    TITLES = ("Entangled neurons", "Model overview", "Sparsity", "Sparse Expansion", "Negative differentiation",
              "Claims")

    def __init__(self, budget: str | None = None, session: Session | None = None, threaded: bool = False):
        """``threaded`` (the Voila app): buttons run their jobs in a worker thread, so Cancel works."""
        self.settings = Settings(budget, session)
        self.neurons = NeuronView(self.settings)
        self.overview = OverviewView(self.settings, open_layer=self._open_layer)
        self.sparsity = SparsityView(self.settings, lazy=True)
        self.expansion = ExpansionView(self.settings, lazy=True)
        self.negative = NegativeView(self.settings, lazy=True)
        self.claims = ClaimsView(self.settings, lazy=True, open_tab=self.open_tab)
        self.tabs = widgets.Tab(children=[self.neurons, self.overview, self.sparsity, self.expansion, self.negative,
                                          self.claims])
        self.tabs.titles = self.TITLES
        for view in (self.settings, *self.tabs.children):
            view.threaded = threaded
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

    def open_tab(self, title: str) -> None:
        """Show the tab called ``title`` (the Claims tab's links)."""
        self.tabs.selected_index = self.TITLES.index(title)

    def _tab_opened(self, change) -> None:
        """The sparsity and expansion views compute their default layer the first time they are opened; the
        negative-differentiation view only fills its layer list (its study runs when Run is pressed); the claims
        view shows the claims already cached."""
        index = change["new"]
        if index in (2, 3, 4, 5) and index not in self._started:
            self._started.add(index)
            self.tabs.children[index].start()

    def _new_settings(self, _session) -> None:
        self._started.clear()
        self._tab_opened({"new": self.tabs.selected_index})

    def start(self) -> None:
        """Analyze the default layer so the first plots appear without a click."""
        self.neurons.start()
        self.overview.clear()
