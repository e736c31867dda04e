"""Claims: does each finding of both papers hold on the session's model? One table of verdicts, each claim
runnable alone or all at once (a job with Cancel and an estimate; results cached), its figure and words, and a
link to the tab that shows it in detail. The session computes everything (:mod:`wnb.app.claims`)."""
from __future__ import annotations

import html
from typing import TYPE_CHECKING, Callable

import ipywidgets as widgets

from wnb.app.claims_page import (
    MEANINGS,
    chip,
    claim_figure,
    section_html,
    session_page,
    table_html,
)
from wnb.experiments.claim_runner import claims_frame
from wnb.experiments.claims import CLAIMS, VERDICTS, claim
from wnb.widgets.links import csv_link, data_link, slug
from wnb.widgets.messages import rough_duration
from wnb.widgets.panel import CSS, SessionPanel

if TYPE_CHECKING:
    from wnb.widgets.settings import Settings


class ClaimsView(SessionPanel):
    """The claims table for the session's model and budget; Run one claim, Run all, open its tab."""

    def __init__(self, settings: Settings, lazy: bool = True, open_tab: Callable[[str], None] | None = None):
        self.settings = settings
        self.open_tab = open_tab
        self.choice = widgets.Dropdown(options=[(f"{c.id} · {c.claim[:70]}", c.id) for c in CLAIMS], value="W1",
                                       description="claim", layout=widgets.Layout(width="560px"))
        self.run_one = widgets.Button(description="Run this claim", icon="play", button_style="primary",
                                      layout=widgets.Layout(width="auto"))
        self.run_all = widgets.Button(description="Run all claims", icon="play", button_style="primary",
                                      layout=widgets.Layout(width="auto"))
        self.goto = widgets.Button(description="Show in its tab", icon="external-link",
                                   layout=widgets.Layout(width="auto"))
        self.table = widgets.HTML()
        self.figure_out = widgets.Output()
        self.section = widgets.HTML()
        self.downloads = widgets.HTML()
        for part, name in ((self.choice, "claim-choice"), (self.table, "claims-table"),
                           (self.figure_out, "claim-figure"), (self.section, "claim-section"),
                           (self.downloads, "downloads")):
            part.add_class(f"wnb-{name}")
        self.rows: dict[str, dict] = {}
        legend = "".join(f"<li>{chip(v)} {html.escape(MEANINGS[v])}</li>" for v in VERDICTS)
        head = ("<p>Every claim of both papers (Sawmya et al., ICLR 2025: W1-W7; Kong et al., ICLR 2026: N1-N6) "
                "tested on this model at this budget, each with its statistic, a 95% interval, the paper's number "
                "and a verdict by a rule fixed before the data is seen:</p><ul>" + legend + "</ul><p>Beside each "
                "verdict: whether the run is <b>comparable</b> with the paper's, and which settings differ (model, "
                "corpus, window length, layers, pairs) — a verdict on a small model is not a failed replication.</p>")
        super().__init__([widgets.HTML(CSS), widgets.HTML(head),
                          widgets.HBox([self.choice, self.run_one, self.run_all, self.goto],
                                       layout=widgets.Layout(flex_flow="row wrap")),
                          self.table, self.figure_out, self.section, self.downloads], head=3)
        self.buttons = [self.run_one, self.run_all, self.goto]
        self.add_class("wnb-claims")
        self.job_button(self.run_one, "one claim", lambda job: self.compute([self.choice.value], job))
        self.job_button(self.run_all, "all claims", lambda job: self.compute(None, job))
        self.goto.on_click(self.callback(lambda _: self.show_tab()))
        self.choice.observe(self.callback(lambda change: self._show(change["new"])), names="value")
        self.follow(settings, lazy)

    def start_view(self) -> None:
        """The table with every claim already cached (nothing is computed before Run)."""
        rows = self.session.claim_rows(cached_only=True, progress=self.bars)
        self.rows = {row["id"]: row for row in rows}
        self._draw()
        self.info(f"{len(self.rows)} of {len(CLAIMS)} claims cached for {self.session.model_name} at the "
                  f"{self.session.budget_name} budget; press Run this claim or Run all claims")

    def clear(self) -> None:
        self.rows = {}
        self.pngs, self.figs = {}, {}
        self.figure_out.outputs = ()
        self.table.value = self.section.value = self.downloads.value = ""
        self.info("")

    def compute(self, only, job=None) -> None:
        cost = self.session.claims_cost(only)
        what = "this claim" if only else "every claim"
        message = (f"{what} takes roughly {rough_duration(cost.get('seconds', 0))} here; press the button again "
                   "to go ahead") if cost.get("large") else ""
        if not self.confirmed(f"claims {only}", cost, message):
            return
        with self.busy(f"testing {what} on {self.session.model_name}"
                       + ("" if cost.get("cached") else f" (about {rough_duration(cost['seconds'])})") + "…"):
            rows = self.session.claim_rows(only, progress=self.bars,
                                           on_run=None if job is None else job.begin)
        self.rows.update({row["id"]: row for row in rows})
        self._draw()
        if only:
            self._show(only[0])
        verdicts = ", ".join(f"{r['id']} {r['verdict']}" for r in rows)
        self.info(f"done: {verdicts}")

    def show_tab(self) -> None:
        """Open the tab that shows the chosen claim in detail (the app passes ``open_tab``)."""
        tab = claim(self.choice.value).tab
        if self.open_tab is None or tab == "Claims":
            self.info(f"{self.choice.value} is shown in detail in the {tab} tab of the app")
            return
        self.open_tab(tab)

    def _draw(self) -> None:
        rows = [self.rows[c.id] if c.id in self.rows else _pending(c) for c in CLAIMS]
        self.table.value = table_html(rows, links={c.id: f"{html.escape(c.id)}<div class='muted'>in detail: "
                                                   f"{html.escape(c.tab)}</div>" for c in CLAIMS})
        done = [self.rows[c.id] for c in CLAIMS if c.id in self.rows]
        if done:
            stem = f"claims_{slug(self.session.model_name)}_{self.settings_tag()}"
            self.downloads.value = " · ".join([
                csv_link(claims_frame(done), f"{stem}.csv"),
                data_link(session_page(self.session, done).encode(), f"{stem}.html", "text/html", f"⬇ {stem}.html")])
        self._show(self.choice.value)

    def _show(self, claim_id: str) -> None:
        row = self.rows.get(claim_id)
        if row is None:
            self.figure_out.outputs = ()
            entry = claim(claim_id)
            self.section.value = (f"<p><b>{html.escape(entry.id)}</b> not run yet: {html.escape(entry.claim)}<br>"
                                  f"<i>rule:</i> {html.escape(entry.rule)}</p>")
            return
        fig = claim_figure(row)
        if fig is None:
            self.figure_out.outputs = ()
        else:
            self.draw_figure(f"claim_{claim_id}", self.figure_out, fig)
        section = section_html({**row, "detail": None})
        self.section.value = section

    def file_stem(self) -> str:
        return f"claims_{self.settings_tag()}"


def _pending(entry) -> dict:
    """A table row for a claim not run yet."""
    return {"id": entry.id, "claim": entry.claim, "paper": entry.paper, "where": entry.where,
            "paper_value": entry.paper_value, "verdict": "not yet run", "comparable": False,
            "differs": [], "value": float("nan")}
