"""Saving a pruned model that others load and serve.

    with wnb.pruned(lm, method="sparsegpt", sparsity="2:4", calib=calib) as report:
        wnb.save_pruned(lm, "out/pruned", format="hf")                  # AutoModelForCausalLM loads it
        wnb.save_pruned(lm, "out/pruned-ct", format="compressed-tensors", report=report)

``format="hf"`` is a plain ``save_pretrained`` checkpoint (safetensors, config, tokenizer) whose pruned
weights hold exact zeros. ``format="compressed-tensors"`` adds the ``quantization_config`` that
vLLM-style loaders read (``quant_method: compressed-tensors``) with a ``sparsity_config`` naming the
structure ("2:4" or "unstructured", targets, global sparsity), built with the ``compressed-tensors``
library (``pip install 'wnb[compressed]'``). That library no longer ships sparse *storage* compressors
(its bitmask and 2:4-bitmask formats are legacy since 0.15 and cannot be written with it), so the
weights are stored dense, exact zeros kept (``sparsity_config.format = "dense"``, as llm-compressor
writes when it does not compress). With ``bits`` the pruned layers are also written as
``pack-quantized`` integers with per-channel (or per-group) scales and zero points recovered from the
weights, which must already lie on such a grid (joint pruning and quantization)."""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from wnb.compression.expansion import routed_layers
from wnb.core.checks import check_float, check_int
from wnb.core.files import atomic_path
from wnb.core.folders import check_replaceable, written_list
from wnb.core.version import VERSION
from wnb.errors import WnbError
from wnb.model.architectures import forward_order, layer_weight, module
from wnb.model.lm import require_local

FORMATS = ("hf", "compressed-tensors")
PRUNED_MANIFEST = "wnb-saved.json"
PRUNED_FORMAT = "wnb-pruned-1"
INSTALL_COMPRESSED = "pip install 'wnb[compressed]'  (or: pip install compressed-tensors)"
MIN_SPARSITY = 0.05  # a layer counts as pruned when at least this share of its weights is exactly zero


# ---------------------------------------------------------------- shared


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
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
    )


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

    bits, group_size = _checked_save(lm, format, report, bits, group_size)
    min_sparsity = check_float(min_sparsity, "min_sparsity", 0, 1, low_open=True)
    path = check_replaceable(path, overwrite, (PRUNED_MANIFEST,), hint="give a new folder")
    _check_tied(lm)
    layers = _sparse_layers(lm, report, min_sparsity)
    if format == "compressed-tensors" and not layers:
        raise WnbError(f"no pruned layers found (none has {min_sparsity:.0%} or more exact zeros); call save_pruned "
                       "inside `with wnb.pruned(...)`, or use format='hf' to save a dense model")
    manifest = _pruned_manifest(lm, format, layers, bits, group_size)
    state = quant_config = None
    if bits is not None:
        _check_whole_layers(layers, report)
        state, quant_config = _quantized_state(lm, layers, bits, group_size)
    model = lm.model
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
            _write_compression_config(tmp, layers, manifest["sparsity_structure"], manifest["global_sparsity"],
                                      quant_config)
        manifest["written"] = written_list(tmp)
        (tmp / PRUNED_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return path


def _checked_save(lm, format: str, report, bits, group_size) -> tuple[int | None, int | None]:
    """Refuse what :func:`save_pruned` cannot write, before any work; the quantization to write."""
    require_local(lm, "saving a model")
    if format not in FORMATS:
        raise WnbError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if routed_layers(lm):
        raise WnbError("the model holds Sparse Expansion layers (inside `with wnb.expanded(...)`), which a plain "
                       "checkpoint cannot hold; save them with wnb.save_expanded(lm, path)")
    if format == "hf":
        if bits is not None or group_size is not None:
            raise WnbError("bits= writes integer weights with scales, which only format='compressed-tensors' "
                           "holds; format='hf' stores the (already quantized) weights as they are: leave bits out")
        return None, None
    _import_compressed_tensors()
    return _bits_from(report, bits, group_size)


def _pruned_manifest(lm, format: str, layers: dict, bits, group_size) -> dict:
    """What ``wnb-saved.json`` says of a pruned model: its structure, global sparsity, quantization and
    the zeros of each pruned layer (``written`` is added once the files are)."""
    params = {id(p): p for p in lm.model.parameters()}.values()
    total = sum(p.numel() for p in params)
    zeros = sum(int((p.detach() == 0).sum()) for p in params)
    return {"format": PRUNED_FORMAT, "checkpoint": format, "wnb": VERSION, "model": lm.name,
            "sparsity_structure": sparsity_structure(layers.values()) if layers else None,
            "global_sparsity": zeros / total if total else 0.0, "bits": bits, "group_size": group_size,
            "layers": {n: {"zeros": (w == 0).double().mean().item(), "two_four": is_two_four(w)}
                       for n, w in layers.items()}}


def _check_whole_layers(layers: dict, report) -> None:
    """compressed-tensors quantizes whole layers: refuse a report whose pruning touched only some rows."""
    for name, weight in layers.items():
        rows = getattr((report or {}).get(name), "neurons", None)
        if isinstance(rows, int) and rows < weight.shape[0]:
            raise WnbError(f"only {rows} of the {weight.shape[0]} rows of {name} were pruned and quantized "
                           "(neurons=...), but compressed-tensors quantizes whole layers; save this model "
                           "with format='hf' (or bits=None)")


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


# ---------------------------------------------------------------- reading back, checked


