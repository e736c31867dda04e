"""The plan of a reading pass (:func:`wnb.scoring.reader.read_layers`, :func:`wnb.read_model`): memory per
neuron and per layer, batches, method.

:func:`plan_pass` works from the layers' shapes and the model's config only, before any work; a request
that cannot fit the memory budget is refused with the estimate in the message. What a layer keeps beside its
sketch (the contexts of :mod:`wnb.reading`, the samples of :mod:`wnb.scoring.samples`) is counted through
``feed_bytes``, given by whoever asks for it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from wnb.core.checks import check_int
from wnb.core.eviction import size_text
from wnb.core.memory import available_memory
from wnb.data.positions import check_skip
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, ffn_layers, layer_weight
from wnb.scoring.sketch import sketch_bytes

WD_METHODS = ("auto", "exact", "streaming")  # exact from kept outputs, streaming from the sketch, auto: exact if it fits
BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}   # tokens per batch aimed at (fewer when the budget asks)


@dataclass(frozen=True)
class ReadPlan:
    """What a read will hold, from the layers' shapes and the model's config, before any work.

    ``bytes_per_neuron``: the state kept per neuron (sketch, and contexts with ``k``); ``layer_bytes``: the
    state per layer; ``batch_bytes``: temporaries of one batch (the forward's activations and the sketch's
    buffers, estimated from the config); ``exact_bytes``: the outputs kept for exact WD (0 when streaming).
    """

    layers: tuple
    widths: tuple
    n_tokens: int
    seq_len: int
    batch_windows: int
    n_batches: int
    wd: str
    n_bins: int
    spread: bool
    contexts: int
    n_samples: int
    skip_first: int
    bytes_per_neuron: float
    layer_bytes: dict
    batch_bytes: int
    exact_bytes: int
    limit_bytes: int

    @property
    def neurons(self) -> int:
        return sum(self.widths)

    @property
    def state_bytes(self) -> int:
        return sum(self.layer_bytes.values())

    @property
    def total_bytes(self) -> int:
        """Bytes beside the model: state, one batch's temporaries and the exact outputs."""
        return self.state_bytes + self.batch_bytes + self.exact_bytes

    def describe(self) -> str:
        widths = sorted({(self.layer_bytes[name], n) for name, n in zip(self.layers, self.widths)}, reverse=True)
        per_layer = ", ".join(f"{size_text(b)} for {n:,} neurons" for b, n in widths[:3])
        text = (f"{len(self.layers)} layer(s), {self.neurons:,} neurons, {self.n_tokens:,} tokens in "
                f"{self.n_batches} batch(es) of {self.batch_windows} window(s); state {self.bytes_per_neuron:,.0f} "
                f"bytes per neuron ({per_layer}; {size_text(self.state_bytes)} in all), batch temporaries "
                f"about {size_text(self.batch_bytes)}")
        if self.exact_bytes:
            text += f", outputs kept for exact WD {size_text(self.exact_bytes)}"
        return text + f"; {size_text(self.total_bytes)} beside the model (limit {size_text(self.limit_bytes)})"

    def as_dict(self) -> dict:
        """Plain lists, ints and strings (for a result's metadata)."""
        d = asdict(self)
        d.update(layers=list(self.layers), widths=list(self.widths), bytes_per_neuron=float(self.bytes_per_neuron),
                 total_bytes=self.total_bytes)
        return d


def _activation_bytes(lm, seq_len: int) -> int:
    """Rough bytes of the forward's activations per token, from the model's config."""
    cfg = getattr(lm.model, "config", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or 1024
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None) or 16
    size = torch.finfo(lm.dtype).bits // 8 if lm.dtype.is_floating_point else 4
    return size * (12 * hidden + 4 * inter + 2 * heads * seq_len)


def _tokens(windows: torch.Tensor, max_tokens, skip_first: int) -> int:
    """Tokens read: all of ``windows`` or the first ``max_tokens``; refused when nothing is left to read."""
    total = windows.numel() if max_tokens is None else min(check_int(max_tokens, "max_tokens"), windows.numel())
    seq_len = windows.shape[1]
    if total <= skip_first and total <= seq_len:
        raise WnbError(f"max_tokens={total} keeps no token once the first {skip_first} position(s) are skipped")
    return total


