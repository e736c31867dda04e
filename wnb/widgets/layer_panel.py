"""A panel with its own layer list and WD-rank slider: the base of the Sparsity and Sparse Expansion tabs."""
from __future__ import annotations

import ipywidgets as widgets

from wnb.app.views import LayerView
from wnb.widgets.panel import CSS, SessionPanel
from wnb.widgets.settings import Settings


class LayerNeuronPanel(SessionPanel):
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
        self.follow(settings, lazy)

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

    def start_view(self) -> None:
        """Fill the layer list from the current session and compute the default layer."""
        with self.busy(f"loading {self.session.model_name} and the corpus…"):
            layers = self.session.ffn_layers()
            default = self.session.default_layer()
        with self._quiet():
            self.layer.options = layers
            self.layer.value = default
        self.load()

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
