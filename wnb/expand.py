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

import math
import numbers

import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from wnb.errors import WnbError
from wnb.model.offload import follow
from wnb.model.state import changed

N_INIT = 10  # k-means restarts (greedy k-means++); the authors use 100: benchmarks/bench_kmeans.py


# ---------------------------------------------------------------- k-means

@dataclass
class KMeansResult:
    centroids: torch.Tensor  # [k, d] float32
    labels: torch.Tensor     # [n] long
    inertia: float           # sum of squared distances to the assigned centroids
    n_iter: int


def _sq_distances(x: torch.Tensor, centroids: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances ``[n, k]`` (clamped at 0 against rounding); ``x_sq`` = ‖x‖² ``[n, 1]``."""
    if x_sq is None:
        x_sq = (x * x).sum(1, keepdim=True)
    return torch.addmm(x_sq + (centroids * centroids).sum(1), x, centroids.T, alpha=-2).clamp_min_(0)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator, trials: int = 1) -> torch.Tensor:
    """k-means++ seeding: each next centroid is drawn with probability proportional to D².

    ``trials > 1`` is greedy k-means++ (as scikit-learn): that many candidates are drawn for each new
    centroid and the one that lowers the summed D² most is kept. Uniform numbers come from a CPU
    generator, so the draw is the same on every device.
    """
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = [x[first]]
    closest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        weights = closest.double().cumsum(0)
        u = torch.rand(trials, generator=gen, dtype=torch.float64)
        if weights[-1] > 0:
            idx = torch.searchsorted(weights, (u * weights[-1]).to(weights.device), right=True).clamp_max(n - 1)
        else:  # every point already coincides with a centroid: any point will do
            idx = (u * n).long() % n
        candidates = x[idx.to(x.device)]
        reach = torch.minimum(closest[None], _sq_distances(x, candidates).T)  # [trials, n]
        best = int(reach.double().sum(1).argmin())
        centroids.append(candidates[best])
        closest = reach[best]
    return torch.stack(centroids)


def greedy_trials(k: int) -> int:
    """Candidates per new centroid in greedy k-means++: scikit-learn's 2 + ⌊ln k⌋."""
    return 2 + int(math.log(k))


def _fill_empty(x, labels, centroids, dist, counts):
    """Move each empty cluster's centroid onto the point farthest from its own centroid."""
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return
    own = dist.gather(1, labels[:, None]).squeeze(1)
    far = torch.argsort(own, descending=True, stable=True)[:len(empty)]
    for c, idx in zip(empty, far.tolist()):
        centroids[c] = x[idx]
        counts[labels[idx]] -= 1
        labels[idx] = c
        counts[c] = 1


def _lloyd(x, centroids, max_iter: int, tol: float) -> KMeansResult:
    """Lloyd iterations until the centroids move less than ``tol`` (squared, summed)."""
    k = centroids.shape[0]
    centroids = centroids.clone()
    x_sq = (x * x).sum(1, keepdim=True)
    classes = torch.arange(k, device=x.device)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        dist = _sq_distances(x, centroids, x_sq)
        labels = dist.argmin(1)
        counts = torch.bincount(labels, minlength=k)
        _fill_empty(x, labels, centroids, dist, counts)
        sums = (labels[None] == classes[:, None]).to(x.dtype) @ x  # one matmul instead of a scatter
        new = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        shift = float(((new - centroids) ** 2).sum())
        centroids = new
        if shift <= tol:
            break
    dist = _sq_distances(x, centroids, x_sq)
    labels = dist.argmin(1)
    inertia = float(dist.gather(1, labels[:, None]).sum())
    return KMeansResult(centroids, labels, inertia, n_iter)


def kmeans(x: torch.Tensor, k: int, n_init: int = N_INIT, max_iter: int = 300, tol: float = 1e-4, seed: int = 0,
           init: torch.Tensor | None = None, greedy: bool = True) -> KMeansResult:
    """k-means on the rows of ``x`` ``[n, d]`` (on ``x``'s device), best of ``n_init`` k-means++ restarts.

    ``greedy`` seeds with greedy k-means++ (``greedy_trials(k)`` candidates per centroid) and stops
    after at most ``max_iter`` Lloyd iterations, as scikit-learn; ``greedy=False, max_iter=100`` is
    wnb's earlier plain seeding. The authors' code keeps the best of ``n_init=100`` restarts
    (``benchmarks/bench_kmeans.py`` compares the inertia each setting reaches).

    ``tol`` is relative to the mean per-feature variance of ``x`` (as in scikit-learn). ``init``
    ``[k, d]`` replaces the k-means++ seeding (one run). Clusters left empty in an iteration take the
    point farthest from its centroid, so every cluster ends non-empty when ``x`` has ``k`` distinct rows.
    Complex ``x`` and ``x`` holding NaN or infinite values are refused (WnbError).
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise WnbError(f"k-means needs a non-empty [n, d] tensor (got shape {tuple(x.shape)})")
    _check_finite_points(x, "k-means")
    if not 1 <= k <= x.shape[0]:
        raise WnbError(f"k-means needs 1 <= k <= number of points (got k={k}, {x.shape[0]} points)")
    if n_init < 1 or max_iter < 1:
        raise WnbError(f"n_init and max_iter must be at least 1 (got {n_init}, {max_iter})")
    x = x.float()
    abs_tol = tol * float(x.var(0, correction=0).mean()) if x.shape[0] > 1 else 0.0
    if init is not None:
        if init.shape != (k, x.shape[1]):
            raise WnbError(f"init must be [k, d] = [{k}, {x.shape[1]}] (got {tuple(init.shape)})")
        _check_finite_points(init, "k-means init")
        return _lloyd(x, init.to(x), max_iter, abs_tol)
    gen = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        result = _lloyd(x, _kmeans_pp(x, k, gen, greedy_trials(k) if greedy else 1), max_iter, abs_tol)
        if best is None or result.inertia < best.inertia:
            best = result
    return best


def _check_finite_points(x: torch.Tensor, what: str) -> None:
    """Refuse complex points or points holding NaN or infinite values (their distances are NaN: every
    label would be 0 and the centroids NaN)."""
    if x.is_complex():
        raise WnbError(f"{what} needs real-valued points (got {str(x.dtype).removeprefix('torch.')})")
    finite = torch.isfinite(x)
    if not finite.all():
        rows = int((~finite).any(1).sum())
        raise WnbError(f"{what} needs finite points, but {rows:,} of the {x.shape[0]:,} rows hold NaN or infinite "
                       "values; drop those rows or fix the activations that produced them")


# ---------------------------------------------------------------- router

def pca_dim(d_in: int, pca_factor) -> int | None:
    """Number of PCA dimensions for an input width, or None for no PCA; bad factors raise WnbError."""
    if pca_factor is None:
        return None
    if isinstance(pca_factor, bool) or not isinstance(pca_factor, (int, float)) or not pca_factor > 0:
        raise WnbError(f"pca_factor must be a positive number or None for no PCA (got {pca_factor!r})")
    dim = int(d_in // pca_factor)
    if not 1 <= dim < d_in:
        raise WnbError(f"pca_factor={pca_factor} gives {dim} PCA dimensions for inputs of width {d_in}; "
                       f"it must give between 1 and {d_in - 1} (pca_factor in (1, {d_in}]), or use None for no PCA")
    return dim


def _pca(x: torch.Tensor, dim: int, seed: int = 0, n_iter: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[d_in]`` and the top ``dim`` principal directions ``[d_in, dim]`` of ``x``.

    The covariance is formed once; its top eigenvectors come from a full ``eigh`` when the input is
    narrow, else from seeded randomized subspace iteration (``dim + oversample`` columns, ``n_iter`` power
    steps, then ``eigh`` of the small projected matrix), which avoids an O(d_in³) decomposition of wide
    layers. Each direction's sign is fixed so that its largest-magnitude entry is positive.
    """
    mean = x.mean(0)
    xc = x - mean
    cov = (xc.T @ xc).double() / x.shape[0]
    d = cov.shape[0]
    width = dim + max(10, dim // 2)
    if width >= d // 2:
        _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
        comps = vectors[:, -dim:].flip(1)
    else:
        gen = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(cov @ torch.randn(d, width, generator=gen, dtype=torch.float64).to(cov.device)).Q
        for _ in range(n_iter):
            q = torch.linalg.qr(cov @ q).Q
        _, small = torch.linalg.eigh(q.T @ cov @ q)
        comps = (q @ small)[:, -dim:].flip(1)
    pivot = comps.abs().argmax(0)
    signs = torch.sign(comps[pivot, torch.arange(dim, device=comps.device)])
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    return mean, comps.float()


class Router(nn.Module):
    """Sends each token to the nearest k-means centroid of its PCA projection (hard top-1).

    Buffers: ``mean [d_in]``, ``components [d_in, d]`` (None when there is no PCA) and
    ``centroids [k, d]``, all float32.
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor | None, centroids: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("components", None if components is None else components.float())
        self.register_buffer("centroids", centroids.float())
        self._last = (None, -1, None)  # (weakref to input, its version, labels): gate/up share one routing

    @property
    def n_experts(self) -> int:
        return self.centroids.shape[0]

    @classmethod
    def fit(cls, inputs: torch.Tensor, n_clusters: int = 16, pca_factor=32, n_init: int = N_INIT,
            max_iter: int = 300, seed: int = 0) -> "Router":
        """PCA to ``d_in // pca_factor`` dims (``None``: none), then seeded k-means, on ``inputs``' device.
        Inputs holding NaN or infinite values are refused (WnbError)."""
        check_router_args(inputs.shape[0], inputs.shape[1], n_clusters, pca_factor)
        _check_finite_points(inputs, "the router")
        x = inputs.float()
        dim = pca_dim(x.shape[1], pca_factor)
        if dim is None:
            mean, comps = torch.zeros(x.shape[1], device=x.device), None
            z = x
        else:
            mean, comps = _pca(x, dim, seed=seed)
            z = (x - mean) @ comps
        result = kmeans(z, n_clusters, n_init=n_init, max_iter=max_iter, seed=seed)
        return cls(mean, comps, result.centroids)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[n, d_in]`` in the router's space ``[n, d]`` (float32)."""
        x = x.float()
        return x if self.components is None else (x - self.mean) @ self.components

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Expert index of every token of ``x [..., d_in]`` (long ``[n]``, tokens flattened): the nearest centroid.

        The last input and its labels are remembered, so layers sharing this router and fed the very same
        tensor (Llama's gate and up projections) route it once.
        """
        version = _version(x)
        ref, last_version, labels = self._last
        if ref is not None and ref() is x and version is not None and version == last_version:
            return labels
        flat = x.reshape(-1, x.shape[-1])
        labels = _sq_distances(self.project(flat), self.centroids).argmin(1)
        self._last = (weakref.ref(x), version, labels)
        return labels


def _version(x: torch.Tensor) -> int | None:
    """The tensor's in-place modification counter (None for inference-mode tensors, which have none)."""
    try:
        return x._version
    except RuntimeError:
        return None


def check_router_args(n_tokens: int, d_in: int, n_clusters, pca_factor) -> None:
    """Refuse a bad expert count or PCA factor before any work (raises WnbError)."""
    from wnb.core.checks import check_int

    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral) or n_clusters < 1:
        raise WnbError(f"n_experts must be a positive integer (got {n_clusters!r}); the paper uses 16")
    n_clusters = check_int(n_clusters, "n_experts")
    if n_clusters > n_tokens:
        raise WnbError(f"n_experts={n_clusters} is more than the {n_tokens} calibration tokens; "
                       "use fewer experts or more calibration windows")
    pca_dim(d_in, pca_factor)


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
    from wnb.prune import SparseGPT
    from wnb.quantize import check_quant

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
    from wnb.prune import check_nm, check_weight, parse_sparsity
    from wnb.quantize import check_quant

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
    from wnb.model.architectures import layer_weight

    return sum(n_experts * layer_weight(lm, n).numel() * layer_weight(lm, n).element_size() for n in layers)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    from wnb.core.memory import available_memory

    return available_memory()


def check_expansion(lm, n_experts, sparsity, calib, layers, pca_factor, max_bytes=None, bits=None,
                    group_size=None) -> tuple[list[str], torch.Tensor]:
    """Validate a whole-model expansion before any work; return ``(layers in forward order, windows)``."""
    from wnb.data.windows import check_windows
    from wnb.model.architectures import check_layers, ffn_layers, layer_weight
    from wnb.prune import check_nm, check_weight, parse_sparsity
    from wnb.quantize import check_quant

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
    from wnb.quantize import check_quant

    from wnb.model.architectures import layer_bias, layer_weight
    from wnb.tracing.sequential import walk

    from wnb.core.checks import check_int

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
