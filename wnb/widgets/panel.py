"""The shared base of every panel: status line, progress area, guarded callbacks, downloads."""
from __future__ import annotations

import contextlib
import html
import os
import sys
import threading
import traceback
from typing import Callable

import ipywidgets as widgets
from transformers.utils import logging as hf_logging

from wnb import plots
from wnb.app import limits
from wnb.app.views import LayerView
from wnb.core import jobs
from wnb.errors import WnbError
from wnb.model import state
from wnb.model.architectures import block_modules
from wnb.widgets.links import png_link, show_figure
from wnb.widgets.messages import error_text

# The panels say what they are doing in their status line; transformers' own loading and conversion bars
# (some drawn from worker threads, outside the panel's progress area) would stay on the page for good.
hf_logging.disable_progress_bar()

# With WNB_STRICT=1 (the notebook tests) a panel still shows the message, then re-raises, so that a
# failing panel fails the run instead of passing quietly.
STRICT_ENV = "WNB_STRICT"
CSS = """
<style>
.wnb-table select { font-family: monospace; font-size: 12px; }
.wnb-head { font-family: monospace; font-size: 12px; white-space: pre; }
.wnb-error { color: #8a1020; background: #fdecee; border: 1px solid #f2b8c0; padding: 4px 8px; border-radius: 4px; }
.wnb-warn { color: #5c4300; background: #fff5d6; border: 1px solid #efd48a; padding: 4px 8px; border-radius: 4px; }
.wnb-info { color: #333; }
.wnb-downloads, .wnb-print-links { word-break: break-all; }
</style>
"""


