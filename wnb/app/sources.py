"""What the app may load: named corpora or uploaded text, Hugging Face ids or allow-listed model folders.

The app is a web server, so nothing a visitor types is ever opened as a path on it. A corpus is one of
the named corpora or a text file the visitor uploads; a model is the bundled one, a Hugging Face id
(one of ``$WNB_APP_MODELS`` when the operator set it; fetched by :func:`fetch_hub_model` within the
server's limits, never looked up as a local folder) or one of the folders offered by whoever runs the
server: the model copies wnb wrote into its cache and the model folders inside the folders named by
``$WNB_MODEL_DIRS`` (separated by ``os.pathsep``). Refusals say what is allowed, in words that do not
depend on whether a typed path exists and name no server path. The Python API and the ``wnb`` command
still take paths: their user owns the machine.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from wnb.core.cache import cache_dir
from wnb.core.memory import available_memory, total_memory
from wnb.data.corpora import CORPORA, decode_text, load_corpus
from wnb.errors import WnbError
from wnb.model.bundled import BUNDLED, verified_copy
from wnb.model.loading import count_params

MODEL_DIRS_ENV = "WNB_MODEL_DIRS"
MODELS_ENV = "WNB_APP_MODELS"          # hub ids the app may load (comma-separated); unset: any id within the limits
MAX_PARAMS_ENV = "WNB_APP_MAX_PARAMS"  # the largest model (parameters) the app loads
TOKEN_ENV = "WNB_APP_HF_TOKEN"         # "1": downloads use the server's Hugging Face token (default: anonymous)
UPLOAD = "uploaded file"
# Below the 10 MiB Voila (tornado) takes in one websocket message: a larger file would drop the connection.
MAX_UPLOAD_BYTES = 8 << 20
# owner/name or a bare legacy name (gpt2): letters, digits, '-', '_', '.', no '..', no leading '.' or '-'
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")
# What the app fetches of a hub repository: these top-level files and top-level *.safetensors. Never
# code (*.py: trust_remote_code stays off), never pickled weights (*.bin), never a subfolder.
HUB_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
             "model.safetensors.index.json")
MAX_SMALL_FILE_BYTES = 64 << 20  # any one of HUB_FILES
MAX_LAYERS = 1000                # a config claiming more is refused before the model is built
BYTES_PER_PARAM = 4              # the app loads on the CPU in float32



def max_params() -> int:
    """The largest model the app loads: ``$WNB_APP_MAX_PARAMS``, else what 40% of this machine's memory
    holds in float32 (a 24 GiB machine: about 2.6 billion parameters)."""
    text = os.environ.get(MAX_PARAMS_ENV, "").strip().replace("_", "")
    if text:
        try:
            value = int(float(text))
        except ValueError:
            raise WnbError(f"{MAX_PARAMS_ENV} must be a number of parameters such as 2e9 (got {text!r})") from None
        if value > 0:
            return value
    return int(0.4 * total_memory()) // BYTES_PER_PARAM


def allowed_hub_ids() -> list[str] | None:
    """The hub ids of ``$WNB_APP_MODELS`` (None: every id within the size limit)."""
    text = os.environ.get(MODELS_ENV, "")
    ids = [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]
    return ids or None


def _token() -> bool | None:
    """The app downloads anonymously (``token=False``) unless the operator opts in with ``$WNB_APP_HF_TOKEN=1``."""
    return None if os.environ.get(TOKEN_ENV, "").strip() in ("1", "true", "yes") else False


def offered_models() -> dict[str, Path]:
    """Model folders the app offers by name: ``{name: folder}`` from ``$WNB_MODEL_DIRS`` (chosen by whoever
    runs the server) and the model copies wnb itself wrote into its cache (their manifest and checksums
    verified: a folder copied into the cache by anyone else is not offered)."""

    roots = [Path(p).expanduser() for p in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if p.strip()]
    cached = cache_dir() / "models"
    found: dict[str, Path] = {}
    for root in [*roots, cached]:
        try:
            children = sorted(root.iterdir())
        except OSError:
            continue
        for child in children:
            if not (child / "config.json").is_file() or child.name in found:
                continue
            if root == cached and not verified_copy(child):
                continue
            found[child.name] = child
    return found


def app_model(text: str | None) -> tuple[str | None, str | None]:
    """``(name, folder)`` for the model box's text: ``(None, None)`` for the bundled model, an offered
    folder's ``(name, folder)``, or a Hugging Face id ``(id, None)`` (one of ``$WNB_APP_MODELS`` when the
    operator set it). Anything else is refused."""

    name = (text or "").strip()
    if not name or name == BUNDLED:
        return None, None
    offered = offered_models()
    if name in offered:
        return name, str(offered[name])
    allowed = allowed_hub_ids()
    if allowed is not None:
        if name in allowed:
            return name, None
        raise WnbError(f"this server loads the bundled model, {', '.join(allowed)}"
                       f"{' or ' + ', '.join(sorted(offered)) if offered else ''}; {name[:60]!r} is not among them")
    if _HUB_ID.fullmatch(name) and ".." not in name:
        return name, None
    choices = ", ".join(sorted(offered)) or "none on this server"
    raise WnbError(f"the app loads the bundled model, a Hugging Face id such as EleutherAI/pythia-160m, or a "
                   f"model folder this server offers by name ({choices}); {name[:60]!r} is none of these")


# ---------------------------------------------------------------- the hub, within the server's limits

def _model_info(name: str):
    """The repository's metadata (commit, files with their sizes), anonymously unless the operator opted in."""
    from huggingface_hub import HfApi

    return HfApi().model_info(name, files_metadata=True, token=_token())


