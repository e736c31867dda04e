"""Sparse Expansion's router: PCA of a layer's inputs to ``d_in / pca_factor`` dimensions (randomized
subspace iteration for wide layers), then k-means; each token goes to the expert of its nearest centroid
(hard top-1)."""
from __future__ import annotations

import numbers
import weakref

import torch
from torch import nn

from wnb.compression.kmeans import N_INIT, check_finite_points, kmeans, sq_distances
from wnb.core.checks import check_int
from wnb.core.tensors import tensor_version
from wnb.errors import WnbError


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
        check_finite_points(inputs, "the router")
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
        version = tensor_version(x)
        ref, last_version, labels = self._last
        if ref is not None and ref() is x and version is not None and version == last_version:
            return labels
        flat = x.reshape(-1, x.shape[-1])
        labels = sq_distances(self.project(flat), self.centroids).argmin(1)
        self._last = (weakref.ref(x), version, labels)
        return labels



def check_router_args(n_tokens: int, d_in: int, n_clusters, pca_factor) -> None:
    """Refuse a bad expert count or PCA factor before any work (raises WnbError)."""

    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral) or n_clusters < 1:
        raise WnbError(f"n_experts must be a positive integer (got {n_clusters!r}); the paper uses 16")
    n_clusters = check_int(n_clusters, "n_experts")
    if n_clusters > n_tokens:
        raise WnbError(f"n_experts={n_clusters} is more than the {n_tokens} calibration tokens; "
                       "use fewer experts or more calibration windows")
    pca_dim(d_in, pca_factor)
