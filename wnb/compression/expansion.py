"""Sparse Expansion (PAPER.md §5): a PCA + k-means router and one SparseGPT expert per cluster.

A layer's calibration inputs are reduced by PCA to ``d_in / pca_factor`` dimensions and clustered by
k-means; expert ``c`` is a copy of the dense weight pruned by SparseGPT with the Hessian of cluster
``c``'s tokens only. :class:`RoutedLayer` replaces the ``nn.Linear`` (or GPT-2 ``Conv1D``): every token
goes to the expert of its nearest centroid. ``with expanded(lm, ...)`` does this for the FFN layers of
the whole model, block by block, and puts the dense modules back on exit.

    router = Router.fit(x, n_clusters=16)            # x: [tokens, d_in] calibration inputs
    layer = expand_layer(weight, x, bias, router=router, sparsity=0.5)
    y = layer(x_new)                                 # [..., d_out]
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from wnb.compression.kmeans import N_INIT
from wnb.compression.quantize import check_quant
from wnb.compression.router import Router, check_router_args
from wnb.compression.sparsegpt import SparseGPT
from wnb.compression.sparsity import check_nm, check_weight, parse_sparsity
from wnb.core.checks import check_int
from wnb.core.memory import available_memory
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, ffn_layers, layer_bias, layer_weight
from wnb.model.lm import require_local
from wnb.model.offload import follow
from wnb.model.state import changed
from wnb.tracing.sequential import walk

# ---------------------------------------------------------------- k-means


# ---------------------------------------------------------------- router


# ---------------------------------------------------------------- experts

@dataclass
class Experts:
    weights: torch.Tensor   # [k, out, in] float32, one pruned copy of the weight per cluster
    tokens: list[int]       # calibration tokens of each cluster
    damping: list[float]    # damping SparseGPT finally used per expert (fraction of mean(diag H))


def build_experts(weight: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, n_experts: int,
                  sparsity=0.5, blocksize: int = 128, percdamp: float = 0.01, progress: bool = False,
                  desc: str = "experts", bits: int | None = None, group_size: int | None = None) -> Experts:
    """Expert ``c`` = ``weight [out, in]`` pruned by SparseGPT with the Hessian of the tokens labelled ``c``
    (and with ``bits``, quantized inside the sweep, per row or per ``group_size`` columns:
    :meth:`wnb.SparseGPT.prune`).

    A cluster with no calibration tokens (possible only when the inputs have fewer than ``n_experts``
    distinct rows) gets the layer's plain SparseGPT weight, built from all tokens. Runs on the weight's device.
    """

    bits, group_size = check_quant(bits, group_size, weight.shape[1])

    weight = weight.detach()
    inputs = inputs.to(weight.device)
    labels = labels.to(weight.device)
    stack = torch.empty(n_experts, *weight.shape, dtype=torch.float32, device=weight.device)
    tokens, damping = [], []
    for c in tqdm(range(n_experts), desc=desc, disable=not progress, leave=False):
        members = inputs[labels == c]
        sgpt = SparseGPT(weight)
        sgpt.add_batch(members if members.shape[0] else inputs)
        stack[c] = sgpt.prune(sparsity, blocksize=blocksize, percdamp=percdamp, bits=bits, group_size=group_size)
        tokens.append(int(members.shape[0]))
        damping.append(float(sgpt.damping))
    return Experts(stack, tokens, damping)


# ---------------------------------------------------------------- routed layer

class RoutedLayer(nn.Module):
    """A drop-in replacement for an ``nn.Linear`` or ``Conv1D``: each token is computed by its expert.

    ``experts [k, out, in]`` (stored in the dtype given), ``bias [out]`` or None, a :class:`Router`
    (possibly shared with a sibling layer fed the same input). Tokens are grouped by expert so each
    expert does one matmul per forward; outputs come back in the original token order.
    """

    def __init__(self, router: Router, experts: torch.Tensor, bias: torch.Tensor | None = None,
                 tokens: list[int] | None = None, damping: list[float] | None = None, dtype=None):
        super().__init__()
        if experts.dim() != 3 or experts.shape[0] != router.n_experts:
            raise WnbError(f"experts must be [k, out, in] with k = {router.n_experts} (got {tuple(experts.shape)})")
        dtype = dtype or experts.dtype
        self.router = router
        self.register_buffer("experts", experts.detach().to(dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype).clone())
        self.tokens = tokens
        self.damping = damping

    @property
    def n_experts(self) -> int:
        return self.experts.shape[0]

    @property
    def in_features(self) -> int:
        return self.experts.shape[2]

    @property
    def out_features(self) -> int:
        return self.experts.shape[1]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n_experts={self.n_experts}"

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if labels is None:
            labels = self.router.predict(x)
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=self.n_experts).tolist()
        grouped = flat[order].to(self.experts.dtype)
        # each expert's matmul writes straight into its rows of one buffer; one scatter restores the order
        buf = torch.empty(flat.shape[0], self.out_features, dtype=self.experts.dtype, device=flat.device)
        start = 0
        for c, n in enumerate(counts):
            if n:
                torch.mm(grouped[start:start + n], self.experts[c].T, out=buf[start:start + n])
            start += n
        out = torch.empty_like(buf)
        out[order] = buf
        if self.bias is not None:
            out += self.bias
        return out.reshape(*shape[:-1], self.out_features)


def expand_layer(weight: torch.Tensor, inputs: torch.Tensor, bias: torch.Tensor | None = None,
                 n_experts: int = 16, sparsity=0.5, router: Router | None = None, pca_factor=32,
                 n_init: int = N_INIT, seed: int = 0, blocksize: int = 128, percdamp: float = 0.01, dtype=None,
                 progress: bool = False, bits: int | None = None, group_size: int | None = None) -> RoutedLayer:
    """Sparse Expansion of one layer: fit a router on ``inputs [tokens, in]`` (unless given), build the experts.

    ``weight`` is ``[out, in]`` (``wnb.layer_weight``); ``inputs`` are moved to its device. ``bits``
    (2 to 8) quantizes every expert inside its SparseGPT sweep (``group_size``: per group of columns).
    """

    if weight.dim() != 2 or inputs.dim() != 2 or inputs.shape[1] != weight.shape[1]:
        raise WnbError(f"weight must be [out, in] and inputs [tokens, in] with the same in "
                       f"(got {tuple(weight.shape)} and {tuple(inputs.shape)})")
    check_weight(weight)
    _, _, m = parse_sparsity(sparsity)
    check_nm(m, weight.shape[1])
    bits, group_size = check_quant(bits, group_size, weight.shape[1])
    if router is None:
        check_router_args(inputs.shape[0], weight.shape[1], n_experts, pca_factor)
        n_experts = int(n_experts)
    inputs = inputs.to(weight.device)
    if router is None:
        router = Router.fit(inputs, n_experts, pca_factor, n_init=n_init, seed=seed)
    router = router.to(weight.device)
    experts = build_experts(weight, inputs, router.predict(inputs), router.n_experts, sparsity, blocksize,
                            percdamp, progress=progress, bits=bits, group_size=group_size)
    return RoutedLayer(router, experts.weights, bias, experts.tokens, experts.damping,
                       dtype=dtype or weight.dtype)


# ---------------------------------------------------------------- whole model

def swap_module(lm, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in the model (and in its nnsight tree); return the module it replaced."""
    parent, _, leaf = name.rpartition(".")
    old = lm.model.get_submodule(name)
    env = lm.nnsight
    if env is not None:
        for part in parent.split("."):
            env = getattr(env, part)
        setattr(env, leaf, new)
    if lm.model.get_submodule(name) is not new:
        setattr(lm.model.get_submodule(parent), leaf, new)
    follow(lm, new, lm.model.get_submodule(parent))
    if isinstance(old, RoutedLayer):
        old.router._last = (None, -1, None)
    return old


