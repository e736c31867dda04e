"""Folders wnb writes (a command's run folder, a saved model, a saved expansion) and the one rule for
writing into one again: replace only what wnb wrote.

Every such folder holds a JSON manifest in one schema: ``"wnb"`` (the version that wrote it) and
``"written"``, the list of every file wnb wrote there, as paths relative to the folder (files only: a
folder named there would claim whatever a user later puts inside it). A folder is written into only
when it is new, empty, or (with ``overwrite``) holds nothing but its manifest and the files it lists;
anything else is named in the refusal and kept.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from wnb.errors import WnbError

MAX_MANIFEST_BYTES = 64 << 20  # a manifest larger than this is not one wnb wrote


def read_manifest(path: Path) -> dict | None:
    """The JSON object at ``path`` if wnb wrote it (a dict with a ``"wnb"`` key), else None: missing,
    unreadable, too large, nested too deeply, or someone else's."""
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deeply
        return None
    return manifest if isinstance(manifest, dict) and "wnb" in manifest else None


def all_files(folder: Path) -> list[Path]:
    """Every file and link under ``folder`` (links are listed, never followed)."""
    found = []
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
        found += [root_path / n for n in names]
        found += [root_path / d for d in dirs if (root_path / d).is_symlink()]
    return found


def written_list(folder: Path) -> list[str]:
    """The manifest's ``"written"`` value for the files now under ``folder``: relative posix paths, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in all_files(folder))


def written_files(folder: Path, manifest_name: str) -> set[Path] | None:
    """The files of ``folder`` its manifest ``manifest_name`` lists as written by wnb, the manifest
    included (None without a wnb manifest there). Names that are not strings, are absolute, climb out of
    the folder or pass through a link are ignored."""
    manifest = read_manifest(folder / manifest_name)
    if manifest is None:
        return None
    listed = manifest.get("written")
    owned = {folder / manifest_name}
    for name in listed if isinstance(listed, list) else []:
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            continue
        target = folder / name
        if _inside(target, folder) and not (target.is_dir() and not target.is_symlink()):
            owned.add(target)
    return owned


def _inside(target: Path, folder: Path) -> bool:
    """True if ``target`` lies under ``folder`` with no symbolic link on the way."""
    current = target
    while current != folder:
        if current.is_symlink() or current.parent == current:
            return False
        current = current.parent
    return True


def check_replaceable(folder, overwrite: bool, manifests: tuple[str, ...], hint: str = "choose another folder") -> Path:
    """``folder`` as a Path if wnb may write into it: new, empty, or (with ``overwrite``) holding only an
    earlier wnb write (one of ``manifests`` and the files it lists). Refuses a link, a file, a place it
    cannot write, and a folder holding anything else, naming up to five of those files; ``hint`` says what
    to do instead (e.g. "choose another --output")."""
    if not isinstance(folder, (str, Path)) or not str(folder):
        raise WnbError(f"the folder must be a path (got {folder!r})")
    path = Path(folder).expanduser()
    if path.is_symlink():
        raise WnbError(f"{path} is a symbolic link; give the folder itself ({hint})")
    if path.exists() and not path.is_dir():
        raise WnbError(f"{path} exists and is not a folder; {hint}")
    parent = next((p for p in [path, *path.absolute().parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise WnbError(f"cannot write {path}: {parent} is not a folder you can write; {hint}")
    if not path.exists() or not any(path.iterdir()):
        return path
    if not overwrite:
        raise WnbError(f"{path} already exists and is not empty; replace an earlier wnb write there with "
                       f"overwrite (--overwrite), or {hint}")
    owned = next((o for o in (written_files(path, m) for m in manifests) if o is not None), None)
    if owned is None:
        raise WnbError(f"refusing to replace {path}: it holds no wnb manifest ({' or '.join(manifests)}), so wnb "
                       f"did not write it; {hint}")
    others = sorted(str(p.relative_to(path)) for p in all_files(path) if p not in owned)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise WnbError(f"refusing to replace {path}: it holds files wnb did not write ({shown}); move them, or "
                       f"{hint}")
    return path


def remove_written(folder: Path, manifests: tuple[str, ...]) -> None:
    """Delete the files an earlier wnb write lists (:func:`check_replaceable` refused anything else), then
    the folders left empty."""
    for manifest in manifests:
        for file in written_files(folder, manifest) or ():
            file.unlink(missing_ok=True)
    for root, dirs, _ in os.walk(folder, topdown=False):
        for d in dirs:
            sub = Path(root) / d
            if not sub.is_symlink():
                with contextlib.suppress(OSError):
                    sub.rmdir()
