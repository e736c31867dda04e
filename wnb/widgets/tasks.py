"""Downstream tasks in the Sparse Expansion tab: lm-eval scores of the dense, SparseGPT and expanded models."""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import ipywidgets as widgets

from wnb import plots
from wnb.app.limits import BOUNDS, bounded
from wnb.errors import WnbError
from wnb.experiments.tasks import AGREEMENT_TASK, INSTALL_EVAL
from wnb.widgets.links import csv_link, png_link, slug
from wnb.widgets.messages import cost_message
from wnb.widgets.sparsity import bits_of

if TYPE_CHECKING:
    from wnb.widgets.expansion import ExpansionView

# Offered by name only (the app opens no typed path); all but the first download their data from the hub.
TASK_CHOICES = [("agreement minimal pairs (wnb, offline)", AGREEMENT_TASK), ("ARC-Easy", "arc_easy"),
                ("PIQA", "piqa"), ("HellaSwag", "hellaswag"), ("LAMBADA (OpenAI)", "lambada_openai"),
                ("WinoGrande", "winogrande")]


class TasksSection(widgets.VBox):
    """Choose lm-eval tasks and score the dense model, SparseGPT and Sparse Expansion with the tab's
    experts, sparsity, weights and layers; a bar chart, the table and its CSV."""

    def __init__(self, view: ExpansionView):
        self.view = view
        self.available = importlib.util.find_spec("lm_eval") is not None
        self.tasks = widgets.SelectMultiple(options=TASK_CHOICES, value=(AGREEMENT_TASK,), rows=4,
                                            description="tasks", layout=widgets.Layout(width="420px"))
        self.limit = widgets.BoundedIntText(value=100, min=BOUNDS["task_limit"][0], max=BOUNDS["task_limit"][1],
                                            description="items each",
                                            layout=widgets.Layout(width="180px"))
        self.run = widgets.Button(description="Score tasks", icon="play", button_style="primary")
        self.plot_out = widgets.Output()
        self.plot_out.add_class("wnb-task-plot")
        self.table_html = widgets.HTML()
        self.links = widgets.HTML()
        self.table = None
        intro = ("<h4>Downstream tasks (lm-evaluation-harness): dense, SparseGPT and Sparse Expansion</h4>"
                 "<p>Each model as it is in memory, with the experts, sparsity, weights and layers chosen above. "
                 "The agreement task is wnb's minimal pairs as two-choice items (acc = minimal-pair accuracy) and "
                 "needs no network; the others download their data from the Hugging Face hub.</p>")
        if not self.available:
            super().__init__([widgets.HTML(intro + f"<p>lm-eval is not installed here: {INSTALL_EVAL}.</p>")])
            return
        super().__init__([widgets.HTML(intro), widgets.HBox([self.tasks, self.limit, self.run]), self.plot_out,
                          self.table_html, self.links])
        self.add_class("wnb-tasks")
        view.buttons.append(self.run)
        view.job_button(self.run, "downstream tasks", lambda job: self.compute(job))

    def clear(self) -> None:
        """Forget the scores (new settings)."""
        self.table = None
        self.plot_out.outputs = ()
        self.table_html.value = self.links.value = ""

    def compute(self, job=None) -> None:
        view = self.view
        session = view.session
        if not self.tasks.value:
            raise WnbError("pick at least one task")
        offered = {value for _, value in TASK_CHOICES}
        tasks = [t for t in self.tasks.value if t in offered]  # names from the server's list only
        layers = session.scope_layers(view.scope.value, view.layer.value)
        k, sparsity, limit = view.k_value, view.sparsity_value, bounded("task_limit", self.limit.value)
        cost = session.task_cost(tasks, layers, k, sparsity, bits_of(view.bits), limit)
        if not view.confirmed(f"tasks {tasks} {layers} {k} {sparsity} {limit}", cost,
                              cost_message(cost, "scoring these tasks", "Score tasks")):
            return
        with view.busy(f"scoring {len(tasks)} task(s) on the dense, SparseGPT and expanded models…"):
            self.table = session.task_scores(tasks, layers, k, sparsity, bits=bits_of(view.bits), limit=limit,
                                             progress=view.bars, on_run=job.begin if job else None)
        title = f"{len(layers)} layer(s), k = {view.k.value}, {view.sparsity.value:.0%}"
        view.draw_figure("tasks", self.plot_out, plots.task_bars(self.table, title=title))
        self.table_html.value = self.table.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0)
        name = f"tasks_{slug('-'.join(self.tasks.value))}_{view.file_stem()}"
        self.links.value = csv_link(self.table, f"{name}.csv") + " · " + png_link(view.pngs["tasks"], f"{name}.png")
        view.info(f"tasks scored: {', '.join(self.tasks.value)} on {title}")
