"""Argument checks shared by the public functions: each raises :class:`wnb.WnbError` naming what is allowed."""
from __future__ import annotations

import numbers

from wnb.errors import WnbError


def check_int(value, name: str, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` (numpy integers are integers; bools, floats and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise WnbError(f"{name} must be a whole number{_range(minimum, maximum)} (got {value!r})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise WnbError(f"{name} must be a whole number{_range(minimum, maximum)} (got {value})")
    return value


def check_float(value, name: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite ``float`` within the bounds (strings and bools refused)."""
    bounds = (("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")) \
        if low is not None and high is not None else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise WnbError(f"{name} must be a number{' in ' + bounds if bounds else ''} (got {value!r})")
    value = float(value)
    bad = value != value or value in (float("inf"), float("-inf"))
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        raise WnbError(f"{name} must be a finite number{' in ' + bounds if bounds else ''} (got {value})")
    return value


def _range(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" of at least {minimum}"
    if maximum is not None:
        return f" of at most {maximum}"
    return ""
