"""The text probe's HTML: escaped text, inline styles only, values equal a plain-hook run."""
import dataclasses
import html
import re

import pytest
import torch
from helpers import VOCAB
from helpers.highlight import HOSTILE, hook_values

import wnb
import wnb.reading
from wnb.errors import WnbError
from wnb.reading.highlight import colour


class CharTokenizer:
    """One token per character (id = code point mod the tiny vocabulary), with offsets like a fast tokenizer."""

    is_fast = True

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False, verbose=False):
        out = {"input_ids": [ord(c) % VOCAB for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out

    def decode(self, ids, **_):
        return "".join(chr(i) for i in ids)


@pytest.fixture
def char_llama(tiny_llama):
    return dataclasses.replace(tiny_llama, tokenizer=CharTokenizer())




def spans(page):
    return re.findall(r'<span style="([^"]*)" title="([^"]*)">([^<]*)</span>', page)


def test_hostile_text_renders_escaped_with_inline_styles_only(char_llama):
    layer = "model.layers.1.mlp.gate_proj"
    page = wnb.activation_html(char_llama, HOSTILE, layer, 3)
    assert "<script" not in page.lower() and "<b>" not in page
    shown = re.sub(r"<[^>]+>", "", page)  # the text between the tags, still escaped
    assert "&lt;script&gt;" in shown and "&amp;amp;" in shown  # the text's own "&amp;" shows as five characters
    assert html.unescape(shown) == HOSTILE  # every character comes back once, in order
    assert not re.search(r"<(link|style|img|iframe|object)\b", page) and "url(" not in page and "http" not in page
    assert all(tag in ("div", "span", "/div", "/span") for tag in re.findall(r"<(/?\w+)", page))


def test_values_and_colours_follow_the_neuron(char_llama):
    layer, neuron = "model.layers.0.mlp.gate_proj", 5
    text = "abc xyz"
    table = wnb.token_activations(char_llama, text, layer, neuron)
    ids = [ord(c) % VOCAB for c in text]
    torch.testing.assert_close(torch.tensor(table["value"].to_numpy()), hook_values(char_llama, layer, ids, neuron).double(),
                               rtol=1e-5, atol=1e-6)
    assert table["text"].tolist() == list(text) and table["position"].tolist() == list(range(len(text)))
    page = wnb.activation_html(char_llama, text, layer, neuron)
    found = spans(page)
    assert len(found) == len(text)
    scale = table["value"].abs().max()
    for (style, title, piece), value in zip(found, table["value"]):
        assert float(title) == pytest.approx(value, rel=1e-3, abs=1e-6)
        assert colour(value, scale)[0] in style


def test_colour_scale_is_diverging_and_centred():
    assert colour(0.0, 1.0)[0] == "rgb(255,255,255)"
    assert colour(1.0, 1.0)[0] == "rgb(255,51,51)" and colour(-1.0, 1.0)[0] == "rgb(51,51,255)"
    assert colour(5.0, 1.0) == colour(1.0, 1.0)  # clipped at the scale
    assert colour(float("nan"), 1.0)[0] == "transparent"


def test_context_rows_are_escaped_and_highlighted():
    row = wnb.context_html("a <i>", "<script>", "& b", value=-2.0, scale=2.0)
    assert "<script" not in row and "<i>" not in row
    assert html.unescape(re.sub(r"<[^>]+>", "", row)) == "a <i><script>& b"
    assert 'title="-2"' in row and colour(-2.0, 2.0)[0] in row
    import pandas as pd

    rows = wnb.contexts_html(pd.DataFrame({"left": ["x"], "token": ["&"], "right": ["y"], "value": [1.0]}))
    assert len(rows) == 1 and "&amp;" in rows[0]


def test_bad_text_is_refused_clearly(char_llama):
    layer = "model.layers.0.mlp.gate_proj"
    with pytest.raises(WnbError, match="at most 10 are allowed"):
        wnb.activation_html(char_llama, "x" * 11, layer, 0, max_chars=10)
    with pytest.raises(WnbError, match="empty"):
        wnb.activation_html(char_llama, "   ", layer, 0)
    with pytest.raises(WnbError, match="reads at most 128"):
        wnb.activation_html(char_llama, "y" * 200, layer, 0)
    with pytest.raises(WnbError, match="between 0 and 63"):
        wnb.activation_html(char_llama, "ok", layer, 64)
    with pytest.raises(WnbError, match="no tokenizer"):
        wnb.activation_html(dataclasses.replace(char_llama, tokenizer=None), "ok", layer, 0)


