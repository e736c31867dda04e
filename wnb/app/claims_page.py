"""The claims as one self-contained HTML page (``wnb claims``'s claims.html, the app's download): a table of
verdict chips with each statistic and interval, then one section per claim with its figure, the paper's
number beside ours, the decision rule and the settings that differ from the paper's. Every text is
HTML-escaped; the page has no script and loads nothing (figures are embedded PNG data)."""
from __future__ import annotations

import base64
import html
import math

import pandas as pd

from wnb import plots
from wnb.experiments.claims import VERDICTS

MEANINGS = {
    "holds": "the 95% interval lies on the paper's side",
    "reversed": "it lies on the other side",
    "not observed": "it includes no effect and excludes an effect of the paper's size (or the declared minimum)",
    "inconclusive": "too wide to tell",
    "not run": "needs what this model or machine lacks (said in the row)",
}
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:16px auto;color:#24292f}"
         "table{border-collapse:collapse;font-size:13px}td,th{padding:4px 8px;border-bottom:1px solid #d0d7de;"
         "text-align:left;vertical-align:top}.chip{display:inline-block;padding:1px 8px;border-radius:10px;"
         "color:white;font-size:12px;white-space:nowrap}.muted{color:#57606a;font-size:12px}"
         "section{border-top:2px solid #d0d7de;margin-top:18px;padding-top:6px}")


def chip(verdict: str) -> str:
    """A coloured verdict label (inline style, so it also works inside the app's HTML widgets)."""
    color = plots.VERDICT_COLORS.get(verdict, "#57606a")
    return (f"<span class='chip' style='display:inline-block;padding:1px 8px;border-radius:10px;color:white;"
            f"font-size:12px;white-space:nowrap;background:{color}'>{html.escape(verdict)}</span>")


def interval_text(row: dict) -> str:
    """``value [low, high]`` of a row, or a dash for a claim that was not run."""
    value, low, high = (row.get(k, math.nan) for k in ("value", "low", "high"))
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{value:+.3g} [{low:+.3g}, {high:+.3g}]"


def comparable_text(row: dict) -> str:
    differs = row.get("differs") or []
    return "comparable" if row.get("comparable") else f"not comparable ({len(differs)} setting(s) differ)"


def table_html(rows: list[dict], links: dict[str, str] | None = None) -> str:
    """The verdict table: one row per claim; ``links`` maps a claim id to an HTML link shown beside it."""
    head = "".join(f"<th>{h}</th>" for h in ("claim", "", "statistic [95%]", "paper", "verdict", "comparable"))
    body = []
    for row in rows:
        link = (links or {}).get(row["id"], f"<a href='#{html.escape(row['id'])}'>{html.escape(row['id'])}</a>")
        body.append(f"<tr><td><b>{link}</b></td><td>{html.escape(row['claim'])}<div class='muted'>"
                    f"{html.escape(row['paper'])}, {html.escape(row['where'])}</div></td>"
                    f"<td>{html.escape(interval_text(row))}</td><td>{html.escape(row['paper_value'])}</td>"
                    f"<td>{chip(row['verdict'])}</td><td class='muted'>{html.escape(comparable_text(row))}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def claim_figure(row: dict):
    """The row's forest plot (None for a claim that was not run)."""
    detail = row.get("detail")
    if not isinstance(detail, pd.DataFrame) or detail.empty:
        return None
    return plots.claim_forest(detail, title=f"{row['id']}: {row['verdict']}", null=row.get("null", 0.0),
                              minimum=row.get("minimum"), direction=row.get("direction", "greater"),
                              verdict=row.get("verdict"))


def section_html(row: dict) -> str:
    fig = claim_figure(row)
    image = "" if fig is None else (f"<img alt='{html.escape(row['id'])} figure' src='data:image/png;base64,"
                                    f"{base64.b64encode(plots.to_png(fig)).decode()}'>")
    differs = "".join(f"<li>{html.escape(d)}</li>" for d in row.get("differs") or [])
    reason = f"<p><b>Not run:</b> {html.escape(row['reason'])}</p>" if row.get("reason") else ""
    return (f"<section id='{html.escape(row['id'])}'><h2>{html.escape(row['id'])} {chip(row['verdict'])} "
            f"{html.escape(row['claim'])}</h2><p class='muted'>{html.escape(row['paper'])}, "
            f"{html.escape(row['where'])} · in the app: {html.escape(row.get('tab', ''))} tab</p>"
            f"<table><tr><th>paper</th><td>{html.escape(row['paper_value'])}</td></tr>"
            f"<tr><th>ours</th><td>{html.escape(row.get('ours') or '–')}</td></tr>"
            f"<tr><th>statistic</th><td>{html.escape(row['statistic'])}: {html.escape(interval_text(row))}</td></tr>"
            f"<tr><th>verdict</th><td>{html.escape(row.get('wording') or row['verdict'])}</td></tr>"
            f"<tr><th>rule</th><td>{html.escape(row['rule'])}</td></tr>"
            f"<tr><th>computation</th><td>{html.escape(row.get('computation', ''))}</td></tr></table>{reason}"
            f"{image}<p><b>{html.escape(comparable_text(row))}</b></p><ul>{differs}</ul>"
            f"<p class='muted'>{row.get('seconds', 0):.1f} s</p></section>")


def claims_page(rows: list[dict], title: str, setting: str = "") -> str:
    """The whole page: title, what the verdicts mean, the table, one section per claim."""
    legend = "".join(f"<li>{chip(v)} {html.escape(MEANINGS[v])}</li>" for v in VERDICTS)
    body = (f"<h1>{html.escape(title)}</h1><p>{html.escape(setting)}</p><ul>{legend}</ul>"
            "<p class='muted'>Each rule was fixed before the data was seen (wnb.experiments.claims). A verdict "
            "here is about this model in these settings: where they differ from the paper's, it is not a "
            "replication of the paper.</p>" + table_html(rows) + "".join(section_html(r) for r in rows))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def session_page(session, rows: list[dict]) -> str:
    """The self-contained page of ``rows`` for a :class:`wnb.app.session.Session`'s model and budget."""
    return claims_page(rows, f"Does it hold on {session.model_name}?", session.claims_setting())