class Panel(widgets.VBox):
    """A VBox with a status line, a progress area, and guarded callbacks.

    Long work started by a button runs as a job (:meth:`job_button`): the button turns into Cancel, a
    bar counts the job's runs with the time elapsed and left. With ``threaded`` (the app) the job runs
    in a worker thread so that the page stays responsive and Cancel can be pressed; in notebooks and
    tests it runs in the callback itself.
    """

    threaded = False

    @property
    def bars(self) -> bool:
        """Whether wnb's own progress bars are drawn: not in a worker thread (the job's bar counts instead)."""
        return not self.threaded

    def __init__(self, children=(), head: int = 1, printable: bool = True, **kwargs):
        """``children`` with the progress area and the status line after the first ``head`` of them
        (right under the controls, where the user is looking); ``printable`` adds the print-quality
        download row at the end."""
        self.status = widgets.HTML()
        self.status.add_class("wnb-status")
        self.progress = widgets.Output()
        self.buttons: list[widgets.Button] = []
        self.last_error: str | None = None
        self._pending: str | None = None  # a large job waiting for the user's confirmation (see confirmed)
        self.pngs: dict[str, bytes] = {}  # the figures on screen, as PNG (what the download links hold)
        self.figs: dict = {}  # and as figures, for the print-quality downloads
        self.print_button = widgets.Button(description="Print-quality PNGs (300 dpi)", icon="print",
                                           layout=widgets.Layout(width="auto"))
        self.print_links = widgets.HTML()
        self.print_links.add_class("wnb-print-links")
        self.print_row = widgets.HBox([self.print_button, self.print_links])
        self.print_button.on_click(self.callback(lambda _: self.print_quality()))
        self.job_bar = widgets.FloatProgress(value=0, min=0, max=1, layout=widgets.Layout(width="240px"))
        self.job_text = widgets.HTML()
        self.job_row = widgets.HBox([self.job_bar, self.job_text], layout=widgets.Layout(display="none"))
        self.job_row.add_class("wnb-job")
        self.job: jobs.Job | None = None
        self._worker: threading.Thread | None = None
        self._syncing = False
        self._reverting = False
        children = list(children) + ([self.print_row] if printable else [])
        super().__init__(children=children[:head] + [self.job_row, self.progress, self.status] + children[head:],
                         **kwargs)

    @contextlib.contextmanager
    def _quiet(self):
        """Set widget values without triggering our own observers."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def _need_view(self) -> LayerView:
        """The panel's analysed layer, or a readable error when none is yet."""
        if getattr(self, "view", None) is None:
            raise WnbError(self._missing_view)
        return self.view

    def confirmed(self, what: str, cost: dict, message: str) -> bool:
        """Whether a job may start: yes unless its ``cost`` (from the session) is ``large``; then only
        on the second request for the same ``what``, after ``message`` (the estimate) was shown. Above the
        server's limits (:mod:`wnb.app.limits`) it is refused outright."""
        pending, self._pending = self._pending, None
        refused = limits.refusal(cost, "this job")
        if refused:  # above the server's limit: refused however often it is asked for
            raise WnbError(refused)
        if not cost.get("large") or pending == what:
            return True
        self._pending = what
        self.warn(message)
        return False

    def info(self, text: str) -> None:
        self.status.value = f'<span class="wnb-info">{html.escape(text)}</span>'

    def warn(self, text: str) -> None:
        """A question or a caution in the status line (not an error: nothing failed)."""
        self.status.value = f'<div class="wnb-warn">⏱ {html.escape(text)}</div>'

    def error(self, text: str) -> None:
        self.last_error = text
        self.status.value = f'<div class="wnb-error">⚠ {html.escape(text)}</div>'

    @contextlib.contextmanager
    def busy(self, message: str):
        """Disable the buttons, show ``message`` and route progress bars into the panel while working.
        In a job's worker thread the job's own bar shows the progress and its Cancel button stays on."""
        threaded = threading.current_thread() is not threading.main_thread()
        buttons = [b for b in self.buttons if not (self.job is not None and b.description == "Cancel")]
        states = [b.disabled for b in buttons]
        for b in buttons:
            b.disabled = True
        self.info(message)
        failure = None
        try:
            with contextlib.nullcontext() if threaded else self.progress:
                # An exception leaving an Output context is printed into it as a traceback (and
                # swallowed) by IPython; catch it here and re-raise outside for guarded() to report.
                try:
                    yield
                except Exception as exc:
                    failure = exc
            if failure is not None:
                raise failure
        finally:
            if not threaded:
                self._fresh_progress()
            for b, state in zip(buttons, states):
                b.disabled = state

    def _fresh_progress(self) -> None:
        """Swap in an empty progress area. Clearing the old one is not enough: the page appends each
        captured bar to it and sends that state back, which may arrive after the clear and bring back a
        bar tqdm has closed meanwhile ("Error displaying widget: model not found" for good)."""
        old = self.progress
        self.progress = widgets.Output()
        self.children = tuple(self.progress if child is old else child for child in self.children)
        old.close()

    def guarded(self, fn: Callable, *args, **kwargs):
        """Run ``fn``; on any error show one readable line in the panel instead of a traceback.

        While a job runs in another thread, nothing runs here: a control's new value is put back (the
        page may send any value, also to a disabled control) and the panel says why. Outside a job's own
        thread the model is never waited for (:func:`wnb.model.state.refusing`): a pass it would need while
        another thread holds the model is refused as busy instead of freezing the page."""
        if self._reverting:
            return None
        running = jobs.active()
        if running is not None and running.thread is not threading.current_thread():
            self._put_back(args)
            self.error(f"not now: {running.label} is running; wait for it to finish or press its Cancel "
                       "button (nothing was changed)")
            return None
        try:
            with state.refusing() if running is None else contextlib.nullcontext():
                result = fn(*args, **kwargs)
        except jobs.Cancelled:
            raise
        except Exception as exc:  # the page must never show a traceback
            traceback.print_exc(file=sys.__stderr__)
            self.error(error_text(exc))
            if os.environ.get(STRICT_ENV, "") not in ("", "0"):
                raise
            return None
        self.last_error = None
        return result

    def _put_back(self, args) -> None:
        """Undo the trait change a refused observer was called with (``{"owner", "name", "old"}``)."""
        change = args[0] if args else None
        if isinstance(change, dict) and {"owner", "name", "old"} <= set(change) and change.get("type", "change") == "change":
            self._reverting = True
            try:
                setattr(change["owner"], change["name"], change["old"])
            except Exception:  # a value the widget no longer takes (e.g. options changed): leave it
                pass
            finally:
                self._reverting = False

    def draw_figure(self, kind: str, out: widgets.Output, fig) -> None:
        """Show ``fig`` in ``out`` and keep it (as PNG and as a figure) for the downloads."""
        self.pngs[kind] = show_figure(out, fig)
        self.figs[kind] = fig
        self.print_links.value = ""

    def file_stem(self) -> str:
        """What the download names say about the results (layer, neuron, method...); views refine it."""
        return "wnb"

    def settings_tag(self) -> str:
        """The budget and seed of the current session, for download names."""
        session = getattr(getattr(self, "settings", None), "session", None)
        return f"{session.budget_name}_seed{session.seed}" if session is not None else "wnb"

    def print_quality(self, dpi: int = 300) -> None:
        """Download links of every figure on screen rendered again at ``dpi``."""
        if not self.figs:
            raise WnbError("no figure on screen yet")
        self.print_links.value = " · ".join(
            png_link(plots.to_png(fig, dpi=dpi), f"{kind}_{self.file_stem()}_{dpi}dpi.png")
            for kind, fig in self.figs.items())

    # -- jobs

    def job_button(self, button: widgets.Button, label: str, work: Callable[[jobs.Job], None]) -> None:
        """Make ``button`` start ``work(job)`` as a job, and cancel it while it runs."""
        def clicked(_):
            running = jobs.active()
            if running is not None:
                if running.button is button:  # the job's own button is its Cancel
                    running.cancel()
                    button.description = "Cancelling…"
                elif running.thread is not threading.current_thread():
                    self.error(f"not now: {running.label} is running; wait for it to finish or press its "
                               "Cancel button")
                return
            if button.disabled:  # the page can send a click on a disabled button: it does nothing
                return
            try:
                self.run_job(button, label, work)
            except WnbError as exc:  # another job holds the one job slot
                self.error(error_text(exc))

        button.on_click(clicked)

    def run_job(self, button: widgets.Button, label: str, work: Callable[[jobs.Job], None]) -> None:
        """Start ``work`` as a job (in a worker thread when ``threaded``); :meth:`wait` joins it."""
        job = jobs.Job(label, on_change=self._show_job)
        job.button = button
        with jobs.exclusive(job):  # refuses while another job runs; released by _job_body
            pass
        self.job = job
        if self.threaded:
            self._worker = threading.Thread(target=self._job_body, args=(job, button, work), daemon=True)
            self._worker.start()
        else:
            self._job_body(job, button, work)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running job's worker thread (tests and scripts)."""
        if self._worker is not None:
            self._worker.join(timeout)

    def _job_body(self, job: jobs.Job, button: widgets.Button, work) -> None:
        look = (button.description, button.icon, button.button_style)
        others = [(b, b.disabled) for b in self.buttons if b is not button]
        button.description, button.icon, button.button_style = "Cancel", "stop", "danger"
        for b, _ in others:
            b.disabled = True
        self.job_row.layout.display = ""
        self._show_job(job)
        self.info(f"{job.label}…")
        job.thread = threading.current_thread()
        try:
            with jobs.exclusive(job), self._holding_model(job) as lm, job.watching(block_modules(lm)):
                self.guarded(work, job)
                job.check()  # Cancel pressed while the work did no model pass (e.g. its estimate)
        except jobs.Cancelled:
            self.info(f"cancelled: {job.label} stopped after {jobs.clock(job.elapsed())}; the model is dense "
                      "again and nothing of it was cached")
        except WnbError as exc:  # another job holds the slot
            self.error(error_text(exc))
        finally:
            self.job = None
            button.description, button.icon, button.button_style = look
            for b, state in others:
                b.disabled = state
            self.job_row.layout.display = "none"

    @contextlib.contextmanager
    def _holding_model(self, job: jobs.Job):
        """Hold the session's model for the whole job (wnb.model.state): no other thread runs a pass or changes
        it meanwhile. Yields the model (None for a panel without a session, or one that only loads it)."""
        session = getattr(self, "session", None)
        lm = session.lm if session is not None and not getattr(self, "loads_model", False) else None
        with state.holding(lm, job.label) if lm is not None else contextlib.nullcontext():
            yield lm

    def _show_job(self, job: jobs.Job) -> None:
        self.job_bar.value = job.fraction()
        self.job_text.value = html.escape(job.text())

    def callback(self, fn: Callable) -> Callable:
        """Wrap ``fn`` as a widget callback (``on_click`` / ``observe``) that never raises."""
        return lambda *args: self.guarded(fn, *args)


class SessionPanel(Panel):
    """A tab that draws what the session of its ``settings`` returns. :attr:`session` is always the current one,
    :meth:`start` runs the view's first fill (:meth:`start_view`), and :meth:`follow` makes new settings clear the
    tab (``lazy``: filled again on its next start) or fill it again at once."""

    settings: object  # wnb.widgets.settings.Settings

    @property
    def session(self):
        return self.settings.session

    def follow(self, settings, lazy: bool = True) -> None:
        settings.on_change(lambda _: self.guarded(self.clear if lazy else self.start_view))

    def start(self) -> None:
        self.guarded(self.start_view)

    def start_view(self) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError
