"""Saving a Sparse Expansion and putting it back: routers (PCA mean and basis, centroids) and one file of
experts per layer as safetensors, and a JSON manifest (settings, tokens and damping per expert, SHA-256
of every file, a fingerprint of the rest of the model). Nothing read back can run code (no pickle), and
everything is checked (format, JSON types, layer names, shapes, checksums, fingerprint) before the
model is touched.

    with wnb.expanded(lm, n_experts=16, calib=calib) as expansion:
        wnb.save_expanded(lm, "out/expansion", expansion)
    with wnb.load_expanded(lm, "out/expansion") as expansion:      # on the dense model: same logits
        ppl = wnb.perplexity(lm, held_out)"""
from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from wnb.compression.expansion import Expansion, RoutedLayer, routed_layers, swap_module
from wnb.compression.router import Router
from wnb.core.files import atomic_path, file_sha256
from wnb.core.folders import MAX_MANIFEST_BYTES, check_replaceable, written_list
from wnb.core.version import VERSION
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, layer_bias, layer_weight, module
from wnb.model.lm import require_local
from wnb.model.state import changed

EXPANSION_MANIFEST = "wnb-expansion.json"
EXPANSION_FORMAT = "wnb-expansion-1"
ROUTERS_FILE = "routers.safetensors"
_EXPERTS_FILE = re.compile(r"experts-\d{5}\.safetensors")


def _fingerprint(model: nn.Module, skip: list[str]) -> dict[str, list]:
    """``{parameter: [shape, dtype, Σx, Σx²]}`` of the parameters outside ``skip`` (float64 sums): enough to
    tell the model an expansion was built on from another one of the same shapes, at little cost."""
    prints = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(name.startswith(s + ".") for s in skip):
                continue
            x = p.detach()
            if x.device.type == "meta":
                continue
            x = x.double() if x.is_floating_point() else x.to(torch.float64)
            prints[name] = [list(p.shape), str(p.dtype).removeprefix("torch."), float(x.sum()), float((x * x).sum())]
    return prints


def _json_settings(settings) -> dict:
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise WnbError("settings must be a dict of names to numbers, strings, booleans, None or lists of those")

    def plain(value) -> bool:
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        if isinstance(value, float):
            return math.isfinite(value)
        return value is None or isinstance(value, (str, bool, int))

    for key, value in settings.items():
        if not isinstance(key, str) or not plain(value):
            raise WnbError(f"setting {key!r} = {value!r} is not JSON-safe (numbers, strings, booleans, None, lists)")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def save_expanded(lm, path, expansion=None, settings: dict | None = None, overwrite: bool = False) -> Path:
    """Save the Sparse Expansion the model holds now (inside ``with wnb.expanded(...) as expansion``).

    Writes ``routers.safetensors`` (each router's PCA ``mean``, ``components`` and ``centroids``; layers
    sharing a router share one entry), one ``experts-NNNNN.safetensors`` per layer (``experts [k, out,
    in]``, ``bias``) and ``wnb-expansion.json``: the layers, their router, tokens and damping per expert,
    ``percdamp``, your ``settings`` (JSON-safe values, e.g. the sparsity and seed you used), the SHA-256 of
    every file and a fingerprint of the model's other parameters. ``expansion`` defaults to every routed
    layer in the model. Returns the folder (new or empty; ``overwrite=True`` replaces an earlier save that holds
    only its own files).
    """
    from safetensors.torch import save_file

    layers, percdamp, bits, group_size = _layers_to_save(lm, expansion)
    settings = _json_settings(settings)
    path = check_replaceable(path, overwrite, (EXPANSION_MANIFEST,), hint="give a new folder")
    order = [n for n, _ in lm.model.named_modules() if n in layers]
    router_tensors, router_rows, entries = _described(layers, order)
    manifest = {"format": EXPANSION_FORMAT, "wnb": VERSION, "model": lm.name,
                "model_class": type(lm.model).__name__, "percdamp": percdamp, "bits": bits,
                "group_size": group_size, "settings": settings,
                "routers": router_rows, "layers": entries, "files": {},
                "fingerprint": _fingerprint(lm.model, order)}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(router_tensors, str(tmp / ROUTERS_FILE), metadata={"format": EXPANSION_FORMAT})
        manifest["files"][ROUTERS_FILE] = file_sha256(tmp / ROUTERS_FILE)
        for name in order:
            layer = layers[name]
            tensors = {"experts": layer.experts.detach().cpu().contiguous()}
            if layer.bias is not None:
                tensors["bias"] = layer.bias.detach().cpu().contiguous()
            file = entries[name]["file"]
            save_file(tensors, str(tmp / file), metadata={"format": EXPANSION_FORMAT, "layer": name})
            manifest["files"][file] = file_sha256(tmp / file)
            del tensors
        manifest["written"] = written_list(tmp)
        (tmp / EXPANSION_MANIFEST).write_text(json.dumps(manifest, indent=1, allow_nan=False))
    return path


