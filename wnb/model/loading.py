"""Loading language models: the bundled one, any Hugging Face id or folder, or a model run on NDIF; and
a model's size from its config alone (nothing downloaded but the config), to refuse what cannot fit."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from wnb.errors import WnbError
from wnb.model.architectures import block_names, forward_order
from wnb.model.bundled import (
    BUNDLED,
    bundled_cache,
    bundled_folder,
    copy_complete,
    load_bundled,
)
from wnb.model.lm import LM, model_label, resolve_device, resolve_dtype, wrap_model
from wnb.model.offload import check_offload, offload_blocks


def load_model(name: str | None = None, device: str = "auto", dtype=None, revision: str | None = None,
               trust_remote_code: bool = False, remote: bool | str = False, offload: bool = False) -> LM:
    """Load a causal LM for study.

    ``name=None`` is the bundled SmolLM2-135M-Instruct (offline). Otherwise a Hugging Face id or a
    local folder; ``revision`` picks a branch or training checkpoint (Pythia: ``"step143000"``).
    ``trust_remote_code`` is never switched on unless passed.

    ``remote=True`` runs the model on NDIF through nnsight (key from ``NDIF_API_KEY``): only its
    config and tokenizer are loaded here, captures send the trace and get the saved tensors back;
    pruning, expansion and perplexity need local weights and refuse. ``remote="local"`` is nnsight's
    in-process simulation of that path (weights loaded here), for checking it offline.

    ``offload=True`` (CUDA only) keeps the transformer blocks in CPU memory and moves each onto the GPU
    only while it runs, so a model larger than the GPU fits; see :mod:`wnb.model.offload`.

    The bundled model has one version: any ``revision`` but None is refused for it.
    """
    check_revision(name, revision)
    if offload:
        check_offload(device, remote)
    if remote:
        return _load_remote(name, device, dtype, revision, trust_remote_code, remote)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    where = torch.device("cpu") if offload else dev
    if name is None or name == BUNDLED:
        model, tokenizer = load_bundled()
        lm = wrap_model(model.to(device=where, dtype=dt), tokenizer, BUNDLED)
    else:
        model, tokenizer = _load_hf(name, dt, revision, trust_remote_code)
        lm = wrap_model(model.to(where), tokenizer, model_label(name, revision))
    if offload:
        offload_blocks(lm, dev)
    return lm


def check_revision(name: str | None, revision) -> None:
    """Refuse a revision the model cannot honour: the bundled model has one version (revision None only)."""
    if (name is None or name == BUNDLED) and revision is not None:
        raise WnbError(f"the bundled {BUNDLED} has one version only, so revision must be None (got {revision!r}); "
                       "revisions (branches, tags, commits, checkpoints) apply to Hugging Face models, e.g. "
                       "EleutherAI/pythia-160m-deduped at step143000")


def _load_hf(name: str, dtype: torch.dtype, revision: str | None, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = "local folder" if Path(name).is_dir() else "Hugging Face hub id"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors...
        text = str(exc)
        hint = ("check the spelling, the network connection, and for gated models run "
                "`huggingface-cli login` after accepting the licence on the model page")
        if "trust_remote_code" in text:
            hint = "this model ships its own code; pass trust_remote_code=True if you trust it"
        raise WnbError(f"could not load model {name!r} (tried it as a {where}"
                       f"{', revision ' + repr(revision) if revision else ''}): {text.splitlines()[0]}; {hint}") from exc
    return model, tokenizer


def _load_remote(name, device, dtype, revision, trust_remote_code, remote) -> LM:
    from nnsight import CONFIG, TransformersModel
    from transformers import AutoTokenizer

    if remote not in (True, "local"):
        raise WnbError(f"remote must be False, True (NDIF) or 'local' (in-process simulation), not {remote!r}")
    if str(device) not in ("auto", "cpu") or dtype is not None:
        raise WnbError("a remote model runs where NDIF hosts it, in its dtype: leave device='auto' and dtype=None")
    bundled = name is None or name == BUNDLED
    if remote is True and bundled:
        raise WnbError("NDIF does not host the bundled model; name a model NDIF serves (see https://nnsight.net/status) "
                       "or use remote='local' to simulate the remote path offline")
    if remote is True and not CONFIG.API.APIKEY:
        raise WnbError("remote models run on NDIF and need an API key: set NDIF_API_KEY "
                       "(register at https://login.ndif.us)")
    if bundled:
        if not copy_complete(bundled_cache()):
            load_bundled()
        source = str(bundled_cache())
    else:
        source = name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        wrapper = TransformersModel(source, task="text-generation", tokenizer=tokenizer, revision=revision,
                                    trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise WnbError(f"could not load the config and tokenizer of {name!r} for a remote run: "
                       f"{str(exc).splitlines()[0]}; check the name and the network connection") from exc
    lm = LM(model=wrapper._module, tokenizer=tokenizer, nnsight=wrapper, device=torch.device("cpu"),
            name=BUNDLED if bundled else model_label(name, revision), remote=remote)
    forward_order(lm)  # on the meta skeleton, before anything loads weights
    return lm


def estimate_model_bytes(name: str | None = None, dtype=torch.float32, revision: str | None = None,
                         trust_remote_code: bool = False) -> int:
    """Bytes the weights of ``name`` take in ``dtype``, from its config alone (built on the meta device,
    nothing downloaded but the config), so a run can be refused before loading a model that cannot fit."""
    dtype = resolve_dtype(dtype, torch.device("cpu"))  # a name or a dtype; unsupported ones refused
    if name is None or name == BUNDLED:  # its float32 copy is on disk already
        stored = sum(p.stat().st_size for p in bundled_folder().glob("*.safetensors"))
        return stored * dtype.itemsize // 4
    return count_params(name, revision, trust_remote_code) * dtype.itemsize


def count_params(name: str, revision: str | None = None, trust_remote_code: bool = False) -> int:
    """Parameters of the model ``name`` (hub id or folder) from its config alone, built on the meta device
    (no memory, nothing downloaded but the config); tied embeddings counted once."""
    skeleton = meta_skeleton(name, revision, trust_remote_code)
    count = sum(p.numel() for p in skeleton.parameters())
    out, inp = skeleton.get_output_embeddings(), skeleton.get_input_embeddings()
    if getattr(skeleton.config, "tie_word_embeddings", False) and out is not None and inp is not None \
            and out.weight is not inp.weight:  # the skeleton is not tied; the loaded model is
        count -= out.weight.numel()
    return count


def estimate_block_bytes(name: str | None = None, dtype=torch.float32, revision: str | None = None,
                         trust_remote_code: bool = False) -> list[int]:
    """Bytes the weights of each transformer block of ``name`` take in ``dtype``, in order, from its
    config alone (as :func:`estimate_model_bytes`): with ``offload=True`` the GPU holds the largest one
    besides the weights outside the blocks."""
    dtype = resolve_dtype(dtype, torch.device("cpu"))  # a name or a dtype; unsupported ones refused
    source = str(bundled_folder()) if name is None or name == BUNDLED else name
    skeleton = meta_skeleton(source, revision if source == name else None, trust_remote_code)
    return [sum(p.numel() for p in skeleton.get_submodule(b).parameters()) * dtype.itemsize
            for b in block_names(skeleton, source)]


def meta_skeleton(name: str, revision: str | None, trust_remote_code: bool) -> nn.Module:
    """The model built from its config on the meta device: shapes without weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise WnbError(f"could not read the config of {name!r}: {str(exc).splitlines()[0]}") from exc
