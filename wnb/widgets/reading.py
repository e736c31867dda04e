"""What it reads: the texts behind the selected neuron's tails, what it writes, and a text probe.

A section of the Entangled neurons tab (collapsed until opened, so a warm visit does not load the model).
Everything comes from the layer's one calibration capture (``Session.contexts``, cached): re-selecting a
neuron only reads tables. Every piece of text from the corpus, the model or the user is HTML-escaped by
:mod:`wnb.highlight`; nothing on the page runs a script.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING

import ipywidgets as widgets
import pandas as pd

from ..errors import WnbError
from ..highlight import MAX_CHARS, activation_html, contexts_html
from ..reading import differentiating_pairs, output_effect, tail_concentration, token_table
from .panel import csv_link, slug

if TYPE_CHECKING:
    from .neurons import NeuronView

SHOWN = 10       # contexts per tail on the page (the CSV holds all that are kept)
TOKENS_SHOWN = 12
PAIRS_SHOWN = 6
_TABLE = "font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;border-collapse:collapse"


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
        self._shares = None  # (contexts, first-position share of every neuron) of the layer shown
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
        scale = ctx.scale(neuron)
        high, low = ctx.top(neuron, "high"), ctx.top(neuron, "low")
        self.tables = {"contexts": pd.concat([high.assign(side="high"), low.assign(side="low")], ignore_index=True)}
        self.tails.value = (_section(f"Highest outputs of neuron {neuron}", _contexts(high.head(SHOWN), scale)) +
                            _section("Lowest outputs", _contexts(low.head(SHOWN), scale)))
        if self._shares is None or self._shares[0] is not ctx:  # per layer, not per neuron
            self._shares = (ctx, ctx.first_position_share())
        self.position.value = _position_note(ctx, neuron, view.skip_first, float(self._shares[1][neuron]))
        samples = ctx.samples(neuron, seed=session.seed)
        self.tables["band_samples"] = samples
        self.bands.value = _section("What each part of the distribution is made of (seeded examples per band)",
                                    _bands(samples, scale))
        tokens = token_table(session.calib, view.outputs, session.lm.tokenizer, neuron=neuron,
                             skip_first=view.skip_first)
        concentration = tail_concentration(tokens, seed=session.seed)
        self.tables["tokens"], self.tables["tail_concentration"] = tokens, concentration
        self.tokens.value = _section("Tokens: count, mean and extreme output, share of each tail (beyond ±2.5σ)",
                                     _tokens(tokens.head(TOKENS_SHOWN)) + _concentration(concentration))
        pairs = differentiating_pairs(view.inputs, view.outputs, neuron, session.calib, session.lm.tokenizer,
                                      n_pairs=view.n_pairs, seed=view.seed, top=PAIRS_SHOWN,
                                      skip_first=view.skip_first)
        self.tables["differentiating_pairs"] = pairs
        self.pairs.value = _section("Differentiating pairs: nearly the same input, far apart outputs "
                                    "(the dots of the pair plot with the largest ratio)", _pairs(pairs, scale))
        self.effect.value = self._effect(view.name, neuron)
        self.neuron = neuron
        self.probe_out.value = ""
        stem = self.view.file_stem()
        self.downloads.value = " · ".join(csv_link(t, f"{kind}_{stem}.csv") for kind, t in self.tables.items())

    def _effect(self, layer: str, neuron: int) -> str:
        try:
            effect = output_effect(self.view.session.lm, layer, neuron, k=10)
        except WnbError as exc:
            return _section("What it writes", f"<i>{html.escape(str(exc))}</i>")
        self.tables["output_effect"] = effect
        rows = []
        for side in ("raises", "lowers"):
            part = effect[effect["side"] == side]
            rows.append(f"<b>{side}</b>: " + ", ".join(f"<code>{html.escape(repr(t))}</code> {v:+.3f}"
                                                      for t, v in zip(part["token"], part["effect"])))
        return _section("What it writes: the logits one unit of its activation moves directly (the down "
                        "projection's column times the unembedding; this ignores the final norm and every "
                        "later layer)", "<br>".join(rows))

    def probe(self) -> None:
        view = self.view._need_view()
        neuron = self.view.neuron.value
        ctx = self.view.session.contexts(view.name, progress=self.view.bars)
        self.probe_out.value = activation_html(self.view.session.lm, self.probe_text.value, view.name, neuron,
                                               scale=ctx.scale(neuron))

    def clear(self) -> None:
        for part in (self.tails, self.position, self.bands, self.tokens, self.pairs, self.effect, self.probe_out,
                     self.downloads):
            part.value = ""
        self.tables, self.neuron = {}, None


# ---------------------------------------------------------------- HTML pieces (every text escaped)

def _section(title: str, body: str) -> str:
    return f"<div style='margin:8px 0'><b>{html.escape(title)}</b><div>{body}</div></div>"


def _one_line(table: pd.DataFrame, columns=("left", "token", "right")) -> pd.DataFrame:
    """Line breaks and tabs of the contexts shown as ↵ and → so that every context stays on one line."""
    table = table.copy()
    for column in columns:
        table[column] = table[column].astype(str).str.replace("\n", "↵", regex=False).str.replace("\t", "→",
                                                                                                regex=False)
    return table


def _contexts(table: pd.DataFrame, scale: float) -> str:
    table = _one_line(table)
    rows = contexts_html(table, scale)
    return "".join(f"<div style='{_TABLE}'>{v:+8.3f}  z {z:+6.2f}  pos {int(p):>4}  {row}</div>"
                   for v, z, p, row in zip(table["value"], table["z"], table["position"], rows))


def _bands(samples: pd.DataFrame, scale: float) -> str:
    parts = []
    for band, part in samples.groupby("label", sort=False):
        parts.append(f"<div style='margin-top:4px'><i>{html.escape(str(band))}</i></div>" + _contexts(part, scale))
    return "".join(parts) or "<i>no samples</i>"


def _tokens(tokens: pd.DataFrame) -> str:
    head = "<tr>" + "".join(f"<th style='text-align:right;padding:0 6px'>{c}</th>" for c in
                            ("token", "count", "mean", "extreme", "lower tail", "upper tail")) + "</tr>"
    body = "".join(f"<tr><td style='padding:0 6px'><code>{html.escape(repr(r.token))}</code></td>"
                   f"<td style='text-align:right'>{r.count}</td><td style='text-align:right'>{r.mean:+.3f}</td>"
                   f"<td style='text-align:right'>{r.extreme:+.3f}</td>"
                   f"<td style='text-align:right'>{r.lower_share:.0%}</td>"
                   f"<td style='text-align:right'>{r.upper_share:.0%}</td></tr>" for r in tokens.itertuples())
    return f"<table style='{_TABLE}'>{head}{body}</table>"


def _concentration(table: pd.DataFrame) -> str:
    lines = []
    for r in table.itertuples():
        if not r.tail_outputs:
            lines.append(f"{r.tail} tail: empty")
            continue
        lines.append(f"{r.tail} tail ({r.tail_outputs} outputs): {r.concentration:.0%} from "
                     f"<code>{html.escape(repr(r.top_token))}</code> (random tokens: {r.control:.0%})")
    return "<div style='margin-top:4px'>" + "<br>".join(lines) + "</div>"


def _pairs(pairs: pd.DataFrame, scale: float) -> str:
    from ..highlight import context_html

    rows = []
    pairs = _one_line(pairs, [f"{c}_{s}" for c in ("left", "token", "right") for s in "ab"])
    for r in pairs.itertuples():
        a = context_html(r.left_a, r.token_a, r.right_a, r.value_a, scale)
        b = context_html(r.left_b, r.token_b, r.right_b, r.value_b, scale)
        rows.append(f"<div style='{_TABLE};margin-top:3px'>input distance {r.dx:.3f}, output difference "
                    f"{r.dy:.2f} (ratio {r.ratio:.1f})<br>&nbsp;&nbsp;{r.value_a:+.3f} {a}<br>"
                    f"&nbsp;&nbsp;{r.value_b:+.3f} {b}</div>")
    return "".join(rows) or "<i>no pairs</i>"


def _position_note(ctx, neuron: int, skip_first: int, share: float) -> str:
    from ..positions import SINK_SHARE

    positions = ctx.positions(neuron)
    first = positions.iloc[0]
    note = (f"{share:.0%} of its most extreme outputs sit at position {skip_first} of a window"
            f" (mean z there {first['mean_z']:+.2f}, {int(first['count']):,} tokens)")
    if share >= SINK_SHARE:
        note = ("⚓ <b>first-token artefact</b>: " + html.escape(note) + ". The model turns the first token of "
                "every window into an attention sink with massive activations; tick <i>drop the first token</i> "
                "to rank the layer without it.")
    else:
        note = html.escape(note) + "."
    return f"<div style='margin:6px 0'>{note}</div>"
