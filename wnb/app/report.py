"""A neuron as readable HTML: the pieces of the app's "What it reads" section, and a self-contained page.

Every text from the corpus, the model or the user is HTML-escaped (:mod:`wnb.reading.highlight`); the page has
no script and loads nothing: figures are embedded as PNG data.
"""
from __future__ import annotations

import base64
import html

import pandas as pd

from wnb import plots
from wnb.data.positions import SINK_SHARE
from wnb.reading.highlight import context_html, contexts_html
from wnb.scoring.sign import QUADRANTS

SHOWN = 10       # contexts per tail on a page (the CSV holds all that are kept)
TOKENS_SHOWN = 12
_TABLE = "font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;border-collapse:collapse"


EFFECT_TITLE = ("What it writes: the logits one unit of its activation moves directly (the down projection's "
                "column times the unembedding; this ignores the final norm and every later layer)")


def section(title: str, body: str) -> str:
    return f"<div style='margin:8px 0'><b>{html.escape(title)}</b><div>{body}</div></div>"


def one_line(table: pd.DataFrame, columns=("left", "token", "right")) -> pd.DataFrame:
    """Line breaks and tabs of the contexts shown as ↵ and → so that every context stays on one line."""
    table = table.copy()
    for column in columns:
        table[column] = table[column].astype(str).str.replace("\n", "↵", regex=False).str.replace("\t", "→",
                                                                                                regex=False)
    return table


def contexts_block(table: pd.DataFrame, scale: float) -> str:
    table = one_line(table)
    rows = contexts_html(table, scale)
    return "".join(f"<div style='{_TABLE}'>{v:+8.3f}  z {z:+6.2f}  pos {int(p):>4}  {row}</div>"
                   for v, z, p, row in zip(table["value"], table["z"], table["position"], rows))


def bands_block(samples: pd.DataFrame, scale: float) -> str:
    parts = []
    for band, part in samples.groupby("label", sort=False):
        parts.append(f"<div style='margin-top:4px'><i>{html.escape(str(band))}</i></div>" + contexts_block(part, scale))
    return "".join(parts) or "<i>no samples</i>"


def tokens_block(tokens: pd.DataFrame) -> str:
    head = "<tr>" + "".join(f"<th style='text-align:right;padding:0 6px'>{c}</th>" for c in
                            ("token", "count", "mean", "extreme", "lower tail", "upper tail")) + "</tr>"
    body = "".join(f"<tr><td style='padding:0 6px'><code>{html.escape(repr(r.token))}</code></td>"
                   f"<td style='text-align:right'>{html.escape(str(r.count))}</td>"
                   f"<td style='text-align:right'>{r.mean:+.3f}</td>"
                   f"<td style='text-align:right'>{r.extreme:+.3f}</td>"
                   f"<td style='text-align:right'>{_share(r.lower_share)}</td>"
                   f"<td style='text-align:right'>{_share(r.upper_share)}</td></tr>" for r in tokens.itertuples())
    return f"<table style='{_TABLE}'>{head}{body}</table>"


def _share(value) -> str:
    return "–" if pd.isna(value) else f"{value:.0%}"  # an empty tail has no shares


def concentration_block(table: pd.DataFrame) -> str:
    lines = []
    for r in table.itertuples():
        tail = html.escape(str(r.tail))
        if not r.tail_outputs:
            lines.append(f"{tail} tail: empty")
            continue
        lines.append(f"{tail} tail ({html.escape(str(r.tail_outputs))} outputs): {r.concentration:.0%} from "
                     f"<code>{html.escape(repr(r.top_token))}</code> (random tokens: {r.control:.0%})")
    return "<div style='margin-top:4px'>" + "<br>".join(lines) + "</div>"


def pairs_block(pairs: pd.DataFrame, scale: float) -> str:

    rows = []
    pairs = one_line(pairs, [f"{c}_{s}" for c in ("left", "token", "right") for s in "ab"])
    for r in pairs.itertuples():
        a = context_html(r.left_a, r.token_a, r.right_a, r.value_a, scale)
        b = context_html(r.left_b, r.token_b, r.right_b, r.value_b, scale)
        rows.append(f"<div style='{_TABLE};margin-top:3px'>input distance {r.dx:.3f}, output difference "
                    f"{r.dy:.2f} (ratio {r.ratio:.1f})<br>&nbsp;&nbsp;{r.value_a:+.3f} {a}<br>"
                    f"&nbsp;&nbsp;{r.value_b:+.3f} {b}</div>")
    return "".join(rows) or "<i>no pairs</i>"


def position_note(ctx, neuron: int, skip_first: int, share: float) -> str:

    positions = ctx.positions(neuron)
    first = positions.iloc[0]
    note = (f"{share:.0%} of its tail outputs (beyond ±2.5σ) sit at position {skip_first} of a window"
            f" (mean z there {first['mean_z']:+.2f}, {int(first['count']):,} tokens)")
    if share >= SINK_SHARE:
        note = ("⚓ <b>first-token artefact</b>: " + html.escape(note) + ". The model turns the first token of "
                "every window into an attention sink with massive activations; tick <i>drop the first token</i> "
                "to rank the layer without it.")
    else:
        note = html.escape(note) + "."
    return f"<div style='margin:6px 0'>{note}</div>"