def plan_pass(lm, windows, layers=None, *, skip_first: int = 0, max_tokens: int | None = None, wd: str = "auto",
              n_bins: int = 256, spread: bool = True, max_bytes: int | None = None, batch_size: int | None = None,
              contexts: int = 0, n_samples: int = 8, feed_bytes=None) -> ReadPlan:
    """The :class:`ReadPlan` of a reading pass with these arguments; WnbError if it cannot fit ``max_bytes``
    (default: 60% of the available memory), with the estimate in the message. ``feed_bytes(d)``: the bytes
    kept beside the sketch for a layer of ``d`` neurons (the ``contexts`` of :mod:`wnb.reading`, the samples of
    :mod:`wnb.scoring.samples`)."""
    layers = check_layers(lm, ffn_layers(lm) if layers is None else layers)
    windows = check_windows(windows, lm)
    seq_len, skip_first = check_skip(windows.shape[1], skip_first)
    if wd not in WD_METHODS:
        raise WnbError(f"wd must be one of {', '.join(WD_METHODS)} (got {wd!r})")
    contexts, n_samples = check_int(contexts, "contexts", minimum=0), check_int(n_samples, "n_samples")
    if contexts and feed_bytes is None:
        raise WnbError("contexts are fed by wnb.read_model (wnb.reading), which states their memory")
    n_bins = check_int(n_bins, "n_bins", minimum=16)
    if n_bins % 2:
        raise WnbError(f"n_bins must be even (got {n_bins})")
    total = _tokens(windows, max_tokens, skip_first)
    n_windows = math.ceil(total / seq_len)
    widths = [layer_weight(lm, name).shape[0] for name in layers]
    device = torch.device(lm.device)
    sketches = [sketch_bytes(d, seq_len, n_bins, spread, skip_first, n_windows, device) for d in widths]
    layer_bytes = {name: b + (feed_bytes(d) if feed_bytes else 0) for name, d, b in zip(layers, widths, sketches)}
    limit = int(0.6 * available_memory()) if max_bytes is None else check_int(max_bytes, "max_bytes")
    per_token = _activation_bytes(lm, seq_len) + 22 * max(widths)
    state = sum(layer_bytes.values())
    exact = n_windows * (seq_len - skip_first) * sum(widths) * 4
    aim = BATCH_TOKENS.get(device.type, BATCH_TOKENS["cpu"])

    def windows_per_batch(held: int) -> int:
        if batch_size is not None:
            return min(check_int(batch_size, "batch_size"), n_windows)
        room = max(limit - state - held, 0) // 2 // per_token  # half of what is left for one batch
        return max(1, min(min(aim, room) // seq_len, n_windows))

    method = wd
    if wd == "auto":
        fits = state + exact + per_token * windows_per_batch(exact) * seq_len <= limit
        method = "exact" if fits else "streaming"
    exact = exact if method == "exact" else 0
    batch = windows_per_batch(exact)
    plan = ReadPlan(tuple(layers), tuple(widths), total, seq_len, batch, math.ceil(n_windows / batch), method,
                    n_bins, bool(spread), contexts, n_samples, skip_first, state / sum(widths), layer_bytes,
                    per_token * batch * seq_len, exact, limit)
    _check_device(lm, plan, sketches)
    if plan.total_bytes > limit:
        raise WnbError(f"reading needs about {plan.total_bytes / 2**30:.2f} GiB beside the model but the limit is "
                       f"{limit / 2**30:.2f} GiB ({plan.describe()}); use fewer layers or tokens, fewer bins "
                       "(n_bins), smaller contexts, wd='streaming' or a smaller batch_size")
    return plan


def _check_device(lm, plan: ReadPlan, sketches: list[int]) -> None:
    """On a GPU the sketches and the batches live there (the contexts stay in CPU memory): refuse what its
    free memory cannot hold."""
    device = torch.device(lm.device)
    if device.type != "cuda" or lm.remote:
        return
    need = sum(sketches) + plan.batch_bytes
    free = torch.cuda.mem_get_info(device)[0]
    if need > 0.9 * free:
        raise WnbError(f"reading needs about {need / 2**30:.2f} GiB of GPU memory for its sketches and one batch "
                       f"but {free / 2**30:.2f} GiB are free on {device}; use fewer layers, fewer bins (n_bins) or a "
                       "smaller batch_size")