@dataclass
class Expansion:
    """What ``expanded`` built: the routed layer of every expanded layer name."""

    layers: dict[str, RoutedLayer]
    percdamp: float
    bits: int | None = None        # experts quantized to this many bits (None: full precision)
    group_size: int | None = None  # columns per quantization grid (None: one per row)

    def report(self) -> pd.DataFrame:
        """One row per layer and expert: calibration tokens, token share, damping used, whether it was raised."""
        rows = []
        for name, layer in self.layers.items():
            total = sum(layer.tokens)
            for c, (t, d) in enumerate(zip(layer.tokens, layer.damping)):
                rows.append({"layer": name, "expert": c, "tokens": t, "share": t / total, "damping": d,
                             "raised": d > self.percdamp})
        return pd.DataFrame(rows)


def shared_input_groups(inputs: dict[str, torch.Tensor]) -> list[list[str]]:
    """Group layer names whose calibration inputs are identical (Llama's gate and up): they share a router."""
    groups: list[list[str]] = []
    for name, x in inputs.items():
        for group in groups:
            if torch.equal(inputs[group[0]], x):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


def expert_bytes(lm, layers, n_experts: int) -> int:
    """Bytes the experts of ``layers`` will take (k copies of each weight, in the model's dtype)."""

    return sum(n_experts * layer_weight(lm, n).numel() * layer_weight(lm, n).element_size() for n in layers)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]

    return available_memory()


