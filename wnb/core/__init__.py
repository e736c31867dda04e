"""Leaves every other package builds on: the on-disk cache (keys, entries, size limit, atomic files),
argument checks, statistics of distributions, memory at hand, long jobs (progress and cancel), the one
"replace only what wnb wrote" folder guard, and spreadsheet-safe tables.

May import: wnb.errors only."""
