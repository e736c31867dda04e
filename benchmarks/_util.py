"""Small helpers shared by the benchmark scripts: timing, peak memory in a child process, tables."""
from __future__ import annotations

import platform
import subprocess
import sys
import time

import torch


def timed(fn, repeat: int = 3):
    """Best wall time of ``repeat`` calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_mib(code: str) -> float:
    """Peak resident memory (MiB) of a fresh Python process running ``code``."""
    # VmHWM, not ru_maxrss: the latter keeps the parent's high-water mark across fork + exec.
    wrapped = code + ("\nprint([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def table(rows: list[dict]) -> str:
    """A Markdown table of dict rows (every key of any row is a column, in order of appearance)."""
    cols = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
