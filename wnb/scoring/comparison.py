"""Dense against approximate outputs of a layer, neuron by neuron: the RMSE (and RMSE over the dense
std) on the same tokens, and the Wasserstein-1 shift between the two output distributions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from wnb.errors import WnbError


def _check_pair(dense: torch.Tensor, approx: torch.Tensor, same_tokens: bool = True) -> None:

    if dense.dim() != 2 or approx.dim() != 2 or dense.shape[1] != approx.shape[1] or \
            (same_tokens and dense.shape[0] != approx.shape[0]):
        need = "the same shape [tokens, n_neurons]" if same_tokens else "[tokens, n_neurons] with the same n_neurons"
        raise WnbError(f"dense and approximate outputs must have {need}; got {tuple(dense.shape)} and "
                       f"{tuple(approx.shape)}")
    if dense.shape[0] == 0 or approx.shape[0] == 0:
        raise WnbError("no tokens to compare")


def output_rmse(dense: torch.Tensor, approx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron RMSE of ``approx`` against ``dense`` outputs on the same tokens, and RMSE / std(dense).

    Both ``[n_neurons]`` float64; the relative error is NaN for constant dense neurons.
    """
    _check_pair(dense, approx)
    d = dense.double()
    rmse = (approx.double() - d).square().mean(0).sqrt()
    std = d.std(0, correction=0)
    rel = torch.where(std > 0, rmse / std, torch.full_like(rmse, float("nan")))
    return rmse.cpu(), rel.cpu()


def output_shift(dense: torch.Tensor, approx: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Per-neuron Wasserstein-1 distance between the dense and the approximate output distributions.

    ``∫ |F_dense − F_approx|`` of the raw (unstandardized) outputs; the two may have different token
    counts. Returns ``[n_neurons]`` float64.
    """
    _check_pair(dense, approx, same_tokens=False)
    n_a, n_b = dense.shape[0], approx.shape[0]
    result = torch.empty(dense.shape[1], dtype=torch.float64)
    for start in range(0, dense.shape[1], chunk):
        a = torch.sort(dense[:, start:start + chunk].double().T.contiguous(), dim=1).values
        b = torch.sort(approx[:, start:start + chunk].double().T.contiguous(), dim=1).values
        both = torch.sort(torch.cat([a, b], dim=1), dim=1).values
        at = both[:, :-1].contiguous()
        cdf_a = torch.searchsorted(a, at, right=True).double() / n_a
        cdf_b = torch.searchsorted(b, at, right=True).double() / n_b
        result[start:start + chunk] = ((cdf_a - cdf_b).abs() * both.diff(dim=1)).sum(1).cpu()
    return result


def neuron_errors(dense: torch.Tensor, approx: torch.Tensor):
    """One row per neuron: ``rmse``, ``rel_rmse`` (RMSE / dense std) and ``shift`` (W1 between the dense
    and approximate output distributions), for outputs ``[tokens, n_neurons]`` on the same held-out tokens."""

    rmse, rel = output_rmse(dense, approx)
    return pd.DataFrame({"neuron": np.arange(dense.shape[1]), "rmse": rmse.numpy(), "rel_rmse": rel.numpy(),
                         "shift": output_shift(dense, approx).numpy()})
