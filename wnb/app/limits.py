"""What a visitor may ask of the app's server: the bounds of every number a page can send, and of a job.

A page can set any synced trait of a widget (``value``, ``min``, ``max``, ``disabled``), so the bounds
a control shows are advice only: the panels read every number through :func:`bounded`, which checks it
against the server's own table here, and every job's estimate against :func:`max_job_seconds` and
:func:`max_job_bytes` (set by whoever runs the server) before it starts.
"""
from __future__ import annotations

import numbers
import os

from wnb.core.memory import total_memory
from wnb.errors import WnbError

# name: (lowest, highest, what it is) — the widgets take their min and max from here too
BOUNDS = {
    "seed": (0, 2**31 - 1, "seed"),
    "control_seeds": (1, 10, "random-control seeds"),
    "pairs": (1, 500, "minimal pairs per construction"),
    "task_limit": (1, 2000, "items per task"),
    "ablation_fraction": (0.001, 1.0, "share of the neurons sparsified"),
    "negative_fraction": (0.001, 0.099, "share of each layer's neurons ablated"),
    "sparsity": (0.05, 0.95, "sparsity"),
    "expansion_sparsity": (0.1, 0.95, "sparsity of the experts"),
    "ablation_sparsity": (0.1, 0.99, "sparsity of the chosen neurons' weights"),
}
EXPERTS = (1, 2, 4, 8, 16)
MAX_SPARSITIES = 12  # sparsities of one sweep
MAX_JOB_SECONDS_ENV = "WNB_APP_MAX_JOB_SECONDS"
MAX_JOB_BYTES_ENV = "WNB_APP_MAX_JOB_BYTES"


def bounded(name: str, value):
    """``value`` if it lies within the server's bounds for ``name`` (a whole number where the bound is
    one); otherwise WnbError naming the allowed range."""
    low, high, what = BOUNDS[name]
    whole = isinstance(low, int) and isinstance(high, int)
    ok = not isinstance(value, bool) and isinstance(value, numbers.Integral if whole else numbers.Real)
    if ok:
        ok = value == value and low <= value <= high  # NaN fails
    if not ok:
        kind = "a whole number" if whole else "a number"
        raise WnbError(f"{what} must be {kind} from {low} to {high} on this server (got {value!r})")
    return int(value) if whole else float(value)


def experts(value) -> int:
    """A number of experts the app offers."""
    if isinstance(value, bool) or value not in EXPERTS:
        raise WnbError(f"experts must be one of {', '.join(map(str, EXPERTS))} (got {value!r})")
    return int(value)


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip().replace("_", "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise WnbError(f"{name} must be a number (got {text!r})") from None
    return value if value > 0 else default


def max_job_seconds() -> float:
    """The longest job (by its estimate) the server runs: ``$WNB_APP_MAX_JOB_SECONDS``, default 1 hour."""
    return _env_number(MAX_JOB_SECONDS_ENV, 3600.0)


def max_job_bytes() -> int:
    """The most memory a job may hold beside the model (by its estimate): ``$WNB_APP_MAX_JOB_BYTES``,
    default a quarter of this machine's memory."""

    return int(_env_number(MAX_JOB_BYTES_ENV, total_memory() / 4))


def refusal(cost: dict, what: str) -> str | None:
    """Why the server refuses a job of estimated ``cost`` (``seconds``, ``bytes``), or None if it may run."""
    seconds, size = cost.get("seconds", 0.0), cost.get("bytes", 0)
    if seconds > max_job_seconds():
        return (f"{what} would take roughly {seconds / 60:.0f} min here, more than this server runs for one job "
                f"({max_job_seconds() / 60:.0f} min); choose fewer layers, runs or items")
    if size > max_job_bytes():
        return (f"{what} would hold about {size / 2**30:.1f} GiB beside the model, more than this server allows "
                f"for one job ({max_job_bytes() / 2**30:.1f} GiB); choose fewer layers or experts")
    return None
