"""Choosing neurons of a layer: the one selector, by WD, at random, by output mean, by variance or by
weight norm (the paper's Fig. 3 criteria)."""
from __future__ import annotations

import torch

from wnb.errors import WnbError
from wnb.scoring.wasserstein import top_neurons, wasserstein_to_gaussian

CRITERIA = ("wd", "random", "mean", "variance", "weight_norm")


def select_neurons(criterion: str, outputs: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                   fraction: float = 0.03, k: int | None = None, seed: int = 0) -> torch.Tensor:
    """Indices of ``fraction`` of a layer's neurons (at least one; ``k`` overrides), chosen by:

    ``"wd"`` highest Wasserstein distance to a Gaussian of the outputs, ``"random"`` uniformly (seeded),
    ``"mean"`` largest absolute output mean, ``"variance"`` largest output variance, ``"weight_norm"``
    largest L2 norm of the weight row. ``outputs`` is ``[tokens, n_neurons]``; ``weight`` ``[out, in]``.
    Highest score first (random: in drawn order).
    """

    if criterion not in CRITERIA:
        raise WnbError(f"unknown neuron selection {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion == "weight_norm":
        if weight is None:
            raise WnbError("selecting by weight norm needs the layer's weight")
        n_neurons = weight.shape[0]
    else:
        if outputs is None and criterion != "random":
            raise WnbError(f"selecting neurons by {criterion!r} needs the layer's outputs [tokens, n_neurons]")
        n_neurons = outputs.shape[1] if outputs is not None else weight.shape[0] if weight is not None else None
        if n_neurons is None:
            raise WnbError("random selection needs the layer's outputs or weight to know the number of neurons")
    if k is None:
        if not 0 < fraction <= 1:
            raise WnbError(f"fraction must be in (0, 1] (got {fraction})")
        k = max(1, round(fraction * n_neurons))
    if not 1 <= k <= n_neurons:
        raise WnbError(f"k must be between 1 and the number of neurons ({n_neurons}); got {k}")
    if criterion == "random":
        return torch.randperm(n_neurons, generator=torch.Generator().manual_seed(int(seed)))[:k]
    if criterion == "wd":
        scores = wasserstein_to_gaussian(outputs)
    elif criterion == "weight_norm":
        scores = torch.linalg.vector_norm(weight.detach().double().cpu(), dim=1)
    elif criterion == "mean":
        scores = outputs.double().mean(0).abs().cpu()
    else:
        scores = outputs.double().var(0, correction=0).cpu()
    return top_neurons(scores, k=k)