def check_expansion(lm, n_experts, sparsity, calib, layers, pca_factor, max_bytes=None, bits=None,
                    group_size=None) -> tuple[list[str], torch.Tensor]:
    """Validate a whole-model expansion before any work; return ``(layers in forward order, windows)``."""
    require_local(lm, "Sparse Expansion")
    check_quant(bits, group_size)

    if calib is None:
        raise WnbError("Sparse Expansion needs calibration windows: calib=[n_windows, seq_len] token ids "
                       "(see wnb.token_windows)")
    windows = check_windows(calib, lm)
    layers = check_layers(lm, ffn_layers(lm) if layers is None else layers)
    _, _, m = parse_sparsity(sparsity)
    for name in layers:
        d_in = layer_weight(lm, name).shape[1]
        check_router_args(windows.numel(), d_in, n_experts, pca_factor)
        check_nm(m, d_in, name)
        check_quant(bits, group_size, d_in, name)
        check_weight(layer_weight(lm, name), f"the weight of {name}")
    need = expert_bytes(lm, layers, n_experts)
    limit = int(0.6 * _free_bytes(lm.device)) if max_bytes is None else max_bytes
    if need > limit:
        raise WnbError(f"{n_experts} experts for {len(layers)} layer(s) need about {need / 2**30:.2f} GiB but the "
                       f"limit is {limit / 2**30:.2f} GiB; use fewer experts or expand fewer layers (layers=...)")
    return layers, windows


@contextmanager
def expanded(lm, n_experts: int = 16, sparsity=0.5, calib=None, layers=None, pca_factor=32, n_init: int = N_INIT,
             seed: int = 0, blocksize: int = 128, percdamp: float = 0.01, batch_size: int = 8,
             max_bytes: int | None = None, progress: bool = True, true_sequential: bool = True,
             bits: int | None = None, group_size: int | None = None):
    """Sparse Expansion of the FFN layers (or ``layers``) for the duration of a ``with`` block.

    Block by block (calibration inputs of block l come from the already expanded blocks < l, and with
    ``true_sequential`` from the block's already expanded layers: down_proj's router and experts see
    the expanded gate and up projections' outputs; see ``wnb.walk``), each layer
    gets a router fitted on its inputs (layers fed the same input share one) and ``n_experts`` SparseGPT
    experts at ``sparsity`` (a fraction or ``"N:M"``), with ``bits`` (2 to 8) quantized inside their
    SparseGPT sweeps (per row, or per ``group_size`` columns). Yields an :class:`Expansion`. On exit, also
    after an error or an interrupt, the dense modules are put back: the model is bit for bit what it was.
    """

    layers, windows = check_expansion(lm, n_experts, sparsity, calib, layers, pca_factor, max_bytes, bits,
                                      group_size)
    bits, group_size = check_quant(bits, group_size)
    n_experts = check_int(n_experts, "n_experts")
    batch_size = check_int(batch_size, "batch_size")
    with changed(lm, f"Sparse Expansion ({n_experts} experts)"):  # holds the model until the dense modules are back
        swapped: dict[str, nn.Module] = {}
        routed: dict[str, RoutedLayer] = {}
        try:
            bar = tqdm(total=len(layers) * n_experts, desc=f"Sparse Expansion, {n_experts} experts",
                       disable=not progress, leave=False)
            for _, inputs in walk(lm, windows, layers, batch_size=batch_size, progress=progress,
                                  true_sequential=true_sequential):
                for group in shared_input_groups(inputs):
                    x = inputs[group[0]].to(lm.device)
                    router = Router.fit(x, n_experts, pca_factor, n_init=n_init, seed=seed)
                    labels = router.predict(x)
                    for name in group:
                        weight = layer_weight(lm, name)
                        experts = build_experts(weight, x, labels, n_experts, sparsity, blocksize, percdamp,
                                                bits=bits, group_size=group_size)
                        routed[name] = RoutedLayer(router, experts.weights, layer_bias(lm, name), experts.tokens,
                                                   experts.damping, dtype=weight.dtype)
                        del experts
                        swapped[name] = swap_module(lm, name, routed[name])
                        bar.update(n_experts)
                del inputs
            bar.close()
            yield Expansion(routed, percdamp, bits, group_size)
        finally:
            for name in reversed(list(swapped)):
                swap_module(lm, name, swapped[name])


def routed_layers(lm) -> dict:
    """The routed (expanded) layers in the model now, by name."""
    return {n: m for n, m in lm.model.named_modules() if isinstance(m, RoutedLayer)}
