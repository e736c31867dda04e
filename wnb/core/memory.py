"""Memory at hand: what this machine has and has free now, for refusing work that cannot fit before it
starts."""
from __future__ import annotations

import os


def available_memory() -> int:
    """Bytes of RAM available now (MemAvailable), or a conservative 4 GiB where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def total_memory() -> int:
    """Bytes of RAM of this machine (8 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
