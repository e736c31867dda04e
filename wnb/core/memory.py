"""Memory at hand: what this machine has and has free now, for refusing work that cannot fit before it
starts, and cutting work into groups that fit."""
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


def group_by_bytes(items, size, limit: int) -> list[list]:
    """``items`` in order, cut into consecutive groups whose ``size(item)`` bytes add up to at most ``limit``
    (at least one item each: an item larger than ``limit`` is a group of its own, for its user to refuse):
    as few passes as memory allows when many layers are read."""
    groups: list[list] = [[]]
    held = 0
    for item in items:
        need = size(item)
        if groups[-1] and held + need > limit:
            groups.append([])
            held = 0
        groups[-1].append(item)
        held += need
    return groups