def _layers_to_save(lm, expansion) -> tuple[dict, float | None, int | None, int | None]:
    """``(layers, percdamp, bits, group_size)`` of what to save: ``expansion``'s routed layers (checked to be
    the model's now) or every routed layer of the model."""
    require_local(lm, "saving an expansion")
    present = routed_layers(lm)
    if expansion is None:
        layers, percdamp, bits, group_size = present, None, None, None
    else:
        if not isinstance(expansion, Expansion):
            raise WnbError("expansion must be what `with wnb.expanded(...) as expansion` gives")
        layers, percdamp = dict(expansion.layers), expansion.percdamp
        bits, group_size = getattr(expansion, "bits", None), getattr(expansion, "group_size", None)
        for name, layer in layers.items():
            if present.get(name) is not layer:
                raise WnbError(f"{name} is not expanded in the model any more: call save_expanded inside the "
                               "`with wnb.expanded(...)` block")
    if not layers:
        raise WnbError("the model holds no Sparse Expansion; call save_expanded inside `with wnb.expanded(...)`")
    return layers, percdamp, bits, group_size


def _described(layers: dict, order: list[str]) -> tuple[dict, list, dict]:
    """The routers' tensors (one entry per router, shared by the layers fed the same input), their rows and
    each layer's manifest entry."""
    routers: dict[int, int] = {}
    router_tensors: dict[str, torch.Tensor] = {}
    router_rows, entries = [], {}
    for name in order:
        layer: RoutedLayer = layers[name]
        router = layer.router
        if id(router) not in routers:
            index = routers[id(router)] = len(router_rows)
            router_tensors[f"router{index}.mean"] = router.mean.detach().cpu().contiguous()
            router_tensors[f"router{index}.centroids"] = router.centroids.detach().cpu().contiguous()
            if router.components is not None:
                router_tensors[f"router{index}.components"] = router.components.detach().cpu().contiguous()
            router_rows.append({"d_in": int(router.mean.shape[0]), "pca": router.components is not None,
                                "dim": int(router.centroids.shape[1]), "n_experts": int(router.n_experts)})
        tokens = [int(t) for t in layer.tokens] if layer.tokens is not None else None
        damping = [float(d) for d in layer.damping] if layer.damping is not None else None
        entries[name] = {"router": routers[id(router)], "file": f"experts-{len(entries):05d}.safetensors",
                         "n_experts": layer.n_experts, "out_features": layer.out_features,
                         "in_features": layer.in_features, "dtype": str(layer.experts.dtype).removeprefix("torch."),
                         "bias": layer.bias is not None, "tokens": tokens, "damping": damping}
    return router_tensors, router_rows, entries


