"""Text highlighted by a neuron's output, as self-contained HTML.

Every token gets a background on a diverging scale centred at 0 (blue below, red above, white at 0)
and its value in a ``title`` attribute (shown on hover). The HTML uses inline styles only: no script,
no stylesheet, nothing fetched, so it works offline, on Binder and in a widget. Every piece of text is
HTML-escaped, so a text containing ``<script>`` or ``&amp;`` shows as that text.
"""
from __future__ import annotations

import html
import math

import pandas as pd
import torch

from wnb.core.checks import check_float, check_int
from wnb.data.tokens import decode
from wnb.data.windows import context_length
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, layer_weight
from wnb.tracing.capture import capture

MAX_CHARS = 4000
"""Longest text :func:`activation_html` and :func:`token_activations` accept (the probe runs the model on it)."""

_BOX = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;line-height:1.9"
_STRONG = 0.6  # above this share of the scale the text turns white


def colour(value: float, scale: float) -> tuple[str, str]:
    """``(background, text colour)`` CSS colours for ``value`` on a diverging scale of ``±scale``."""
    if value is None or not math.isfinite(value) or not scale > 0:
        return "transparent", "inherit"
    t = max(-1.0, min(1.0, value / scale))
    fade = round(255 * (1 - 0.8 * abs(t)))
    background = f"rgb(255,{fade},{fade})" if t >= 0 else f"rgb({fade},{fade},255)"
    return background, "#fff" if abs(t) > _STRONG else "#000"


def _span(text: str, value: float | None, scale: float) -> str:
    if value is None:
        return html.escape(text)
    background, ink = colour(value, scale)
    return (f'<span style="background-color:{background};color:{ink};border-radius:2px;padding:0 1px" '
            f'title="{html.escape(f"{value:.4g}", quote=True)}">{html.escape(text)}</span>')


def tokens_html(pieces, values, scale: float | None = None) -> str:
    """HTML of text ``pieces`` (one per token; a value of None leaves a piece plain) highlighted by ``values``
    on ``±scale`` (default: the largest ``|value|``)."""
    pieces, values = list(pieces), [None if v is None else float(v) for v in values]
    if len(pieces) != len(values):
        raise WnbError(f"one value per text piece is needed (got {len(pieces)} pieces and {len(values)} values)")
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    scale = (max(finite) if finite else 0.0) if scale is None else check_float(scale, "scale", 0, None)
    body = "".join(_span(p, v, scale) for p, v in zip(pieces, values))
    return f'<div style="{_BOX}">{body}</div>'


def context_html(left: str, token: str, right: str, value: float, scale: float) -> str:
    """One context row (the ``left``, ``token`` and ``right`` of :meth:`wnb.NeuronContexts.top`) as HTML: the
    token highlighted by ``value`` on ``±scale`` (e.g. the neuron's largest ``|output|``), the rest plain."""
    scale = check_float(scale, "scale", 0, None)
    inner = html.escape(str(left)) + _span(str(token), float(value), scale) + html.escape(str(right))
    return f'<span style="{_BOX}">{inner}</span>'


def contexts_html(table: pd.DataFrame, scale: float | None = None) -> list[str]:
    """:func:`context_html` of every row of a contexts table (columns ``left, token, right, value``), on one
    scale (default: the table's largest ``|value|``)."""
    if scale is None:
        scale = float(table["value"].abs().max()) if len(table) else 0.0
    return [context_html(r.left, r.token, r.right, r.value, scale) for r in table.itertuples()]


def _tokenize(lm, text: str, max_chars: int) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of ``text`` (no special tokens, as the calibration windows) and, from a fast tokenizer,
    each token's character span."""
    if not isinstance(text, str) or not text.strip():
        raise WnbError("the text is empty: type or paste some text to see the neuron's output on it")
    max_chars = check_int(max_chars, "max_chars")
    if len(text) > max_chars:
        raise WnbError(f"the text has {len(text):,} characters; at most {max_chars:,} are allowed "
                       f"(the model runs on all of it): shorten it")
    if lm.tokenizer is None:
        raise WnbError(f"{lm.name} has no tokenizer: the text probe needs one")
    fast = getattr(lm.tokenizer, "is_fast", False)
    enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast, verbose=False)
    return list(enc["input_ids"]), (list(enc["offset_mapping"]) if fast else None)


def token_activations(lm, text: str, layer: str, neuron: int, max_chars: int = MAX_CHARS) -> pd.DataFrame:
    """The output of ``neuron`` of ``layer`` on every token of ``text``: ``position, token_id, text, value``.

    ``text`` is each token's own characters (from the fast tokenizer's offsets; decoded otherwise). The
    text is tokenized without special tokens, like the calibration windows, so its first token sits at
    position 0 (where many models put an attention sink).
    """
    return _activations(lm, text, layer, neuron, max_chars)[0]


def _activations(lm, text, layer, neuron, max_chars):

    (layer,) = check_layers(lm, [layer])
    d_out = layer_weight(lm, layer).shape[0]
    neuron = check_int(neuron, "neuron", minimum=0)
    if neuron >= d_out:
        raise WnbError(f"neuron must be between 0 and {d_out - 1} for {layer} (got {neuron})")
    ids, spans = _tokenize(lm, text, max_chars)
    if not ids:
        raise WnbError("the text has no tokens")
    limit = context_length(lm)
    if limit is not None and len(ids) > limit:
        raise WnbError(f"the text has {len(ids):,} tokens but {lm.name} reads at most {limit:,}: shorten it")
    out = capture(lm, [layer], torch.tensor([ids]), inputs=False, progress=False)[layer].outputs[:, neuron]
    pieces = ([text[a:b] for a, b in spans] if spans is not None else [decode(lm.tokenizer, [i]) for i in ids])
    return pd.DataFrame({"position": range(len(ids)), "token_id": ids, "text": pieces,
                         "value": out.double().numpy()}), spans


def activation_html(lm, text: str, layer: str, neuron: int, scale: float | None = None,
                    max_chars: int = MAX_CHARS) -> str:
    """``text`` as HTML with every token highlighted by the output of ``neuron`` of ``layer`` on it.

    Diverging colours centred at 0 on ``±scale`` (default: the largest ``|output|`` in the text; pass the
    neuron's own range, e.g. from :meth:`wnb.NeuronContexts.table`, to compare texts); the value shows on
    hover. Characters between tokens (when the tokenizer's offsets skip them) are shown plain. Inline
    styles only, every piece HTML-escaped; at most ``max_chars`` characters (a WnbError says so).
    """
    table, spans = _activations(lm, text, layer, neuron, max_chars)
    if spans is None:
        return tokens_html(table["text"], table["value"], scale)
    pieces, values, at = [], [], 0
    for (a, b), value in zip(spans, table["value"]):
        if a > at:  # characters no token claims (e.g. trimmed spaces): plain
            pieces.append(text[at:a])
            values.append(None)
        pieces.append(text[max(a, at):b])  # tokens sharing a character (split UTF-8) show it once
        values.append(value)
        at = max(at, b)
    if at < len(text):
        pieces.append(text[at:])
        values.append(None)
    if scale is None:
        scale = float(table["value"].abs().max())
    return tokens_html(pieces, values, scale)
