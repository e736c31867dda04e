"""Who holds the model: one lock per loaded model, and what is applied to it right now.

Every model pass (a capture, a perplexity pass, a calibration walk) and every in-place change (pruning,
Sparse Expansion, sign-ablation hooks, a loaded expansion) takes the model's lock, a re-entrant lock:
a job that holds the model may run passes of its own, a second thread waits (or, inside
:func:`refusing`, is answered "busy" at once). In-place changes are recorded while they last, so a
result that assumes the dense model can tell whether it is (:func:`is_dense`) and is cached only then
(:func:`dense_only`).

    with holding(lm, "perplexity"):         # a pass
        ...
    with changed(lm, "pruned: sparsegpt 50%"):   # an in-place change, recorded while it lasts
        ...
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

from wnb.core.cache import Uncached
from wnb.errors import WnbError

_local = threading.local()


class ModelBusy(WnbError):
    """The model is held by another thread (a job) and this thread asked not to wait."""


def _state(lm):
    """The lock, the holder's label and the list of changes of ``lm`` (made on first use)."""
    state = getattr(lm, "_state", None)
    if state is None:
        state = {"lock": threading.RLock(), "holder": None, "owner": None, "depth": 0, "changes": []}
        try:
            lm._state = state
        except AttributeError:  # an object that takes no attributes: a lock of its own each time
            pass
    return state


@contextlib.contextmanager
def refusing() -> Iterator[None]:
    """Inside the block, this thread never waits for the model: a model held by another thread raises
    :class:`ModelBusy` (the app's page thread must never freeze behind a job)."""
    before = getattr(_local, "refuse", False)
    _local.refuse = True
    try:
        yield
    finally:
        _local.refuse = before


@contextlib.contextmanager
def holding(lm, what: str = "a model pass") -> Iterator[None]:
    """Hold ``lm``'s lock for the block (re-entrant); ``what`` names the holder in "busy" messages."""
    state = _state(lm)
    lock = state["lock"]
    if not lock.acquire(blocking=not getattr(_local, "refuse", False)):
        raise ModelBusy(f"the model is busy ({state['holder'] or 'another job'}); wait for it to finish or "
                        "press its Cancel button")
    outer = state["depth"] == 0
    if outer:
        state["holder"], state["owner"] = what, threading.get_ident()
    state["depth"] += 1
    try:
        yield
    finally:
        state["depth"] -= 1
        if outer:
            state["holder"] = state["owner"] = None
        lock.release()


@contextlib.contextmanager
def changed(lm, what: str) -> Iterator[None]:
    """Hold the model and record ``what`` as applied to it for the block (pruned weights, routed layers,
    hooks): :func:`is_dense` is False until the block ends."""
    with holding(lm, what):
        changes = _state(lm)["changes"]
        changes.append(what)
        try:
            yield
        finally:
            changes.pop()  # changes nest: only the holder's thread adds them


def is_dense(lm) -> bool:
    """Whether nothing is applied to ``lm`` in place right now."""
    return not _state(lm)["changes"]


def changes(lm) -> list[str]:
    """What is applied to ``lm`` now, outermost first."""
    return list(_state(lm)["changes"])


def held_elsewhere(lm) -> str | None:
    """The holder's label when another thread holds ``lm``, else None."""
    state = _state(lm)
    owner = state["owner"]
    return state["holder"] if owner is not None and owner != threading.get_ident() else None


def dense_only(get_lm: Callable[[], object], compute: Callable[[], object]) -> Callable[[], object]:
    """``compute`` run while holding the model, its value marked :class:`wnb.core.cache.Uncached` unless the
    model was dense before and after: for :func:`wnb.core.cache.cached` results that assume the dense model.
    ``get_lm`` is called only when the value is computed (a warm cache never loads the model)."""

    def run():
        lm = get_lm()
        with holding(lm, "computing a result of the dense model"):
            dense = is_dense(lm)
            value = compute()
            dense = dense and is_dense(lm)
        return value if dense else Uncached(value)

    return run