def _need(obj, key, kinds, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise WnbError(f"{where} has no {key!r}: not a wnb expansion manifest")
    value = obj[key]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise WnbError(f"{where}: {key!r} must be {_kind_names(kinds)}, not {value!r}")
    if not isinstance(value, kinds):
        raise WnbError(f"{where}: {key!r} must be {_kind_names(kinds)}, not {type(value).__name__}")
    return value


def _kind_names(kinds) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join({int: "a whole number", float: "a number", str: "a string", bool: "true/false",
                        list: "a list", dict: "an object", type(None): "null"}.get(k, k.__name__) for k in kinds)


def _count_list(value, n: int, kinds, what: str):
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n or not all(
            isinstance(v, kinds) and not isinstance(v, bool) for v in value):
        raise WnbError(f"{what} must be a list of {n} numbers")
    return value


def _read_manifest(path: Path) -> dict:
    if not isinstance(path, (str, Path)) or not str(path):
        raise WnbError(f"path must be the folder save_expanded wrote (got {path!r})")
    path = Path(path).expanduser()
    file = path / EXPANSION_MANIFEST
    if not path.is_dir() or not file.is_file():
        raise WnbError(f"{path} is not a saved expansion (no {EXPANSION_MANIFEST}); save one with wnb.save_expanded")
    if file.stat().st_size > MAX_MANIFEST_BYTES:
        raise WnbError(f"{file} is implausibly large for a manifest")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"),
                              parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not allowed")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise WnbError(f"{file} is not valid JSON ({exc})") from None
    except RecursionError:
        raise WnbError(f"{file} is nested too deeply to be a wnb expansion manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPANSION_FORMAT:
        raise WnbError(f"{file} is not a wnb expansion manifest (format {EXPANSION_FORMAT!r} expected)")
    return manifest


def _open_checked(folder: Path, file: str, files: dict):
    """The tensors of ``file`` (named in the manifest, checksum verified), as a safetensors handle."""
    from safetensors import safe_open

    if not isinstance(file, str) or not (file == ROUTERS_FILE or _EXPERTS_FILE.fullmatch(file)):
        raise WnbError(f"the manifest names a file {file!r}; only {ROUTERS_FILE} and experts-NNNNN.safetensors are "
                       "allowed")
    target = folder / file
    if target.is_symlink() or not target.is_file():
        raise WnbError(f"{target} is missing (or is a link); the saved expansion is incomplete")
    digest = files.get(file)
    if not isinstance(digest, str):
        raise WnbError(f"the manifest has no checksum for {file}")
    if file_sha256(target) != digest:
        raise WnbError(f"{target} does not match the checksum in the manifest (changed or from another save)")
    try:
        return safe_open(str(target), framework="pt", device="cpu")
    except Exception as exc:  # SafetensorError, OSError: a file that is not safetensors (e.g. a pickle)
        raise WnbError(f"{target} is not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else exc})"
                       ) from None


def _tensor(handle, key: str, shape: tuple, what: str, float_only: bool = True) -> torch.Tensor:
    keys = set(handle.keys())
    if key not in keys:
        raise WnbError(f"{what}: the file holds no tensor {key!r}")
    found = tuple(handle.get_slice(key).get_shape())
    if found != tuple(shape):
        raise WnbError(f"{what}: {key} has shape {list(found)} but the model needs {list(shape)}")
    tensor = handle.get_tensor(key)
    if float_only and not tensor.is_floating_point():
        raise WnbError(f"{what}: {key} must hold floating-point numbers, not {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        raise WnbError(f"{what}: {key} holds NaN or infinite values")
    return tensor


def _check_fingerprint(lm, saved, skip: list[str]) -> None:
    if not isinstance(saved, dict):
        raise WnbError("the manifest's fingerprint must be an object")
    now = _fingerprint(lm.model, skip)
    missing = [n for n in saved if n not in now]
    extra = [n for n in now if n not in saved]
    if missing or extra:
        raise WnbError(f"the expansion was saved from another model ({(missing or extra)[0]} is "
                       f"{'missing here' if missing else 'new here'}); load the model it was built on")
    for name, entry in saved.items():
        if not (isinstance(entry, list) and len(entry) == 4):
            raise WnbError(f"the manifest's fingerprint of {name} is malformed")
        shape, dtype, total, squares = entry
        cur = now[name]
        if shape != cur[0]:
            raise WnbError(f"{name} has shape {cur[0]} here but {shape} in the saved expansion: another model")
        if dtype != cur[1]:
            raise WnbError(f"the expansion was saved from a {dtype} model, this one is {cur[1]} ({name}); "
                           f"load the model in {dtype}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (total, squares)) or not (
                math.isclose(total, cur[2], rel_tol=1e-7, abs_tol=1e-6)
                and math.isclose(squares, cur[3], rel_tol=1e-7, abs_tol=1e-6)):
            raise WnbError(f"the weights of {name} differ from those the expansion was built on: another model (or "
                           "one already pruned or changed); load the dense model it was built on")


def _plan_load(lm, folder: Path, manifest: dict, check_model: bool) -> tuple[list, float | None, dict]:
    """Everything checked and read into memory before the model is touched: ``[(name, RoutedLayer)]``."""
    layers, routers, files, percdamp, quant, names = _checked_manifest(lm, manifest, check_model)
    handle = _open_checked(folder, ROUTERS_FILE, files)
    built: dict[int, Router] = {}
    plan = []
    for name in names:
        if not isinstance(layers[name], dict):
            raise WnbError(f"{EXPANSION_MANIFEST}: the entry of {name} must be an object")
        plan.append((name, _loaded_layer(lm, folder, name, layers[name], routers, files, handle, built)))
    return plan, percdamp, quant


def _checked_manifest(lm, manifest: dict, check_model: bool):
    """The manifest's parts, their JSON types checked, and its layers: dense linear layers of this model
    (and, with ``check_model``, the rest of the model the one the expansion was built on)."""
    from transformers.pytorch_utils import Conv1D

    where = EXPANSION_MANIFEST
    layers = _need(manifest, "layers", dict, where)
    routers = _need(manifest, "routers", list, where)
    files = _need(manifest, "files", dict, where)
    percdamp = _need(manifest, "percdamp", (int, float, type(None)), where)
    quant = {key: manifest.get(key) for key in ("bits", "group_size")}
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1) for v in quant.values()):
        raise WnbError(f"{where}: bits and group_size must be whole numbers or null")
    _need(manifest, "settings", dict, where)
    if not layers:
        raise WnbError(f"{where} lists no layers")
    if not all(isinstance(n, str) for n in layers):
        raise WnbError(f"{where}: layer names must be strings")
    names = check_layers(lm, list(layers))  # WnbError naming the closest valid layers
    for name in names:
        if not isinstance(module(lm, name), (nn.Linear, Conv1D)):
            raise WnbError(f"{name} is a {type(module(lm, name)).__name__}, not a dense linear layer: is an expansion "
                           "already in place? Leave its `with` block first")
    if check_model:
        _check_fingerprint(lm, manifest.get("fingerprint"), names)
    return layers, routers, files, percdamp, quant, names


def _loaded_layer(lm, folder: Path, name: str, entry: dict, routers: list, files: dict, handle, built: dict):
    """One saved layer as a :class:`RoutedLayer` on the weight's device, its sizes, bias and router checked
    against this model (routers shared by several layers are built once, in ``built``)."""
    what = f"layer {name}"
    index = _need(entry, "router", int, what)
    k = _need(entry, "n_experts", int, what)
    out_f, in_f = _need(entry, "out_features", int, what), _need(entry, "in_features", int, what)
    has_bias = _need(entry, "bias", bool, what)
    file = _need(entry, "file", str, what)
    tokens = _count_list(entry.get("tokens"), k, int, f"{what}: tokens")
    damping = _count_list(entry.get("damping"), k, (int, float), f"{what}: damping")
    weight = layer_weight(lm, name)
    if (out_f, in_f) != tuple(weight.shape):
        raise WnbError(f"{what} is [{out_f}, {in_f}] in the saved expansion but {list(weight.shape)} in "
                       f"{lm.name}: another model")
    bias = layer_bias(lm, name)
    if has_bias != (bias is not None):
        raise WnbError(f"{what} {'has' if bias is not None else 'has no'} bias here but the saved one "
                       f"{'has' if has_bias else 'has none'}: another model")
    if index not in built:
        built[index] = _loaded_router(handle, routers, index, name, k, in_f).to(weight.device)
    experts_file = _open_checked(folder, file, files)
    experts = _tensor(experts_file, "experts", (k, out_f, in_f), what)
    saved_bias = _tensor(experts_file, "bias", (out_f,), what) if has_bias else None
    extra = set(experts_file.keys()) - {"experts", "bias"}
    if extra:
        raise WnbError(f"{what}: unexpected tensors {sorted(extra)[:3]} in {file}")
    return RoutedLayer(built[index], experts.to(weight.device), None if saved_bias is None else
                       saved_bias.to(weight.device), tokens, damping, dtype=weight.dtype)


def _loaded_router(handle, routers: list, index: int, name: str, k: int, in_f: int) -> Router:
    """Router ``index`` of the routers file, its row of the manifest checked against the layer it serves."""
    if not 0 <= index < len(routers) or not isinstance(routers[index], dict):
        raise WnbError(f"layer {name} names router {index}, but the manifest has {len(routers)}")
    row, rw = routers[index], f"router {index}"
    pca, dim = _need(row, "pca", bool, rw), _need(row, "dim", int, rw)
    if _need(row, "n_experts", int, rw) != k or _need(row, "d_in", int, rw) != in_f:
        raise WnbError(f"router {index} does not fit {name} (its experts or input width differ)")
    if not 1 <= k or not 1 <= dim <= in_f:
        raise WnbError(f"router {index} has impossible sizes (k={k}, dim={dim})")
    if not pca and dim != in_f:
        raise WnbError(f"{rw} has no PCA, so its centroids must be {in_f} wide (got {dim})")
    mean = _tensor(handle, f"router{index}.mean", (in_f,), rw)
    comps = _tensor(handle, f"router{index}.components", (in_f, dim), rw) if pca else None
    centroids = _tensor(handle, f"router{index}.centroids", (k, dim), rw)
    return Router(mean, comps, centroids)


@contextlib.contextmanager
def load_expanded(lm, path, check_model: bool = True):
    """Put a saved Sparse Expansion into the dense model for the duration of a ``with`` block, as
    ``wnb.expanded`` does: yields an :class:`~wnb.Expansion` and puts the dense modules back on exit (also
    after an error or an interrupt). The logits are those of the model the expansion was saved from.

    Everything is checked before the model is touched: the manifest's format and JSON types, that each
    layer exists and is a dense linear layer of this model with the saved shapes and bias, the routers'
    shapes, every file's SHA-256 and (``check_model``) that the model's other parameters are those the
    expansion was built on. Any mismatch raises WnbError; nothing read can run code.
    """

    require_local(lm, "loading an expansion")
    folder = Path(path).expanduser() if isinstance(path, (str, Path)) else path
    manifest = _read_manifest(folder)
    plan, percdamp, quant = _plan_load(lm, folder, manifest, check_model)
    fields = getattr(Expansion, "__dataclass_fields__", {})
    extra = {k: v for k, v in quant.items() if k in fields}
    with changed(lm, "a loaded Sparse Expansion"):
        swapped = {}
        try:
            for name, layer in plan:
                swapped[name] = swap_module(lm, name, layer)
            yield Expansion(dict(plan), percdamp if percdamp is not None else float("nan"), **extra)
        finally:
            for name in reversed(list(swapped)):
                swap_module(lm, name, swapped[name])
