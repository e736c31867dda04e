"""wnb's version, from the installed package's metadata (so it is written in one place: pyproject.toml)."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("wnb")
except PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0+unknown"