def reading_sections(tables: dict, scale: float) -> dict[str, str]:
    """The HTML of each part of "What it reads" from :func:`reading_tables` (every text escaped)."""
    contexts = tables["contexts"]
    high, low = contexts[contexts["side"] == "high"], contexts[contexts["side"] == "low"]
    effect = tables.get("output_effect")
    return {
        "tails": section("Highest outputs", contexts_block(high.head(SHOWN), scale)) +
                 section("Lowest outputs", contexts_block(low.head(SHOWN), scale)),
        "bands": section("What each part of the distribution is made of (seeded examples per band)",
                         bands_block(tables["band_samples"], scale)),
        "tokens": section("Tokens: count, mean and extreme output, share of each tail (beyond ±2.5σ)",
                          tokens_block(tables["tokens"].head(TOKENS_SHOWN)) +
                          concentration_block(tables["tail_concentration"])),
        "pairs": section("Differentiating pairs: nearly the same input, far apart outputs (the dots of the pair "
                         "plot with the largest ratio)", pairs_block(tables["differentiating_pairs"], scale)),
        "effect": section(EFFECT_TITLE, effect_lines(effect) if effect is not None
                          else f"<i>{html.escape(tables['effect_note'])}</i>") + quadrant_line(tables),
    }


def quadrant_line(tables: dict) -> str:
    """For a gate_proj neuron: how its tokens fall in the sign quadrants of (gate, up)."""
    quadrants = tables.get("sign_quadrants")
    if quadrants is None or not len(quadrants):
        return ""

    row = quadrants.iloc[0]
    words = {"gate_neg_up_neg": "gate < 0, up < 0", "gate_neg_up_pos": "gate < 0, up ≥ 0",
             "gate_pos_up_neg": "gate ≥ 0, up < 0", "gate_pos_up_pos": "gate ≥ 0, up ≥ 0"}
    shares = " · ".join(f"{words[q]}: {row[q]:.0%}" for q in QUADRANTS)
    return section("Sign quadrants of (gate, up) over the calibration tokens (SwiGLU's output is small when "
                   "the gate is very negative, whatever up)", html.escape(shares))


def neuron_page(session, layer: str, neuron: int, progress: bool = True) -> tuple[str, dict[str, pd.DataFrame]]:
    """One self-contained HTML page about ``neuron`` of ``layer`` (a :class:`wnb.app.session.Session`'s
    calibration capture) and the tables behind it: summary, histogram and pair plot (embedded PNGs), and
    every part of "What it reads"."""

    view = session.layer(layer, progress)
    ctx = session.contexts(view.name, progress)
    row = view.row(neuron)
    tables = session.reading(view.name, neuron, progress=progress)
    parts = reading_sections(tables, ctx.scale(neuron))
    hist = plots.to_png(plots.output_histogram({f"neuron {neuron}": view.kept_outputs[:, neuron]},
                                               title=f"{view.name} · neuron {neuron}"))
    dx, dy = view.pairs([neuron, view.ordinary_neuron()])
    pair_png = plots.to_png(plots.pair_scatter(dx, dy, {f"neuron {neuron}": 0, "ordinary neuron (median WD)": 1},
                                               seed=view.seed))
    summary = (f"rank {int(row['rank'])} of {view.n_neurons} by WD · WD {row['wd']:.4f}" +
               (f" · MD {row['md']:.3f}" if "md" in row else "") + f" · mean {row['mean']:.4f} · variance "
               f"{row['variance']:.4g}" + (f" · {row['frac_negative']:.0%} of outputs below zero, "
                                           f"{row['wd_share_below_zero']:.0%} of WD over them"
                                           if "frac_negative" in row and row["wd"] > 0 else ""))
    body = "".join([
        f"<h1 style='font-size:20px'>{html.escape(view.name)} · neuron {neuron}</h1>",
        f"<p>{html.escape(session.model_name)} · {html.escape(summary)} · {view.outputs.shape[0]:,} calibration "
        f"tokens · seed {session.seed}</p>", _img(hist), _img(pair_png),
        position_note(ctx, neuron, view.skip_first, tail_share_at_first(view, neuron)),
        *parts.values()])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(view.name)} neuron {neuron}"
            f"</title></head><body style='font-family:sans-serif;max-width:1100px;margin:16px auto'>{body}</body></html>")
    return page, {k: v for k, v in tables.items() if isinstance(v, pd.DataFrame)}


def tail_share_at_first(view, neuron: int) -> float:
    """The share of ``neuron``'s tail outputs (beyond ±2.5σ) at the first position kept, from its layer's table."""
    row = view.row(neuron)
    return float(row["pos0_tail_share"]) if "pos0_tail_share" in row else float("nan")


def effect_lines(effect: pd.DataFrame) -> str:
    rows = []
    for side in ("raises", "lowers"):
        part = effect[effect["side"] == side]
        rows.append(f"<b>{side}</b>: " + ", ".join(f"<code>{html.escape(repr(t))}</code> {v:+.3f}"
                                                  for t, v in zip(part["token"], part["effect"])))
    return "<br>".join(rows)


def _img(png: bytes) -> str:
    return f"<img alt='figure' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