def _download(name: str, filename: str, commit: str, tqdm_class=None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(name, filename, revision=commit, token=_token(), tqdm_class=tqdm_class)


def _hub_failure(name: str, exc: BaseException) -> WnbError:
    """The visitor's words for a failed hub call: no server path, no library advice."""
    kind = type(exc).__name__
    if "NotFound" in kind or "RepositoryNotFound" in kind or "404" in str(exc)[:200]:
        why = "there is no such public model"
    elif "Gated" in kind or "401" in str(exc)[:200] or "403" in str(exc)[:200]:
        why = "the model is gated or private"
    elif "Offline" in kind or "Connect" in kind or "Timeout" in kind or "LocalEntryNotFound" in kind:
        why = "the Hugging Face hub cannot be reached from this server"
    else:
        why = f"the hub answered {kind}"
    return WnbError(f"could not fetch {name!r} from the Hugging Face hub: {why}; check the id, or pick the "
                    "bundled model")


def plan_hub_files(name: str, siblings, limit: int | None = None) -> tuple[list[str], int]:
    """The files to fetch of a repository listed as ``siblings`` (``rfilename``, ``size``) and the bytes of
    its weights: the top-level *.safetensors and :data:`HUB_FILES`. Refuses a repository without
    safetensors weights, a small file over :data:`MAX_SMALL_FILE_BYTES`, and weights over what
    :func:`max_params` parameters take in float32."""
    limit = max_params() if limit is None else limit
    files, weights = [], 0
    for sibling in siblings:
        path, size = str(sibling.rfilename), sibling.size
        if "/" in path:
            continue
        if path.endswith(".safetensors"):
            files.append(path)
            weights += int(size or 0)
        elif path in HUB_FILES:
            if size is not None and size > MAX_SMALL_FILE_BYTES:
                raise WnbError(f"{name}: its {path} has {size / 2**20:.0f} MiB, more than this server accepts "
                               f"({MAX_SMALL_FILE_BYTES >> 20} MiB)")
            files.append(path)
    if not any(f.endswith(".safetensors") for f in files):
        raise WnbError(f"{name} has no safetensors weights (the app never downloads pickled .bin weights); "
                       "pick a model that ships model.safetensors")
    if "config.json" not in files:
        raise WnbError(f"{name} has no config.json; it is not a transformers model the app can load")
    if weights > limit * BYTES_PER_PARAM:
        raise WnbError(f"{name}'s weights take {weights / 2**30:.1f} GiB to download; this server loads models "
                       f"of at most {limit / 1e9:.2g} billion parameters ({MAX_PARAMS_ENV})")
    return sorted(files), weights


def config_params(config: dict) -> int:
    """A rough count of a decoder's parameters from its config's numbers (embeddings, attention and MLP per
    layer), for refusing absurd configs before a model is built from them; ValueError if a size is not a
    positive whole number."""
    def number(*keys, default=None):
        for key in keys:
            value = config.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{key} = {value!r}")
                return value
        if default is None:
            raise ValueError(f"none of {', '.join(keys)}")
        return default

    hidden = number("hidden_size", "n_embd", "d_model", "dim")
    layers = number("num_hidden_layers", "n_layer", "num_layers", "n_layers")
    inner = number("intermediate_size", "n_inner", "ffn_dim", "hidden_dim", default=4 * hidden)
    vocab = number("vocab_size", default=1)
    if layers > MAX_LAYERS:
        raise ValueError(f"{layers} layers")
    return 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inner)


