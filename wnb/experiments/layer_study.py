"""The paper's Sparse Expansion analyses (PAPER.md §5, Fig. 1f, 5, 7, 9), as tables and tensors.

A :class:`LayerStudy` holds one layer's dense weight, its calibration and held-out inputs (captured from
the dense model), its plain SparseGPT weight and its expansion. The functions below read from it:

    study = wnb.study_layer(lm, "model.layers.1.mlp.gate_proj", calib, held_out, n_experts=16, sparsity=0.9)
    table = wnb.relative_improvement(study)          # per neuron: WD, mean, variance, RMSEs, RI
    wnb.ri_regression(table)                         # RI against WD / mean / variance: slope, R², Spearman
    wnb.expert_outputs(study, neuron=2402)           # one neuron's outputs, per expert (long form)
    wnb.token_shares(study)                          # each expert's share of the tokens
    wnb.entanglement_change(study, neurons=top)      # WD and MD before vs after (token-share weighted)
    wnb.expansion_sweep(lm, calib, held_out)         # perplexity and layer error over k and sparsity
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from wnb.compression.expansion import RoutedLayer, expand_layer
from wnb.compression.kmeans import N_INIT
from wnb.compression.prune import prune_weight
from wnb.compression.quantize import check_quant
from wnb.compression.router import check_router_args
from wnb.compression.sparsity import check_nm, parse_sparsity
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import (
    check_layers,
    layer_bias,
    layer_outputs,
    layer_weight,
)
from wnb.scoring.comparison import output_rmse
from wnb.scoring.mapping import mapping_difficulty
from wnb.scoring.tables import output_moments
from wnb.scoring.wasserstein import wasserstein_to_gaussian
from wnb.tracing.capture import capture


@dataclass
class LayerStudy:
    """One layer, dense vs SparseGPT vs Sparse Expansion. Tensors are float32 on the CPU."""

    layer: str
    weight: torch.Tensor          # dense [out, in]
    bias: torch.Tensor | None
    calib_inputs: torch.Tensor    # [tokens, in] the router and the experts were built from
    held_inputs: torch.Tensor     # [tokens, in] held-out
    sparsegpt: torch.Tensor       # plain SparseGPT of the layer [out, in]
    expansion: RoutedLayer
    sparsity: object

    def outputs(self, which: str = "dense", on: str = "held_out") -> torch.Tensor:
        """``[tokens, out]`` outputs of ``"dense"``, ``"sparsegpt"`` or ``"expansion"`` on ``"held_out"`` or ``"calib"``."""
        x = _inputs(self, on)
        with torch.no_grad():
            if which == "expansion":
                return self.expansion(x).float()
            weights = {"dense": self.weight, "sparsegpt": self.sparsegpt}
            if which not in weights:
                raise WnbError(f"unknown outputs {which!r}; choose dense, sparsegpt or expansion")
            return layer_outputs(x, weights[which], self.bias)

    def labels(self, on: str = "held_out") -> torch.Tensor:
        """Expert of every token."""
        return self.expansion.router.predict(_inputs(self, on))


def _inputs(study: LayerStudy, on: str) -> torch.Tensor:
    if on not in ("held_out", "calib"):
        raise WnbError(f"on must be 'held_out' or 'calib' (got {on!r})")
    return study.held_inputs if on == "held_out" else study.calib_inputs


def study_layer(lm, layer: str, calib, held_out, n_experts: int = 16, sparsity=0.5, pca_factor=32,
                n_init: int = N_INIT, seed: int = 0, blocksize: int = 128, percdamp: float = 0.01,
                max_tokens: int | None = None, progress: bool = True, bits: int | None = None,
                group_size: int | None = None) -> LayerStudy:
    """Capture ``layer``'s inputs on ``calib`` and ``held_out`` from the dense model, prune it with SparseGPT
    and expand it into ``n_experts`` experts at ``sparsity`` (both quantized with ``bits`` / ``group_size``
    when given). The model is not changed."""

    (layer,) = check_layers(lm, [layer])
    weight = layer_weight(lm, layer).detach().to("cpu", torch.float32)
    calib, held_out = check_windows(calib, lm), check_windows(held_out, lm)
    n_calib = calib.numel() if max_tokens is None else min(calib.numel(), max_tokens)
    check_router_args(n_calib, weight.shape[1], n_experts, pca_factor)
    _, _, m = parse_sparsity(sparsity)
    check_nm(m, weight.shape[1], layer)
    bits, group_size = check_quant(bits, group_size, weight.shape[1], layer)
    x_calib = capture(lm, [layer], calib, max_tokens=max_tokens, outputs=False, progress=progress)[layer].inputs
    x_held = capture(lm, [layer], held_out, max_tokens=max_tokens, outputs=False, progress=progress)[layer].inputs
    bias = layer_bias(lm, layer)
    bias = None if bias is None else bias.detach().to("cpu", torch.float32)
    pruned = prune_weight(weight, x_calib, "sparsegpt", sparsity, blocksize=blocksize, percdamp=percdamp, bits=bits,
                          group_size=group_size)
    routed = expand_layer(weight, x_calib, bias, n_experts, sparsity, pca_factor=pca_factor, n_init=n_init, seed=seed,
                          blocksize=blocksize, percdamp=percdamp, dtype=torch.float32, progress=progress, bits=bits,
                          group_size=group_size)
    return LayerStudy(layer, weight, bias, x_calib, x_held, pruned, routed, sparsity)


# ---------------------------------------------------------------- errors and RI (Fig. 7)

def relative_improvement(study: LayerStudy) -> pd.DataFrame:
    """One row per neuron: WD, output mean and variance of the dense outputs on the calibration tokens,
    held-out RMSE against the dense outputs of SparseGPT and of the expansion, and
    ``ri = rmse_sparsegpt / rmse_expansion`` (NaN where the expansion's error is 0)."""

    dense_calib = study.outputs("dense", "calib")
    dense = study.outputs("dense")
    err_sgpt, _ = output_rmse(dense, study.outputs("sparsegpt"))
    err_exp, _ = output_rmse(dense, study.outputs("expansion"))
    ri = torch.where(err_exp > 0, err_sgpt / err_exp, torch.full_like(err_exp, float("nan")))
    variance, mean = output_moments(dense_calib)
    return pd.DataFrame({"neuron": np.arange(dense.shape[1]), "wd": wasserstein_to_gaussian(dense_calib).numpy(),
                         "mean": mean.numpy(), "variance": variance.numpy(),
                         "rmse_sparsegpt": err_sgpt.numpy(), "rmse_expansion": err_exp.numpy(), "ri": ri.numpy()})


def ri_regression(table: pd.DataFrame, predictors=("wd", "mean", "variance"), target: str = "ri") -> pd.DataFrame:
    """Least-squares line of ``target`` on each predictor over the neurons: slope, intercept, R², and the
    Spearman rank correlation with its p-value. Rows with NaN are left out."""
    from scipy import stats

    rows = []
    for name in predictors:
        if name not in table or target not in table:
            raise WnbError(f"the table has no column {name if name not in table else target!r}; "
                           f"columns: {', '.join(table.columns)}")
        pair = table[[name, target]].dropna()
        if len(pair) < 3:
            raise WnbError(f"at least 3 neurons with finite {name} and {target} are needed (got {len(pair)})")
        fit = stats.linregress(pair[name], pair[target])
        rho = stats.spearmanr(pair[name], pair[target])
        rows.append({"predictor": name, "slope": fit.slope, "intercept": fit.intercept, "r2": fit.rvalue ** 2,
                     "spearman": rho.statistic, "spearman_p": rho.pvalue, "neurons": len(pair)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- experts (Fig. 1f)

def token_shares(study: LayerStudy, on: str = "held_out") -> pd.DataFrame:
    """One row per expert: its calibration tokens, and its tokens and share of the ``on`` tokens."""
    labels = study.labels(on)
    counts = torch.bincount(labels, minlength=study.expansion.n_experts)
    return pd.DataFrame({"expert": np.arange(len(counts)), "calib_tokens": study.expansion.tokens,
                         "tokens": counts.numpy(), "share": (counts.double() / labels.numel()).numpy()})


def expert_outputs(study: LayerStudy, neuron: int, on: str = "held_out") -> pd.DataFrame:
    """One neuron's output on every token (long form for plotting): ``token, expert, dense, sparsegpt,
    expansion`` (the expansion's output is the token's own expert's)."""
    n_out = study.weight.shape[0]
    if not 0 <= int(neuron) < n_out:
        raise WnbError(f"neuron must be in [0, {n_out}) (got {neuron})")
    neuron = int(neuron)
    cols = {which: study.outputs(which, on)[:, neuron].numpy() for which in ("dense", "sparsegpt", "expansion")}
    labels = study.labels(on)
    return pd.DataFrame({"token": np.arange(labels.numel()), "expert": labels.numpy(), **cols})


# ---------------------------------------------------------------- entanglement before / after (Fig. 5)

def entanglement_change(study: LayerStudy, neurons=None, on: str = "held_out", outputs: str = "expansion",
                        n_pairs: int = 50_000, seed: int = 0, md: bool = True) -> pd.DataFrame:
    """WD and MD of each neuron before expansion (dense outputs on all tokens) and after (per expert, on
    the tokens routed to it, averaged with weights = the experts' token shares).

    ``outputs="expansion"`` uses each expert's own outputs; ``"dense"`` the dense outputs split by expert
    (the effect of the clustering alone). Experts with fewer than 2 tokens or a constant output are left
    out of the average (weights renormalized). ``neurons`` defaults to all.

    ``wd_after_random`` is the control for small samples: the same weighted WD over a seeded random
    partition of the same tokens into groups of the experts' sizes (:func:`random_partition`). WD of a
    few tokens is biased upward, so only ``wd_after`` below the control says the router separated the
    distribution.
    """

    if outputs not in ("expansion", "dense"):
        raise WnbError(f"outputs must be 'expansion' or 'dense' (got {outputs!r})")
    idx = torch.arange(study.weight.shape[0]) if neurons is None else torch.as_tensor(neurons).long().flatten()
    if idx.numel() == 0 or idx.min() < 0 or idx.max() >= study.weight.shape[0]:
        raise WnbError(f"neurons must be indices in [0, {study.weight.shape[0]})")
    x = _inputs(study, on)
    dense = study.outputs("dense", on)[:, idx]
    after_y = study.outputs(outputs, on)[:, idx]
    labels = study.labels(on)
    table = pd.DataFrame({"neuron": idx.numpy(), "wd_before": wasserstein_to_gaussian(dense).numpy()})
    k = study.expansion.n_experts
    table["wd_after"] = weighted_group_wd(after_y, labels, k).numpy()
    table["wd_ratio"] = table["wd_after"] / table["wd_before"]
    table["wd_after_random"] = weighted_group_wd(after_y, random_partition(labels, seed), k).numpy()
    table["wd_ratio_random"] = table["wd_after_random"] / table["wd_before"]
    md_sum, md_weight = torch.zeros(idx.numel(), dtype=torch.float64), torch.zeros(idx.numel(), dtype=torch.float64)
    for c in range(k if md else 0):
        members = labels == c
        if members.sum() < 2:
            continue
        try:
            mdc = mapping_difficulty(x[members], after_y[members], n_pairs=n_pairs, seed=seed)
        except WnbError:  # every pair of this expert's tokens has identical inputs
            continue
        ok = ~torch.isnan(mdc)
        md_sum[ok] += members.double().mean() * mdc[ok]
        md_weight[ok] += members.double().mean()
    if md:
        table["md_before"] = mapping_difficulty(x, dense, n_pairs=n_pairs, seed=seed).numpy()
        table["md_after"] = (md_sum / md_weight).numpy()
        table["md_ratio"] = table["md_after"] / table["md_before"]
    return table


def random_partition(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The labels shuffled over the tokens (seeded): groups of the same sizes, with no relation to the inputs."""
    labels = torch.as_tensor(labels)
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(int(seed)))
    return labels[order.to(labels.device)]


def weighted_group_wd(outputs: torch.Tensor, labels: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Token-share weighted mean over groups of each neuron's WD on the group's tokens (groups of fewer than
    2 tokens and constant outputs left out, weights renormalized): ``[n_neurons]`` float64."""

    total = torch.zeros(outputs.shape[1], dtype=torch.float64)
    weight = torch.zeros_like(total)
    for c in range(n_groups):
        members = labels == c
        if members.sum() < 2:
            continue
        wd = wasserstein_to_gaussian(outputs[members])
        ok = ~torch.isnan(wd)
        share = members.double().mean()
        total[ok] += share * wd[ok]
        weight[ok] += share
    return total / weight


# ---------------------------------------------------------------- sweep over k and sparsity (Fig. 9)


