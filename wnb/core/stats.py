"""Statistics of distributions used across wnb: the standard normal's density and the integrals of its
CDF (for exact and streaming Wasserstein distances), column medians, and the one standardization of a
neuron's outputs.

A constant neuron (zero or non-finite standard deviation) standardizes to NaN everywhere: it has no
shape to compare with N(0, 1), and NaN keeps it out of every ranking and tail count. Callers that must
not go on with such a neuron say so in their own words.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_SQRT_2PI = math.sqrt(2 * math.pi)


def normal_pdf(x: torch.Tensor) -> torch.Tensor:
    """φ(x), the standard normal density."""
    return torch.exp(-0.5 * x * x) / _SQRT_2PI


def normal_cdf_integral(x: torch.Tensor) -> torch.Tensor:
    """``∫_{-∞}^x Φ(t) dt = xΦ(x) + φ(x)``."""
    return x * torch.special.ndtr(x) + normal_pdf(x)


def normal_sf_integral(x: torch.Tensor) -> torch.Tensor:
    """``∫_x^∞ (1 − Φ(t)) dt = φ(x) − xΦ(−x)``."""
    return normal_pdf(x) - x * torch.special.ndtr(-x)


def median(x: torch.Tensor) -> torch.Tensor:
    """Column medians, averaging the two middle values for an even count (as numpy does)."""
    lower = x.kthvalue((x.shape[0] + 1) // 2, dim=0).values
    upper = x.kthvalue(x.shape[0] // 2 + 1, dim=0).values
    return (lower + upper) / 2


def standardize(values, reference=None, dim: int = 0):
    """``(values − mean) / std`` along ``dim`` with the population mean and std of ``reference`` (default:
    ``values`` itself); a torch tensor or a numpy array in, the same kind out (float64). Where the std is
    zero or not finite (a constant neuron) the result is NaN."""
    if isinstance(values, torch.Tensor):
        x = values.detach().double()
        ref = x if reference is None else torch.as_tensor(reference).detach().double().to(x.device)
        std, mean = torch.std_mean(ref, dim=dim, correction=0, keepdim=True)
        std = torch.where((std > 0) & torch.isfinite(std), std, torch.full_like(std, float("nan")))
        return (x - mean) / std
    x = np.asarray(values, dtype=np.float64)
    ref = x if reference is None else np.asarray(reference, dtype=np.float64)
    mean, std = ref.mean(axis=dim, keepdims=True), ref.std(axis=dim, keepdims=True)
    std = np.where((std > 0) & np.isfinite(std), std, np.nan)
    return (x - mean) / std


def r_squared(x, y) -> float:
    """R² of the least-squares line of ``y`` on ``x`` (the squared Pearson correlation), NaNs dropped."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or x[ok].std() == 0 or y[ok].std() == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1] ** 2)
