"""Downloads and figures on a page: a PNG in an output area, and data: links for CSV (spreadsheet-safe)
and PNG files named after what they hold."""
from __future__ import annotations

import base64
import html
import re

import ipywidgets as widgets
import pandas as pd
from IPython.display import Image

from wnb import plots
from wnb.core.spreadsheet import safe_csv


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
    """A download link of ``table`` as CSV, formula-like text cells defused for spreadsheets (:func:`safe_csv`)."""

    return data_link(safe_csv(table).encode(), filename, "text/csv", f"⬇ {filename}")


def png_link(png: bytes, filename: str) -> str:
    return data_link(png, filename, "image/png", f"⬇ {filename}")


def slug(name: str) -> str:
    """``name`` as part of a file name (no slashes, spaces, colons or percent signs)."""
    text = str(name).replace(":", "of").replace("%", "pct")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
