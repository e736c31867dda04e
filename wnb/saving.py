"""Saving what was built: pruned checkpoints that others load and serve, Sparse Expansions that wnb restores.

    with wnb.pruned(lm, method="sparsegpt", sparsity="2:4", calib=calib) as report:
        wnb.save_pruned(lm, "out/pruned", format="hf")                  # AutoModelForCausalLM loads it
        wnb.save_pruned(lm, "out/pruned-ct", format="compressed-tensors", report=report)
    with wnb.expanded(lm, n_experts=16, calib=calib) as expansion:
        wnb.save_expanded(lm, "out/expansion", expansion)
    with wnb.load_expanded(lm, "out/expansion") as expansion:      # on the dense model: same logits
        ppl = wnb.perplexity(lm, held_out)

``format="hf"`` is a plain ``save_pretrained`` checkpoint (safetensors, config, tokenizer) whose pruned
weights hold exact zeros. ``format="compressed-tensors"`` adds the ``quantization_config`` that
vLLM-style loaders read (``quant_method: compressed-tensors``) with a ``sparsity_config`` naming the
structure ("2:4" or "unstructured", targets, global sparsity), built with the ``compressed-tensors``
library (``pip install 'wnb[compressed]'``). That library no longer ships sparse *storage* compressors
(its bitmask and 2:4-bitmask formats are legacy since 0.15 and cannot be written with it), so the
weights are stored dense, exact zeros kept (``sparsity_config.format = "dense"``, as llm-compressor
writes when it does not compress). With ``bits`` the pruned layers are also written as
``pack-quantized`` integers with per-channel (or per-group) scales and zero points recovered from the
weights, which must already lie on such a grid (joint pruning and quantization).

A Sparse Expansion is stored as safetensors files (routers: PCA mean and basis, centroids; one file of
experts per layer) and a JSON manifest (settings, tokens and damping per expert, SHA-256 of every file,
a fingerprint of the rest of the model). Nothing read back can run code (no pickle), and everything is
checked (format, JSON types, layer names, shapes, checksums, fingerprint) before the model is touched.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from wnb.core.files import file_sha256
from wnb.errors import WnbError
from wnb.model.state import changed

FORMATS = ("hf", "compressed-tensors")
PRUNED_MANIFEST = "wnb-saved.json"
EXPANSION_MANIFEST = "wnb-expansion.json"
PRUNED_FORMAT = "wnb-pruned-1"
EXPANSION_FORMAT = "wnb-expansion-1"
ROUTERS_FILE = "routers.safetensors"
_EXPERTS_FILE = re.compile(r"experts-\d{5}\.safetensors")
INSTALL_COMPRESSED = "pip install 'wnb[compressed]'  (or: pip install compressed-tensors)"
MIN_SPARSITY = 0.05  # a layer counts as pruned when at least this share of its weights is exactly zero
_MAX_MANIFEST_BYTES = 64 << 20


# ---------------------------------------------------------------- shared

def _version() -> str:
    from wnb import __version__

    return __version__


def _check_target(path, overwrite: bool, markers: tuple[str, ...]) -> Path:
    """The folder to write: new, empty, or (with ``overwrite``) an earlier wnb save of one of ``markers``
    holding nothing but the files that save wrote (its manifest's ``written`` list): replacing the folder
    must not take a user's file with it."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise WnbError(f"path must be a folder path (got {path!r})")
    path = Path(path).expanduser()
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise WnbError(f"{path} exists and is not a folder; give a new folder to save into")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise WnbError(f"{path} exists and is not empty; give a new folder, or overwrite=True to replace "
                           "an earlier wnb save there")
        marker = next((path / m for m in markers if (path / m).is_file()), None)
        if marker is None:
            raise WnbError(f"{path} is not empty and holds no earlier wnb save ({' or '.join(markers)}); "
                           "wnb only replaces its own saves: give a new folder")
        others = sorted(set(p.name for p in path.iterdir()) - set(_written(marker)) - {marker.name})
        if others:
            raise WnbError(f"{path} holds an earlier wnb save and also {', '.join(others)}, which wnb did not "
                           "write; wnb only replaces its own files: move them, or give a new folder")
    return path


def _written(manifest: Path) -> list[str]:
    """The names an earlier save lists as written beside its manifest (none when it is unreadable)."""
    try:
        if manifest.stat().st_size > _MAX_MANIFEST_BYTES:
            return []
        written = json.loads(manifest.read_text()).get("written", [])
    except (OSError, ValueError, AttributeError, RecursionError):  # RecursionError: JSON nested too deeply
        return []
    return [w for w in written if isinstance(w, str)] if isinstance(written, list) else []


def _routed_layers(lm) -> dict:
    from wnb.expand import RoutedLayer

    return {n: m for n, m in lm.model.named_modules() if isinstance(m, RoutedLayer)}


@contextlib.contextmanager
def _plain_for_saving(model: nn.Module):
    """A model loaded from GGUF carries transformers' GGUF quantizer; ``save_pretrained`` would record it,
    and the checkpoint would then ask for a GGUF file. Leave it out while saving (put back afterwards)."""
    own = {a: vars(model)[a] for a in ("hf_quantizer", "is_quantized") if a in vars(model)}
    had_q = hasattr(model.config, "quantization_config")
    config_q = getattr(model.config, "quantization_config", None)
    try:
        model.hf_quantizer = None
        with contextlib.suppress(AttributeError):  # a plain attribute in older transformers, a property since 5
            model.is_quantized = False
        if had_q:
            del model.config.quantization_config
        yield
    finally:
        for attr in ("hf_quantizer", "is_quantized"):
            with contextlib.suppress(AttributeError):
                if attr in own:
                    setattr(model, attr, own[attr])
                elif attr in vars(model):
                    delattr(model, attr)
        if had_q:
            model.config.quantization_config = config_q


def _check_tied(lm) -> None:
    """A config that says the LM head is tied to the input embedding makes transformers write one of the
    two; refuse when they differ (the reloaded model would silently use the other one)."""
    model = lm.model
    if not getattr(getattr(model.config, "get_text_config", lambda: model.config)(), "tie_word_embeddings", False):
        return
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or out.weight is inp.weight:
        return
    if out.weight.shape != inp.weight.shape or not torch.equal(out.weight.detach().cpu(), inp.weight.detach().cpu()):
        raise WnbError("the model's config ties the LM head to the input embedding, but the two weights differ "
                       "here; a saved checkpoint would keep only one of them")


# ---------------------------------------------------------------- pruned checkpoints

def _sparse_layers(lm, report, min_sparsity: float) -> dict[str, torch.Tensor]:
    """``{layer: [out, in] weight}`` of the pruned layers: the report's, or those with exact zeros."""
    from wnb.model.architectures import forward_order, layer_weight

    names = forward_order(lm)
    if report is not None:
        if not isinstance(report, dict) or not report:
            raise WnbError("report must be what `with wnb.pruned(...) as report` gives ({layer: LayerReport})")
        unknown = [n for n in report if n not in names]
        if unknown:
            raise WnbError(f"the report names layers that {lm.name} does not have: {', '.join(map(str, unknown[:3]))}")
        layers = {n: layer_weight(lm, n).detach() for n in names if n in report}
        for name, weight in layers.items():
            zeros = getattr(report[name], "zeros", None)
            now = (weight == 0).double().mean().item()
            if isinstance(zeros, float) and now < zeros - 1e-9:  # quantizing may round more weights to 0
                raise WnbError(f"{name} holds {now:.1%} zeros but was pruned to {zeros:.1%}: the model no longer "
                               "holds the pruned weights; call save_pruned inside the `with wnb.pruned(...)` block")
        return layers
    layers = {}
    for name in names:
        weight = layer_weight(lm, name).detach()
        if (weight == 0).double().mean().item() >= min_sparsity:
            layers[name] = weight
    return layers


def is_two_four(weight: torch.Tensor) -> bool:
    """True if every group of 4 consecutive inputs of every row (``[out, in]``) holds at least 2 zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    groups = (weight.detach() == 0).reshape(weight.shape[0], -1, 4)
    return bool((groups.sum(-1) >= 2).all())


def sparsity_structure(weights) -> str:
    """``"2:4"`` if every weight is 2:4 sparse (:func:`is_two_four`), else ``"unstructured"``."""
    weights = list(weights)
    return "2:4" if weights and all(is_two_four(w) for w in weights) else "unstructured"


def _bits_from(report, bits, group_size):
    """``bits``/``group_size`` as given, or as the pruning report records them (``LayerReport.bits``)."""
    from wnb.core.checks import check_int

    if bits is None and report:
        found = {getattr(r, "bits", None) for r in report.values()}
        found.discard(None)
        if len(found) > 1:
            raise WnbError(f"the report's layers were quantized to different bits ({sorted(found)}); pass bits=")
        if found:
            bits = found.pop()
            if group_size is None:
                sizes = {getattr(r, "group_size", None) for r in report.values()}
                group_size = sizes.pop() if len(sizes) == 1 else None
    if bits is None:
        if group_size is not None:
            raise WnbError("group_size only applies with bits= (the quantization of the pruned weights)")
        return None, None
    bits = check_int(bits, "bits", 2, 8)
    if group_size is not None:
        group_size = check_int(group_size, "group_size")
    return bits, group_size


def recover_grid(weight: torch.Tensor, bits: int, group_size: int | None = None):
    """Scale and zero point of the asymmetric ``bits``-bit grid each row (or group of ``group_size``
    columns) of ``weight [out, in]`` lies on: ``weight ≈ scale · (q − zero)`` with integers
    ``0 ≤ q, zero ≤ 2^bits − 1``. Returns ``(scale [out, groups] float32, zero [out, groups] int64)``;
    WnbError if a row (group) is not on such a grid (the weights were not quantized to ``bits`` bits).

    The step is the smallest gap between distinct values of the row (refined by least squares over the
    row); when the values skip levels so that this gap is a multiple of the step, its fractions 1/j are
    tried. Exact zeros (pruned weights) are on every grid: the zero point is an integer.
    """
    out, columns = weight.shape
    size = columns if group_size is None else group_size
    if columns % size:
        raise WnbError(f"group_size={group_size} does not divide the layer's {columns} inputs")
    maxq = 2 ** bits - 1
    eps = torch.finfo(weight.dtype).eps if weight.dtype.is_floating_point else 0.0
    v = weight.detach().to("cpu", torch.float64).reshape(-1, size)
    top = v.abs().amax(1)
    tol = 8 * eps * top + 1e-30

    def fit(rows, step):
        x, limit = v[rows], tol[rows]
        step = torch.where(step > 0, step, torch.ones_like(step))
        k = torch.round(x / step[:, None])
        denom = (k * k).sum(1)
        refined = torch.where(denom > 0, (x * k).sum(1) / denom.clamp_min(1), step)
        k = torch.round(x / refined[:, None])
        ok = ((x - refined[:, None] * k).abs().amax(1) <= limit)
        kmin, kmax = k.amin(1), k.amax(1)
        zero = (-kmin).clamp_min(0)
        ok &= (kmax + zero <= maxq) & (zero <= maxq)
        return refined, zero, ok

    srt = v.sort(1).values
    gaps = srt.diff(1)
    gaps = torch.where(gaps > tol[:, None], gaps, torch.full_like(gaps, math.inf))
    first = gaps.amin(1)
    first = torch.where(torch.isfinite(first), first, torch.where(top > 0, top, torch.ones_like(top)))
    every = torch.arange(v.shape[0])
    scale, zero, ok = fit(every, first)
    for j in range(2, maxq + 1):  # the smallest gap spans j levels: rows whose values skip levels
        bad = torch.nonzero(~ok).flatten()
        if not bad.numel():
            break
        s, z, good = fit(bad, first[bad] / j)
        take = bad[good]
        scale[take], zero[take], ok[take] = s[good], z[good], True
    if not bool(ok.all()):
        rows = torch.nonzero(~ok).flatten()
        where = f"row {int(rows[0]) // (columns // size)}" + ("" if group_size is None else
                                                               f", group {int(rows[0]) % (columns // size)}")
        raise WnbError(f"the weights are not on a {bits}-bit grid per {'channel' if group_size is None else 'group'} "
                       f"({rows.numel()} of {v.shape[0]} {'rows' if group_size is None else 'groups'} are not, "
                       f"first at {where}); pass the bits and group_size the weights were quantized with")
    groups = columns // size
    return scale.float().reshape(out, groups), zero.long().reshape(out, groups)


def _quantized_state(lm, layers: dict, bits: int, group_size: int | None) -> tuple[dict, object]:
    """Compressed tensors (``weight_packed``, scales, zero points) of each layer and the QuantizationConfig."""
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    from wnb.model.architectures import module

    for name in layers:
        if not isinstance(module(lm, name), nn.Linear):
            raise WnbError(f"compressed-tensors quantizes nn.Linear layers; {name} is a "
                           f"{type(module(lm, name)).__name__}: save it with bits=None")
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=False,
                            strategy="channel" if group_size is None else "group", group_size=group_size)
    scheme = QuantizationScheme(targets=list(layers), weights=args, format="pack-quantized")
    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    state = {}
    for name, weight in layers.items():
        scale, zero = recover_grid(weight, bits, group_size)
        offset = 2 ** (bits - 1)  # compressed-tensors' int grid is signed: q - 2^(b-1)
        local = {"weight": weight.detach().cpu(), "weight_scale": scale.to(weight.dtype if weight.dtype in
                                                                          (torch.float16, torch.float32) else
                                                                          torch.float32),
                 "weight_zero_point": (zero - offset).to(torch.int8)}
        packed = compressor.compress(local, scheme)
        state.update({f"{name}.{key}": value.contiguous() for key, value in packed.items()})
    config = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized",
                                quantization_status="compressed", ignore=[])
    return state, config


def _import_compressed_tensors():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise WnbError(f"format='compressed-tensors' needs the compressed-tensors library: {INSTALL_COMPRESSED}") \
            from None


def save_pruned(lm, path, format: str = "hf", report=None, bits: int | None = None, group_size: int | None = None,
                overwrite: bool = False, min_sparsity: float = MIN_SPARSITY) -> Path:
    """Save the model as it is now (inside ``with wnb.pruned(...)``) as a checkpoint others can load.

    ``format="hf"``: ``save_pretrained`` safetensors, config and tokenizer; the pruned weights keep their
    exact zeros and ``AutoModelForCausalLM.from_pretrained(path)`` loads it with transformers alone.
    ``format="compressed-tensors"``: the same weights plus ``quantization_config`` (``quant_method:
    compressed-tensors``) with a ``sparsity_config`` naming the structure ("2:4" when every pruned layer
    has at least 2 zeros in every 4 consecutive inputs, else "unstructured"), the pruned layers as
    ``targets`` and the model's global sparsity, built with the compressed-tensors library. With
    ``bits`` (2-8; ``group_size`` for per-group scales), or when the ``report`` records them, the pruned
    layers are written ``pack-quantized`` with scales and zero points recovered from the weights.

    ``report`` (what ``with wnb.pruned(...) as report`` gives) names the pruned layers and is checked
    against the model; without it, layers with at least ``min_sparsity`` exact zeros count as pruned.
    The folder must be new or empty; ``overwrite=True`` replaces an earlier wnb save that holds only the
    files it wrote (anything else there is refused, named). It is written
    atomically, with a ``wnb-saved.json`` manifest. Only weights are saved: hooks (sign ablation) are not.
    Returns the folder.
    """
    from wnb.core.files import atomic_path
    from wnb.core.checks import check_float
    from wnb.model.lm import require_local

    require_local(lm, "saving a model")
    if format not in FORMATS:
        raise WnbError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if _routed_layers(lm):
        raise WnbError("the model holds Sparse Expansion layers (inside `with wnb.expanded(...)`), which a plain "
                       "checkpoint cannot hold; save them with wnb.save_expanded(lm, path)")
    min_sparsity = check_float(min_sparsity, "min_sparsity", 0, 1, low_open=True)
    if format == "hf":
        if bits is not None or group_size is not None:
            raise WnbError("bits= writes integer weights with scales, which only format='compressed-tensors' "
                           "holds; format='hf' stores the (already quantized) weights as they are: leave bits out")
    else:
        bits, group_size = _bits_from(report, bits, group_size)
    if format == "compressed-tensors":
        _import_compressed_tensors()
    path = _check_target(path, overwrite, (PRUNED_MANIFEST,))
    _check_tied(lm)
    layers = _sparse_layers(lm, report, min_sparsity)
    if format == "compressed-tensors" and not layers:
        raise WnbError(f"no pruned layers found (none has {min_sparsity:.0%} or more exact zeros); call save_pruned "
                       "inside `with wnb.pruned(...)`, or use format='hf' to save a dense model")
    model = lm.model
    structure = sparsity_structure(layers.values()) if layers else None
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    zeros = sum(int((p.detach() == 0).sum()) for p in params)
    manifest = {"format": PRUNED_FORMAT, "checkpoint": format, "wnb": _version(), "model": lm.name,
                "sparsity_structure": structure, "global_sparsity": zeros / total if total else 0.0,
                "bits": bits, "group_size": group_size,
                "layers": {n: {"zeros": (w == 0).double().mean().item(), "two_four": is_two_four(w)}
                           for n, w in layers.items()}}
    state = None
    quant_config = None
    if bits is not None:
        for name, weight in layers.items():
            rows = getattr((report or {}).get(name), "neurons", None)
            if isinstance(rows, int) and rows < weight.shape[0]:
                raise WnbError(f"only {rows} of the {weight.shape[0]} rows of {name} were pruned and quantized "
                               "(neurons=...), but compressed-tensors quantizes whole layers; save this model "
                               "with format='hf' (or bits=None)")
        state, quant_config = _quantized_state(lm, layers, bits, group_size)
    with atomic_path(path) as tmp, _plain_for_saving(model):
        if state is not None:
            full = {k: v for k, v in model.state_dict().items()
                    if not any(k == f"{n}.weight" for n in layers)}
            full.update(state)
            model.save_pretrained(tmp, state_dict=full)
        else:
            model.save_pretrained(tmp)
        if lm.tokenizer is not None and hasattr(lm.tokenizer, "save_pretrained"):
            lm.tokenizer.save_pretrained(tmp)
        if format == "compressed-tensors":
            _write_compression_config(tmp, layers, structure, manifest["global_sparsity"], quant_config)
        manifest["written"] = sorted(p.name for p in tmp.iterdir())
        (tmp / PRUNED_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return path


def _write_compression_config(folder: Path, layers: dict, structure: str, global_sparsity: float,
                              quant_config) -> None:
    """Add compressed-tensors' ``quantization_config`` (with its ``sparsity_config``) to config.json."""
    import compressed_tensors
    from compressed_tensors.config import DenseSparsityConfig

    sparsity = DenseSparsityConfig(global_sparsity=global_sparsity, sparsity_structure=structure,
                                   targets=list(layers), ignore=[])
    block = {"quant_method": "compressed-tensors", "format": "dense", "quantization_status": "compressed"}
    if quant_config is not None:
        block.update(json.loads(quant_config.model_dump_json()))
    block.update({"version": compressed_tensors.__version__, "sparsity_config": json.loads(sparsity.model_dump_json())})
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"] = block
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


# ---------------------------------------------------------------- Sparse Expansion

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

    from wnb.core.files import atomic_path
    from wnb.expand import Expansion, RoutedLayer
    from wnb.model.lm import require_local

    require_local(lm, "saving an expansion")
    present = _routed_layers(lm)
    bits = group_size = None
    if expansion is None:
        layers = present
        percdamp = None
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
    settings = _json_settings(settings)
    path = _check_target(path, overwrite, (EXPANSION_MANIFEST,))
    order = [n for n, _ in lm.model.named_modules() if n in layers]
    routers: dict[int, int] = {}
    router_tensors: dict[str, torch.Tensor] = {}
    router_rows = []
    entries = {}
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
    manifest = {"format": EXPANSION_FORMAT, "wnb": _version(), "model": lm.name,
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
        manifest["written"] = sorted(p.name for p in tmp.iterdir())
        (tmp / EXPANSION_MANIFEST).write_text(json.dumps(manifest, indent=1, allow_nan=False))
    return path


# ---------------------------------------------------------------- reading back, checked

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
    if file.stat().st_size > _MAX_MANIFEST_BYTES:
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
    from transformers.pytorch_utils import Conv1D

    from wnb.expand import Router, RoutedLayer
    from wnb.model.architectures import check_layers, layer_bias, layer_weight, module

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
    handle = _open_checked(folder, ROUTERS_FILE, files)
    built: dict[int, Router] = {}
    plan = []
    for name in names:
        entry = layers[name]
        what = f"layer {name}"
        if not isinstance(entry, dict):
            raise WnbError(f"{where}: the entry of {name} must be an object")
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
        if not 0 <= index < len(routers) or not isinstance(routers[index], dict):
            raise WnbError(f"{what} names router {index}, but the manifest has {len(routers)}")
        row = routers[index]
        pca, dim = _need(row, "pca", bool, f"router {index}"), _need(row, "dim", int, f"router {index}")
        if _need(row, "n_experts", int, f"router {index}") != k or _need(row, "d_in", int, f"router {index}") != in_f:
            raise WnbError(f"router {index} does not fit {name} (its experts or input width differ)")
        if not 1 <= k or not 1 <= dim <= in_f:
            raise WnbError(f"router {index} has impossible sizes (k={k}, dim={dim})")
        if index not in built:
            rw = f"router {index}"
            mean = _tensor(handle, f"router{index}.mean", (in_f,), rw)
            comps = _tensor(handle, f"router{index}.components", (in_f, dim), rw) if pca else None
            if not pca and dim != in_f:
                raise WnbError(f"{rw} has no PCA, so its centroids must be {in_f} wide (got {dim})")
            centroids = _tensor(handle, f"router{index}.centroids", (k, dim), rw)
            built[index] = Router(mean, comps, centroids).to(weight.device)
        experts_file = _open_checked(folder, file, files)
        experts = _tensor(experts_file, "experts", (k, out_f, in_f), what)
        saved_bias = _tensor(experts_file, "bias", (out_f,), what) if has_bias else None
        extra = set(experts_file.keys()) - {"experts", "bias"}
        if extra:
            raise WnbError(f"{what}: unexpected tensors {sorted(extra)[:3]} in {file}")
        layer = RoutedLayer(built[index], experts.to(weight.device), None if saved_bias is None else
                            saved_bias.to(weight.device), tokens, damping, dtype=weight.dtype)
        plan.append((name, layer))
    return plan, percdamp, quant


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
    from wnb.expand import Expansion, swap_module
    from wnb.model.lm import require_local

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
