"""Choosing neurons of a layer, in one place: by WD, at random, by output mean, by variance or by weight
norm (the paper's Fig. 3 criteria, :func:`select_neurons`), and the follow-up's selections over many
layers — the Wasserstein neurons, random neurons of the same count per layer, and the candidates and
draws of a matched control."""
from __future__ import annotations

from typing import Mapping

import torch

from wnb.errors import WnbError
from wnb.model.architectures import check_layers, layer_weight
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


MATCHED_EXCLUDE = 0.10  # the matched control draws from outside the top 10% of each layer by WD
POOLS = {"outside": "neurons outside the top 10% by WD, in a seeded random order",
         "bottom": "the lowest WD first (the authors' location=\"bottom\")"}
"""Where the perplexity-matched control takes its neurons (:func:`matched_candidates`)."""


def check_fraction(fraction: float) -> float:
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise WnbError(f"fraction must be in (0, 1), the share of each layer's neurons (got {fraction!r}); "
                       "the follow-up uses 0.01")
    return float(fraction)


def check_scores(lm, scores, layers=None) -> dict[str, torch.Tensor]:

    if not isinstance(scores, Mapping) or not scores:
        raise WnbError("scores must be {layer: WD per neuron}, as wnb.wasserstein_scores returns")
    names = check_layers(lm, list(scores) if layers is None else layers)
    missing = [n for n in names if n not in scores]
    if missing:
        raise WnbError(f"scores has no WD for {missing}; compute them with wnb.wasserstein_scores(lm, calib, layers)")
    out = {}
    for name in names:
        wd = torch.as_tensor(scores[name]).double().flatten()
        if wd.numel() != layer_weight(lm, name).shape[0]:
            raise WnbError(f"scores[{name!r}] has {wd.numel()} entries but the layer has "
                           f"{layer_weight(lm, name).shape[0]} neurons")
        out[name] = wd
    return out


def select_wasserstein(scores: Mapping, fraction: float = 0.01) -> dict[str, torch.Tensor]:
    """The Wasserstein neurons: the top ``fraction`` of each layer by WD (at least one), highest first."""

    check_fraction(fraction)
    return {name: top_neurons(torch.as_tensor(wd), fraction=fraction) for name, wd in scores.items()}


def select_random(scores: Mapping, counts: Mapping, seed: int = 0) -> dict[str, torch.Tensor]:
    """``counts[layer]`` neurons per layer drawn uniformly from all of the layer's neurons (seeded; the
    draw may include Wasserstein neurons, as in the follow-up's random control)."""
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, wd in scores.items():
        n = torch.as_tensor(wd).numel()
        k = int(counts.get(name, 0))
        if not 0 <= k <= n:
            raise WnbError(f"cannot draw {k} of the {n} neurons of {name}")
        out[name] = torch.randperm(n, generator=gen)[:k]
    return out


def check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise WnbError(f"unknown pool {pool!r} for the matched control; choose from "
                       + "; ".join(f"{k} ({v})" for k, v in POOLS.items()))
    return pool


def matched_candidates(scores: Mapping, exclude: float = MATCHED_EXCLUDE, seed: int = 0,
                       pool: str = "outside") -> dict[str, torch.Tensor]:
    """Per layer, its ranked neurons outside the top ``exclude`` by WD, in the order the perplexity-matched
    control takes a prefix of each (:func:`select_matched`): ``pool="outside"`` a seeded random order,
    ``"bottom"`` the lowest WD first (the follow-up's only non-Wasserstein selector; ``seed`` unused)."""

    if not 0 < exclude < 1:
        raise WnbError(f"exclude must be in (0, 1) (got {exclude})")
    check_pool(pool)
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, wd in scores.items():
        wd = torch.as_tensor(wd).double()
        ranked = top_neurons(wd, k=wd.numel())  # every non-constant neuron, highest WD first
        top = max(1, round(exclude * wd.numel()))
        rest = ranked[top:]
        out[name] = rest.flip(0) if pool == "bottom" else rest[torch.randperm(rest.numel(), generator=gen)]
    return out


def wd_ranks(scores: Mapping, selection: Mapping) -> torch.Tensor:
    """The rank by WD in its layer (1 = highest; constant neurons last) of every neuron of ``selection``
    (``{layer: indices}``), all layers together."""
    ranks = []
    for name, idx in selection.items():
        wd = torch.nan_to_num(torch.as_tensor(scores[name]).double(), nan=-torch.inf)
        order = torch.argsort(wd, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(1, wd.numel() + 1)
        ranks.append(rank[torch.as_tensor(idx, dtype=torch.long)])
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)


def select_matched(candidates: Mapping, count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` candidates of the widest pool and the same share of every other pool."""
    widest = max(c.numel() for c in candidates.values())
    count = max(0, min(int(count), widest))
    return {name: c[:min(c.numel(), round(count * c.numel() / widest))] for name, c in candidates.items()}


def count_per_layer(selection: Mapping) -> int:
    return int(sum(idx.numel() for idx in selection.values()))


CONTROLS = ("random", "matched", "mirror", "variance", "tokens", "positions")
"""The sign study's controls: ``random`` (same count per layer, per seed), ``matched`` (as many non-Wasserstein
neurons as it takes to cost the same perplexity), ``mirror`` (the Wasserstein neurons themselves with the other
side clamped: the test of sign specificity), and one twin per Wasserstein neuron from outside the top 10%:
``variance`` (the closest output variance), ``tokens`` (tails on the same tokens), ``positions`` (tails at the
same positions in the window); :mod:`wnb.scoring.controls`."""
DEFAULT_CONTROLS = ("random", "matched", "mirror")
SEEDED_CONTROLS = ("random", "matched")  # a row per seed; the mirror and the twins have none
