"""CSV for people: text cells a spreadsheet would run as a formula are defused (OWASP, "CSV Injection").

A cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is taken as a formula by Excel,
LibreOffice and Google Sheets; a token, a layer name or a file name in wnb's tables can begin so. Such
*text* cells (and column names) get a leading single quote ``'``, which spreadsheets show as text,
and are written in double quotes; numbers stay numbers (a negative number is not text). Every CSV wnb
writes for people goes through :func:`safe_csv`: the app's download links and the command's tables.
"""
from __future__ import annotations

import csv

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _defuse(value):
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells and column names that begin like a formula start with ``'``."""
    safe = frame.copy()
    for i in range(safe.shape[1]):
        column = safe.iloc[:, i]
        if not (pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype)
                or pd.api.types.is_datetime64_any_dtype(column.dtype)):
            safe.isetitem(i, column.map(_defuse))
    safe.columns = [_defuse(c) for c in safe.columns]
    return safe


def safe_csv(frame: pd.DataFrame) -> str:
    """``frame`` as CSV text without its index, formula-like text cells defused (:func:`spreadsheet_safe`)
    and every text cell in double quotes (numbers bare), as OWASP advises: a carriage return inside an
    unquoted cell would otherwise start a new row whose first cell no quote protects."""
    return spreadsheet_safe(frame).to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)
