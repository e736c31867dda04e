"""What wnb writes for people is safe to open: HTML shows crafted values as text (never markup), and CSV
cells that a spreadsheet would run as formulas are defused (OWASP's leading quote) while numbers stay
numbers. The checks parse the output with the standard library's html.parser and csv modules."""
import base64
import csv
import html
import io
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from wnb.app import report
from wnb.cli.run_folder import RunFolder
from wnb.core.spreadsheet import safe_csv

CRAFTED = "<img src=x onerror=alert(1)>"


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def tags(text: str) -> list[str]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


# ---------------------------------------------------------------- HTML (issue 19, item 5)

def test_the_layer_map_escapes_block_and_kind_labels():
    pytest.importorskip("ipywidgets")
    from wnb.widgets.overview import layer_map

    frame = pd.DataFrame({"layer": ["a", "b"], "block": [CRAFTED, CRAFTED], "kind": [CRAFTED, "up_proj"],
                          "top_over_median": [2.0, 3.0], "sinks": [0, 1]})
    grid = layer_map(frame, lambda name: None)
    shown = "".join(child.value for child in grid.children if hasattr(child, "value"))
    assert "img" not in tags(shown) and CRAFTED not in shown
    assert shown.count(html.escape(CRAFTED)) == 2  # the block label and the kind label, as text


def test_the_neuron_page_blocks_escape_table_values():
    tokens = pd.DataFrame({"token": ["a"], "count": [CRAFTED], "mean": [0.5], "extreme": [1.5],
                           "lower_share": [0.1], "upper_share": [0.2]})
    concentration = pd.DataFrame({"tail": [CRAFTED, "lower"], "tail_outputs": [CRAFTED, 0], "concentration": [0.5, 0],
                                  "top_token": ["x", "y"], "control": [0.1, 0.1]})
    for text in (report.tokens_block(tokens), report.concentration_block(concentration)):
        assert "img" not in tags(text) and CRAFTED not in text
        assert html.escape(CRAFTED) in text


# ---------------------------------------------------------------- CSV (issue 19, item 6)

FORMULAS = ['=HYPERLINK("http://x","click")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\r=x"]


def _frame() -> pd.DataFrame:
    n = len(FORMULAS) + 2
    return pd.DataFrame({"token": FORMULAS + ["plain", " -not first"], "delta": [-1.5, -2, 0.25, -3e-5, 4, -5, 6, -7],
                         "rank": list(range(-3, n - 3)), "mixed": [-1, "=1", None, "x", 2.5, "-", "", "@"]})


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _check(text: str) -> None:
    header, *rows = _rows(text)
    assert header == ["token", "delta", "rank", "mixed"]
    assert [r[0] for r in rows] == ["'" + f for f in FORMULAS] + ["plain", " -not first"]
    assert [float(r[1]) for r in rows] == [-1.5, -2, 0.25, -3e-5, 4, -5, 6, -7]  # numbers stay numbers
    assert [r[2] for r in rows] == [str(i) for i in range(-3, 5)]
    assert [r[3] for r in rows] == ["-1", "'=1", "", "x", "2.5", "'-", "", "'@"]
    for row in rows:
        for cell in row:
            assert not re.match(r"[=+@\t\r]", cell), cell  # nothing a spreadsheet runs
            assert not cell.startswith("-") or float(cell) < 0


def test_safe_csv_defuses_formulas_and_keeps_numbers():
    frame = _frame()
    _check(safe_csv(frame))
    pd.testing.assert_frame_equal(frame, _frame())  # the caller's frame is not changed
    assert _rows(safe_csv(pd.DataFrame({"=cmd": [1]})))[0] == ["'=cmd"]  # a header cell too


def test_the_app_download_links_are_spreadsheet_safe():
    pytest.importorskip("ipywidgets")
    from wnb.widgets.links import csv_link

    link = csv_link(_frame(), "tokens.csv")
    data = re.search(r'href="data:text/csv;base64,([^"]+)"', link).group(1)
    _check(base64.b64decode(data).decode())


def test_the_command_tables_are_spreadsheet_safe(tmp_path):
    run = RunFolder(tmp_path / "out", "neuron", [])
    run.start({})
    run.table("neuron_5_tokens.csv", _frame(), "tokens")
    with open(tmp_path / "out" / "neuron_5_tokens.csv", encoding="utf-8", newline="") as f:
        _check(f.read())
