"""Entanglement as the Wasserstein distance of a neuron's standardized outputs to N(0, 1), and the top
("Wasserstein") neurons of a layer.

WD (PAPER.md §2) is computed exactly against the continuous N(0, 1), in quantile form:
``W1 = ∫_0^1 |F_n^{-1}(u) − Φ^{-1}(u)| du``. On ``u ∈ ((i−1)/n, i/n]`` the empirical quantile is the
i-th smallest standardized sample ``z_i``, and since ``d/du[−φ(Φ^{-1}(u))] = Φ^{-1}(u)`` each piece
has a closed form split at ``u* = Φ(z_i)``; where ``z_i`` does not cross ``Φ^{-1}`` inside its interval
the piece is simply ``|z_i/n − ∫Φ^{-1}|``. Sorting is done in the samples' own precision (an affine
map does not change the order), everything after it in float64.
"""
from __future__ import annotations

import numpy as np
import torch

from wnb.core.checks import check_int
from wnb.core.stats import normal_pdf
from wnb.errors import WnbError


def _quantile_grid(n: int) -> dict[str, torch.Tensor]:
    """Per interval i = 1..n of u: its ends u_lo, u_hi, the normal quantiles q_lo, q_hi there, and
    H(u) = −φ(Φ^{-1}(u)) at both ends (H(0) = H(1) = 0), each a ``[n]`` float64 vector."""
    u = torch.arange(n + 1, dtype=torch.float64) / n
    q = torch.special.ndtri(u)
    h = -normal_pdf(q)
    h[0] = h[-1] = 0.0
    return {"u_lo": u[:-1], "u_hi": u[1:], "q_lo": q[:-1], "q_hi": q[1:], "h_lo": h[:-1], "h_hi": h[1:]}



def check_samples(outputs, name: str = "outputs") -> torch.Tensor:
    """A 2-D tensor of samples ``[n_samples, n_neurons]``: torch tensors as they are, numpy arrays wrapped;
    anything else (another type, another number of dimensions, complex or boolean values) refused."""
    if isinstance(outputs, np.ndarray):
        outputs = torch.from_numpy(outputs)
    if not isinstance(outputs, torch.Tensor):
        raise WnbError(f"{name} must be a torch tensor or a numpy array [n_samples, n_neurons] "
                       f"(got {type(outputs).__name__})")
    if outputs.dim() != 2:
        raise WnbError(f"{name} must be [n_samples, n_neurons] (got shape {tuple(outputs.shape)})")
    if outputs.dtype.is_complex or outputs.dtype == torch.bool:
        raise WnbError(f"{name} must hold real numbers (got {outputs.dtype})")
    return outputs


def wasserstein_to_gaussian(outputs: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Exact W1 distance of each column's standardized distribution to N(0, 1).

    ``outputs`` is ``[n_samples, n_neurons]`` (a torch tensor on any device, or a numpy array; bfloat16
    and float16 are upcast exactly to float32); returns ``[n_neurons]`` float64. Columns with zero
    variance (constant neurons) get NaN. Work is chunked over ``chunk`` neurons so memory stays bounded.
    """
    outputs = check_samples(outputs)
    chunk = check_int(chunk, "chunk")
    n, m = outputs.shape
    if n < 2:
        raise WnbError(f"at least 2 samples are needed to standardize (got {n})")
    g = _quantile_grid(n)
    dh = g["h_hi"] - g["h_lo"]  # ∫ Φ^{-1}(u) du over each interval
    # with v = z/n − dh, z_i lies between its interval's normal quantiles iff lo_i <= v_i <= hi_i
    lo, hi = g["q_lo"] / n - dh, g["q_hi"] / n - dh
    result = torch.empty(m, dtype=torch.float64)
    for start in range(0, m, chunk):
        y = outputs[:, start:start + chunk].detach().cpu()
        if y.dtype not in (torch.float32, torch.float64):  # numpy sorts neither bfloat16 nor float16
            y = y.float() if y.dtype.is_floating_point else y.double()
        # one neuron per row; numpy's vectorized sort is several times faster than torch.sort on CPU
        y_sorted = torch.from_numpy(np.sort(y.T.contiguous().numpy(), axis=1)).double()
        std, mean = torch.std_mean(y_sorted, dim=1, correction=0, keepdim=True)
        scale = 1.0 / (std * n)
        v = torch.addcmul(-mean * scale, y_sorted, scale).sub_(dh)
        del y_sorted
        # Where z_i lies outside its interval's normal quantiles, F^{-1} − Φ^{-1} keeps one sign on the
        # interval and the piece is |z_i/n − dh_i| = |v_i|; only the few crossing pieces need Φ and φ.
        rows, cols = torch.nonzero((v >= lo) & (v <= hi), as_tuple=True)
        vc = v[rows, cols]
        zc = (vc + dh[cols]) * n
        crossing = (zc * (2 * torch.special.ndtr(zc) - g["u_lo"][cols] - g["u_hi"][cols])
                    + g["h_lo"][cols] + g["h_hi"][cols] + 2 * normal_pdf(zc))
        wd = v.abs_().sum(1)
        wd.index_add_(0, rows, crossing - vc.abs())
        std = std[:, 0]
        wd[~(std > 0) | ~torch.isfinite(std)] = float("nan")
        result[start:start + chunk] = wd
    return result


def top_neurons(scores: torch.Tensor, fraction: float = 0.03, k: int | None = None) -> torch.Tensor:
    """Indices of the highest-scoring neurons, highest first; NaN (constant) neurons are never ranked.

    ``fraction`` of the layer (paper: 3%, at least one neuron) unless ``k`` (a positive whole number) is given.
    """
    scores = torch.as_tensor(scores).double()
    if k is not None:
        k = check_int(k, "k")
    else:
        if not 0 < fraction <= 1:
            raise WnbError(f"fraction must be in (0, 1] (got {fraction})")
        k = max(1, round(fraction * scores.numel()))
    valid = torch.nonzero(~torch.isnan(scores)).flatten()
    k = min(k, valid.numel())
    order = torch.argsort(scores[valid], descending=True, stable=True)
    return valid[order[:k]]




