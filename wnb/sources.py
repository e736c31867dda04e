"""What the app may load: named corpora or uploaded text, Hugging Face ids or allow-listed model folders.

The app is a web server, so nothing a visitor types is ever opened as a path on it. A corpus is one of
the named corpora or a text file the visitor uploads; a model is the bundled one, a Hugging Face id
(fetched from the hub into its own cache, never looked up as a local folder) or one of the folders
offered by whoever runs the server: the models in wnb's cache and the model folders inside the folders
named by ``$WNB_MODEL_DIRS`` (separated by ``os.pathsep``). Refusals say what is allowed, in words that
do not depend on whether a typed path exists. The Python API and the ``wnb`` command still take paths:
their user owns the machine.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import WnbError

MODEL_DIRS_ENV = "WNB_MODEL_DIRS"
UPLOAD = "uploaded file"
MAX_UPLOAD_BYTES = 16 << 20
# owner/name or a bare legacy name (gpt2): letters, digits, '-', '_', '.', no '..', no leading '.' or '-'
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")
# files a model needs from the hub; code (*.py) is never fetched, trust_remote_code stays off
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.bin"]


def offered_models() -> dict[str, Path]:
    """Model folders the app offers by name: ``{name: folder}`` from ``$WNB_MODEL_DIRS`` and the cache."""
    from .cache import cache_dir

    roots = [Path(p).expanduser() for p in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if p.strip()]
    roots.append(cache_dir() / "models")
    found: dict[str, Path] = {}
    for root in roots:
        try:
            children = sorted(root.iterdir())
        except OSError:
            continue
        for child in children:
            if (child / "config.json").is_file() and child.name not in found:
                found[child.name] = child
    return found


def app_model(text: str | None) -> tuple[str | None, str | None]:
    """``(name, folder)`` for the model box's text: ``(None, None)`` for the bundled model, an offered
    folder's ``(name, folder)``, or a Hugging Face id ``(id, None)``. Anything else is refused."""
    from .models import BUNDLED

    name = (text or "").strip()
    if not name or name == BUNDLED:
        return None, None
    offered = offered_models()
    if name in offered:
        return name, str(offered[name])
    if _HUB_ID.fullmatch(name) and ".." not in name:
        return name, None
    choices = ", ".join(sorted(offered)) or "none on this server"
    raise WnbError(f"the app loads the bundled model, a Hugging Face id such as EleutherAI/pythia-160m, or a "
                   f"model folder this server offers by name ({choices}); {name[:60]!r} is none of these")


def hub_folder(name: str, revision: str | None = None) -> str:
    """Fetch a hub model's files into the Hugging Face cache and return that folder: transformers then
    loads from there, so a typed id never reaches it as a possible local path."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id=name, revision=revision, allow_patterns=HUB_FILES)
    except Exception as exc:  # offline, unknown id, gated model...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WnbError(f"could not fetch {name!r} from the Hugging Face hub ({first[:200]}); check the id and the "
                       "network connection, or pick the bundled model") from exc


def app_corpus(choice: str, upload: bytes | None = None) -> str:
    """The corpus text for the app's corpus choice: a named corpus, or the uploaded file's text."""
    from .data import CORPORA, load_corpus

    if choice in CORPORA:
        return load_corpus(choice)
    if choice == UPLOAD:
        if upload is None:
            raise WnbError("choose a .txt file to upload first")
        return decode_text(upload, "the uploaded file", MAX_UPLOAD_BYTES)
    raise WnbError(f"the app reads the named corpora ({', '.join(CORPORA)}) or a text file you upload; "
                   "it opens no file on the server")


def decode_text(raw: bytes, what: str, max_bytes: int | None = None) -> str:
    """``raw`` as UTF-8 text; refuse binary data (NUL bytes or many undecodable bytes) and, given
    ``max_bytes``, more than that."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise WnbError(f"{what} has {len(raw) / 2**20:.1f} MiB; at most {max_bytes / 2**20:.0f} MiB of text is accepted")
    if b"\x00" in raw[: 1 << 20]:
        raise WnbError(f"{what} is not text (it holds NUL bytes); give a UTF-8 text file")
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if bad > max(10, len(text) // 1000):
        raise WnbError(f"{what} is not UTF-8 text ({bad:,} undecodable bytes); give a UTF-8 text file")
    if not text.strip():
        raise WnbError(f"{what} is empty")
    return text