def check_config(name: str, folder: Path, limit: int | None = None) -> int:
    """Parameters of the model ``folder/config.json`` describes, built on the meta device (no memory);
    refused above :func:`max_params` (or when the config is not one transformers knows without code)."""


    limit = max_params() if limit is None else limit
    try:
        config = json.loads((folder / "config.json").read_text())
        rough = config_params(config if isinstance(config, dict) else {})
    except (OSError, ValueError, RecursionError) as exc:
        raise WnbError(f"{name}'s config.json is not one the app can read ({str(exc)[:80]})") from None
    if rough > 4 * limit:
        raise WnbError(f"{name} has about {rough / 1e9:.1f} billion parameters; this server loads models of at "
                       f"most {limit / 1e9:.2g} billion ({MAX_PARAMS_ENV})")
    params = count_params(str(folder))
    if params > limit:
        raise WnbError(f"{name} has {params / 1e9:.2f} billion parameters; this server loads models of at most "
                       f"{limit / 1e9:.2g} billion ({MAX_PARAMS_ENV})")
    return params


def fetch_hub_model(name: str, on_file=None, limit: int | None = None) -> tuple[Path, str]:
    """Fetch an allowed hub model for the app within the server's limits; ``(folder, commit)``.

    In order, before any weight is downloaded: the repository's file list (sizes included, anonymously
    unless ``$WNB_APP_HF_TOKEN=1``), :func:`plan_hub_files`, then ``config.json`` alone and
    :func:`check_config`; then the weights and tokenizer files, ``on_file(index, total, filename)`` before
    each (a job's ``begin``: it may raise to cancel). ``commit`` is the resolved commit, so that cache
    keys tell revisions apart."""
    limit = max_params() if limit is None else limit
    try:
        info = _model_info(name)
    except WnbError:
        raise
    except Exception as exc:  # offline, unknown id, gated model...
        raise _hub_failure(name, exc) from exc
    commit = str(info.sha or "")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise WnbError(f"could not resolve {name!r} to a commit on the Hugging Face hub")
    files, _ = plan_hub_files(name, info.siblings or [], limit)
    try:
        folder = Path(_download(name, "config.json", commit)).parent
    except Exception as exc:
        raise _hub_failure(name, exc) from exc
    params = check_config(name, folder, limit)

    need, free = params * BYTES_PER_PARAM, available_memory()
    if need > 0.8 * free:
        raise WnbError(f"{name} needs about {need / 2**30:.1f} GiB of memory in float32; this server has "
                       f"{free / 2**30:.1f} GiB free now: try again later or pick a smaller model")
    rest = [f for f in files if f != "config.json"]
    for index, filename in enumerate(rest):
        if on_file is not None:
            on_file(index, len(rest), filename)
        try:
            _download(name, filename, commit)
        except Exception as exc:
            raise _hub_failure(name, exc) from exc
    return folder, commit


def app_corpus(choice: str, upload: bytes | None = None, split: str = "train") -> str:
    """The corpus text for the app's corpus choice: a named corpus (in ``split``), or the uploaded file's text."""

    if choice in CORPORA:
        return load_corpus(choice, split)
    if choice == UPLOAD:
        if upload is None:
            raise WnbError("choose a .txt file to upload first")
        return decode_text(upload, "the uploaded file", MAX_UPLOAD_BYTES)
    raise WnbError(f"the app reads the named corpora ({', '.join(CORPORA)}) or a text file you upload; "
                   "it opens no file on the server")


