"""Long work that can be cancelled and says how far it is: a :class:`Job` counts its runs, estimates the
time left, and stops at the model's next block when cancelled.

    job = Job("sweep", runs=7)
    with job.watching(block_modules(lm)):  # every transformer block checks for a cancel before it runs
        wnb.sweep(lm, calib, held_out, on_run=job.begin)
    job.cancel()                           # from another thread: the next block raises Cancelled

A cancelled run raises :class:`Cancelled` inside the model's forward pass, so what wnb was doing unwinds
as after any error: ``pruned`` and ``expanded`` put the dense weights back, the cache stores nothing.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

from wnb.errors import WnbError

_lock = threading.Lock()
_active: "Job | None" = None


class Cancelled(Exception):
    """The user cancelled the job (not a WnbError: nothing may catch it as bad input)."""


class Job:
    """One job: ``runs`` steps (e.g. the runs of a sweep), cancellable from another thread."""

    def __init__(self, label: str, runs: int = 1, on_change: Callable[["Job"], None] | None = None):
        self.label = label
        self.runs = max(1, int(runs))
        self.index = 0          # the run in progress, 0-based
        self.current = label    # what that run is
        self.started = time.monotonic()
        self.run_started = self.started
        self.on_change = on_change
        self._cancel = threading.Event()
        self._last_tick = 0.0
        self.thread: threading.Thread | None = None  # where the job's work runs (set when it starts)
        self.button = None  # the widget that started it (its Cancel button in the app)

    # -- progress

    def begin(self, index: int, total: int, label: str) -> None:
        """Run ``index`` (0-based) of ``total`` starts: the ``on_run`` callback of sweeps and studies."""
        self.check()
        self.index, self.runs, self.current = int(index), max(1, int(total)), label
        self.run_started = time.monotonic()
        self._changed()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float | None:
        """Seconds left, from the mean time of the runs done so far (None before the first one ends)."""
        if self.index == 0:
            return None
        return (self.run_started - self.started) / self.index * (self.runs - self.index) - \
            (time.monotonic() - self.run_started)

    def fraction(self) -> float:
        return self.index / self.runs

    def text(self) -> str:
        left = self.remaining()
        estimate = f"about {clock(max(left, 0))} left" if left is not None else "estimating the time left…"
        return f"run {self.index + 1} of {self.runs}: {self.current} · {clock(self.elapsed())} elapsed · {estimate}"

    # -- cancelling

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the job was cancelled; else, at most once a second, report progress."""
        if self._cancel.is_set():
            raise Cancelled(f"{self.label} cancelled")
        now = time.monotonic()
        if now - self._last_tick >= 1.0:
            self._last_tick = now
            self._changed()

    @contextlib.contextmanager
    def watching(self, modules) -> Iterator["Job"]:
        """Check for a cancel before each of ``modules`` runs (a model's transformer blocks:
        :func:`wnb.model.architectures.block_modules`), for the duration of the block."""
        hooks = [m.register_forward_pre_hook(lambda *_: self.check()) for m in modules]
        try:
            yield self
        finally:
            for hook in hooks:
                hook.remove()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)


@contextlib.contextmanager
def exclusive(job: Job) -> Iterator[Job]:
    """Hold the one job slot of this process (the model is not safe to share between two jobs)."""
    global _active
    with _lock:
        if _active is not None:
            raise WnbError(f"another job is running ({_active.label}); wait for it or press its Cancel button")
        _active = job
    try:
        yield job
    finally:
        with _lock:
            _active = None


def active() -> Job | None:
    return _active


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
