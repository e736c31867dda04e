"""A command's output folder: ``manifest.json`` says what is in it and whether the run finished.

The manifest is written first with ``"status": "incomplete"`` and replaced by a complete one only when
everything else is written, so an interrupted run is never mistaken for a finished one. Every file the
run writes is listed (``"written"``), so ``--overwrite`` replaces only those (:mod:`wnb.core.folders`).
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pandas as pd
import torch

from wnb.core import files
from wnb.core.folders import check_replaceable, remove_written, written_list
from wnb.core.spreadsheet import safe_csv
from wnb.core.version import VERSION as __version__
from wnb.errors import WnbError
from wnb.plots import to_png

MANIFEST = "manifest.json"


class RunFolder:
    """An output folder whose ``manifest.json`` says what is in it and whether the run finished."""

    def __init__(self, path: Path, command: str, argv: list[str]):
        self.path = path
        self.manifest = {"wnb": __version__, "command": command, "status": "incomplete", "argv": argv,
                         "started": now(), "finished": None, "files": {}, "cache": [], "error": None,
                         "written": []}

    @staticmethod
    def check(path: Path, overwrite: bool) -> None:
        """Refuse an output that is a link, a file, not writable, or an existing folder (unless ``overwrite``);
        with ``overwrite``, refuse a folder holding anything its wnb manifest does not list as written by wnb
        (:func:`wnb.core.folders.check_replaceable`)."""
        if path.is_dir() and not path.is_symlink():
            files.remove_stale_temporaries(path)
        check_replaceable(path, overwrite, (MANIFEST,), hint="choose another --output")

    def start(self, arguments: dict) -> None:
        """Remove the previous run's files (only those its manifest lists; :meth:`check` refused anything
        else) and write the new manifest."""
        try:
            if self.path.is_dir():
                remove_written(self.path, (MANIFEST,))
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest["arguments"] = arguments
            self._save()
        except OSError as exc:
            raise WnbError(f"cannot write the output folder {self.path}: {exc.strerror}") from exc

    def note(self, **items) -> None:
        self.manifest.update(items)
        self._save()

    def table(self, name: str, frame: pd.DataFrame, what: str) -> None:
        """``frame`` as CSV, text cells that a spreadsheet would run as a formula defused (:func:`safe_csv`)."""

        self._write(name, what, lambda tmp: tmp.write_bytes(safe_csv(frame).encode("utf-8")))

    def json(self, name: str, data, what: str) -> None:
        self._write(name, what, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=jsonable)))

    def text(self, name: str, content: str, what: str) -> None:
        self._write(name, what, lambda tmp: tmp.write_text(content))

    def figure(self, name: str, fig, what: str) -> None:

        self._write(name, what, lambda tmp: tmp.write_bytes(to_png(fig)))

    def copy_cache(self, paths: list[Path]) -> None:
        """Copy the cache entries this run read or wrote into ``<output>/cache/<kind>/``."""
        for src in paths:
            if src.exists():
                dst = self.path / "cache" / src.parent.name / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                self.manifest["cache"].append(f"{src.parent.name}/{src.name}")
                self.manifest["written"].append(f"cache/{src.parent.name}/{src.name}")
        self._save()

    def finish(self, summary: str, **items) -> None:
        self.manifest.update(items, status="complete", finished=now(), summary=summary)
        self._save()

    def fail(self, error: str) -> None:
        if self.path.is_dir():
            self.manifest.update(error=error, stopped=now())
            self._save()

    def folder(self, name: str, what: str, write) -> None:
        """Write the folder ``name`` atomically with ``write(tmp)`` and list every file in it in the manifest,
        one by one: a folder entry would claim whatever a user later puts inside it."""
        with files.atomic_path(self.path / name) as tmp:
            write(tmp)
        for file in written_list(self.path / name):
            self.manifest["files"][f"{name}/{file}"] = what
            self.manifest["written"].append(f"{name}/{file}")
        self._save()

    def _write(self, name: str, what: str, write) -> None:
        with files.atomic_path(self.path / name) as tmp:
            write(tmp)
        self.manifest["files"][name] = what
        self.manifest["written"].append(name)
        self._save()

    def _save(self) -> None:
        with files.atomic_path(self.path / MANIFEST) as tmp:
            tmp.write_text(json.dumps(self.manifest, indent=2, default=jsonable))


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def jsonable(value):
    if isinstance(value, (torch.Tensor,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)
