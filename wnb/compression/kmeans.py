"""k-means for Sparse Expansion's router: greedy k-means++ seeding (scikit-learn's), Lloyd iterations,
the best of several seeded restarts, empty clusters refilled; on the points' own device."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wnb.errors import WnbError

N_INIT = 10  # k-means restarts (greedy k-means++); the authors use 100: benchmarks/bench_kmeans.py


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # [k, d] float32
    labels: torch.Tensor     # [n] long
    inertia: float           # sum of squared distances to the assigned centroids
    n_iter: int


def sq_distances(x: torch.Tensor, centroids: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
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
        reach = torch.minimum(closest[None], sq_distances(x, candidates).T)  # [trials, n]
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
        dist = sq_distances(x, centroids, x_sq)
        labels = dist.argmin(1)
        counts = torch.bincount(labels, minlength=k)
        _fill_empty(x, labels, centroids, dist, counts)
        sums = (labels[None] == classes[:, None]).to(x.dtype) @ x  # one matmul instead of a scatter
        new = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        shift = float(((new - centroids) ** 2).sum())
        centroids = new
        if shift <= tol:
            break
    dist = sq_distances(x, centroids, x_sq)
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
    check_finite_points(x, "k-means")
    if not 1 <= k <= x.shape[0]:
        raise WnbError(f"k-means needs 1 <= k <= number of points (got k={k}, {x.shape[0]} points)")
    if n_init < 1 or max_iter < 1:
        raise WnbError(f"n_init and max_iter must be at least 1 (got {n_init}, {max_iter})")
    x = x.float()
    abs_tol = tol * float(x.var(0, correction=0).mean()) if x.shape[0] > 1 else 0.0
    if init is not None:
        if init.shape != (k, x.shape[1]):
            raise WnbError(f"init must be [k, d] = [{k}, {x.shape[1]}] (got {tuple(init.shape)})")
        check_finite_points(init, "k-means init")
        return _lloyd(x, init.to(x), max_iter, abs_tol)
    gen = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        result = _lloyd(x, _kmeans_pp(x, k, gen, greedy_trials(k) if greedy else 1), max_iter, abs_tol)
        if best is None or result.inertia < best.inertia:
            best = result
    return best


def check_finite_points(x: torch.Tensor, what: str) -> None:
    """Refuse complex points or points holding NaN or infinite values (their distances are NaN: every
    label would be 0 and the centroids NaN)."""
    if x.is_complex():
        raise WnbError(f"{what} needs real-valued points (got {str(x.dtype).removeprefix('torch.')})")
    finite = torch.isfinite(x)
    if not finite.all():
        rows = int((~finite).any(1).sum())
        raise WnbError(f"{what} needs finite points, but {rows:,} of the {x.shape[0]:,} rows hold NaN or infinite "
                       "values; drop those rows or fix the activations that produced them")
