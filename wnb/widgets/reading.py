"""What it reads: the texts behind the selected neuron's tails, what it writes, and a text probe.

A section of the Entangled neurons tab (collapsed until opened, so a warm visit does not load the model).
Everything comes from the layer's one calibration capture (``Session.contexts``, cached): re-selecting a
neuron only reads tables. Every piece of text from the corpus, the model or the user is HTML-escaped by
:mod:`wnb.reading.highlight`; nothing on the page runs a script.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as widgets
import pandas as pd

from wnb.app.report import (
    position_note,
    reading_sections,
    tail_share_at_first,
)
from wnb.reading.highlight import MAX_CHARS
from wnb.widgets.links import csv_link

if TYPE_CHECKING:
    from wnb.widgets.neurons import NeuronView



class ReadingSection(widgets.VBox):
    """The "What it reads" section of :class:`wnb.widgets.NeuronView` (``view.reading``)."""

    def __init__(self, view: "NeuronView"):
        self.view = view
        self.tails = widgets.HTML()
        self.position = widgets.HTML()
        self.bands = widgets.HTML()
        self.tokens = widgets.HTML()
        self.pairs = widgets.HTML()
        self.effect = widgets.HTML()
        self.probe_text = widgets.Textarea(placeholder=f"type or paste text (at most {MAX_CHARS} characters), "
                                                       "then press Highlight", layout=widgets.Layout(width="640px"))
        self.probe_button = widgets.Button(description="Highlight", icon="pencil")
        self.probe_out = widgets.HTML()
        self.downloads = widgets.HTML()
        for part, name in ((self.tails, "tails"), (self.position, "position"), (self.bands, "bands"),
                           (self.tokens, "tokens"), (self.pairs, "diff-pairs"), (self.effect, "effect"),
                           (self.probe_text, "probe-text"), (self.probe_out, "probe"),
                           (self.downloads, "reading-downloads")):
            part.add_class(f"wnb-{name}")
        self.tables: dict[str, pd.DataFrame] = {}
        self.neuron: int | None = None
        super().__init__([self.position, self.tails, self.bands, self.tokens, self.pairs, self.effect,
                          widgets.HTML("<b>Text probe</b>: the neuron's output on every token of your text "
                                       "(diverging colours centred at 0; the value shows on hover)."),
                          widgets.HBox([self.probe_text, self.probe_button]), self.probe_out, self.downloads])
        self.add_class("wnb-reading")
        self.probe_button.on_click(view.callback(lambda _: self.probe()))

    # -- drawing

    def draw(self, neuron: int) -> None:
        """Fill every part for ``neuron`` of the view's layer."""
        view, session = self.view.view, self.view.session
        ctx = session.contexts(view.name, progress=self.view.bars)
        tables = session.reading(view.name, neuron, progress=self.view.bars)
        parts = reading_sections(tables, ctx.scale(neuron))
        for name, part in parts.items():
            getattr(self, name).value = part
        self.position.value = position_note(ctx, neuron, view.skip_first, tail_share_at_first(view, neuron))
        self.tables = {k: v for k, v in tables.items() if isinstance(v, pd.DataFrame)}
        self.neuron = neuron
        self.probe_out.value = ""
        stem = self.view.file_stem()
        self.downloads.value = " · ".join(csv_link(t, f"{kind}_{stem}.csv") for kind, t in self.tables.items())

    def probe(self) -> None:
        view = self.view._need_view()
        neuron = self.view.neuron.value
        self.probe_out.value = self.view.session.probe(view.name, neuron, self.probe_text.value,
                                                       progress=self.view.bars)

    def clear(self) -> None:
        for part in (self.tails, self.position, self.bands, self.tokens, self.pairs, self.effect, self.probe_out,
                     self.downloads):
            part.value = ""
        self.tables, self.neuron = {}, None


