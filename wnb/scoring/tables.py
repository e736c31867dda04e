"""Tables of scores: one row per neuron of a layer (WD, rank, MD, mean, variance, weight norm, the sign
view, first-token tails), statistics of many layers from one capture pass, and one row per layer for the
model overview."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from wnb.data.positions import (
    drop_positions,
    position_tail_share,
    sink_flags,
)
from wnb.errors import WnbError
from wnb.model.architectures import block_of
from wnb.scoring.mapping import mapping_difficulty
from wnb.scoring.sign import sign_columns
from wnb.scoring.wasserstein import top_neurons, wasserstein_to_gaussian


def output_moments(y: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron population variance and mean of ``y [samples, neurons]`` in float64 (CPU), a few
    columns at a time so that no float64 copy of the whole of ``y`` is made."""
    variance, mean = (torch.empty(y.shape[1], dtype=torch.float64) for _ in range(2))
    for s in range(0, y.shape[1], chunk):
        part = y[:, s:s + chunk].detach().to("cpu", torch.float64)
        variance[s:s + chunk], mean[s:s + chunk] = torch.var_mean(part, dim=0, correction=0)
    return variance, mean


def neuron_table(outputs: torch.Tensor, inputs: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                 n_pairs: int = 50_000, seed: int = 0, *, sign: bool = False, seq_len: int | None = None,
                 skip_first: int = 0) -> pd.DataFrame:
    """One row per neuron: WD, rank, MD (if inputs given), output mean and variance, weight norm.

    Sorted by WD, highest first; ``rank`` 1 is the most entangled neuron.

    ``sign=True`` adds the sign view (:func:`wnb.scoring.sign.sign_columns`): ``frac_negative, skewness,
    kurtosis`` (excess), ``wd_below_zero, wd_above_zero`` (the WD integral over negative and positive
    outputs, split at the raw zero; they add up to ``wd``), ``wd_share_below_zero`` and the same split at the
    mean (``wd_below_mean, wd_above_mean, wd_share_below_mean``). Given ``seq_len`` (the capture's window
    length: rows are flattened
    window-major), ``skip_first`` positions of every window are dropped from every statistic, and the
    columns ``pos0_tail_share`` (:func:`wnb.position_tail_share`: share of the neuron's outputs beyond ±2.5σ
    at the first position kept) and ``sink`` (that share ``>= wnb.data.positions.SINK_SHARE``) are added.
    """

    if skip_first and seq_len is None:
        raise WnbError("skip_first needs seq_len: the window length of the capture (rows are window-major)")
    if seq_len is not None:
        outputs, inputs = drop_positions(outputs, seq_len, skip_first), drop_positions(inputs, seq_len, skip_first)
    wd = wasserstein_to_gaussian(outputs)
    variance, mean = output_moments(outputs)
    table = pd.DataFrame({"neuron": np.arange(outputs.shape[1]), "wd": wd.numpy(),
                          "mean": mean.numpy(), "variance": variance.numpy()})
    if inputs is not None:
        table["md"] = mapping_difficulty(inputs, outputs, n_pairs=n_pairs, seed=seed).numpy()
    if weight is not None:
        table["weight_norm"] = torch.linalg.vector_norm(weight.detach().double().cpu(), dim=1).numpy()
    if sign:

        for name, column in sign_columns(outputs).items():
            table[name] = column
    if seq_len is not None:
        # outputs already lost their first skip_first positions: the first kept position is now 0
        share = position_tail_share(outputs, seq_len - skip_first)
        table["pos0_tail_share"] = share.numpy()
        table["sink"] = sink_flags(share).numpy()
    table = table.sort_values("wd", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table



def overview_table(lm, scores: dict[str, torch.Tensor], fraction: float = 0.03, top: int = 5,
                   pos0_shares: dict[str, torch.Tensor] | None = None) -> pd.DataFrame:
    """One row per layer: block, kind, neurons, WD quantiles, mean WD of the top ``fraction`` (the
    Wasserstein neurons), its ratio to the median, and the ``top`` neuron indices.

    A layer whose neurons are all constant (NaN WD) gets NaN statistics and no top neurons. Given
    ``pos0_shares`` (``{layer: [d]}``, e.g. from :func:`layer_statistics`), ``sinks`` counts the layer's
    neurons flagged as first-position tails (share >= ``wnb.data.positions.SINK_SHARE``) and ``sink_top_share``
    is the share of its Wasserstein neurons so flagged.
    """

    rows = []
    for name, wd in scores.items():
        wd = torch.as_tensor(wd).double()
        best = top_neurons(wd, fraction)
        finite = wd[~torch.isnan(wd)]
        if finite.numel():
            q = torch.quantile(finite, torch.tensor([0.0, 0.25, 0.5, 0.75, 0.95, 1.0], dtype=torch.float64))
        else:
            q = torch.full((6,), float("nan"), dtype=torch.float64)
        top_mean = wd[best].mean() if best.numel() else torch.tensor(float("nan"), dtype=torch.float64)
        row = {"block": block_of(lm, name), "layer": name, "kind": name.rsplit(".", 1)[-1],
               "neurons": wd.numel(), "constant": int(torch.isnan(wd).sum()),
               "wd_min": q[0].item(), "wd_q25": q[1].item(), "wd_median": q[2].item(),
               "wd_q75": q[3].item(), "wd_q95": q[4].item(), "wd_max": q[5].item(),
               "wd_top_mean": top_mean.item(), "top_over_median": (top_mean / q[2]).item(),
               "top_neurons": best[:top].tolist()}
        if pos0_shares is not None:
            flags = sink_flags(pos0_shares[name])
            row["sinks"] = int(flags.sum())
            row["sink_top_share"] = flags[best].double().mean().item() if best.numel() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


