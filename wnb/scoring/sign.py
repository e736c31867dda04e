"""The sign view: on which side of its distribution a neuron is non-Gaussian.

The follow-up paper (PAPER.md §8) finds that gate_proj-like Wasserstein neurons differentiate on the
*negative* side. These functions say where a neuron's non-Gaussianity sits:

- :func:`wasserstein_split`: the exact W1 integral ``∫ |F_z(t) − Φ(t)| dt`` of the standardized outputs,
  split at the raw zero (``t = z₀ = −mean/std``, i.e. ``y = 0``: the follow-up's *negative*
  pre-activations) or, with ``at="mean"``, at ``t = 0`` (``y`` = the mean); the two parts add up to the WD;
- :func:`shape_statistics`: share of outputs below zero, skewness, excess kurtosis;
- :func:`sign_quadrants` / :func:`gate_up_quadrants`: for a gated MLP (SwiGLU, GeGLU), the share of
  tokens in each sign quadrant of (gate_proj, up_proj) of a hidden neuron.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from wnb.core.checks import check_int
from wnb.core.stats import normal_cdf_integral, normal_sf_integral
from wnb.data.positions import check_skip
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, forward_order, layer_weight
from wnb.scoring.wasserstein import check_samples
from wnb.tracing.capture import capture


def _pieces(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """``∫_a^b |c − Φ(t)| dt`` for ``a <= b`` with the crossing ``Φ(cross) = c`` (elementwise)."""
    s = torch.minimum(torch.maximum(cross, a), b)
    ga, gb, gs = normal_cdf_integral(a), normal_cdf_integral(b), normal_cdf_integral(s)
    return c * (s - a) - (gs - ga) + (gb - gs) - c * (b - s)


def _split_sorted(z: torch.Tensor, at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Parts of W1 below and above ``t = at`` (``[m, 1]``) for rows of sorted standardized samples
    ``z [m, n]`` (float64)."""
    n = z.shape[1]
    c = torch.arange(1, n, dtype=torch.float64) / n          # the empirical CDF between z_i and z_i+1
    cross = torch.special.ndtri(c)
    a, b = z[:, :-1], z[:, 1:]
    lower = _pieces(torch.minimum(a, at), torch.minimum(b, at), c, cross).sum(1)
    upper = _pieces(torch.maximum(a, at), torch.maximum(b, at), c, cross).sum(1)
    first, last, s = z[:, 0], z[:, -1], at[:, 0]
    lower += normal_cdf_integral(torch.minimum(first, s)) + normal_sf_integral(torch.minimum(last, s)) - normal_sf_integral(s)
    upper += normal_cdf_integral(torch.maximum(first, s)) - normal_cdf_integral(s) + normal_sf_integral(torch.maximum(last, s))
    return lower, upper


def as_outputs(outputs, name: str = "outputs") -> torch.Tensor:
    """A ``[n_samples, n_neurons]`` tensor (numpy arrays accepted) in float32 or float64 on the CPU;
    lower precisions (bfloat16, float16) are upcast exactly to float32."""
    outputs = check_samples(outputs, name).detach().cpu()
    if outputs.dtype not in (torch.float32, torch.float64):
        outputs = outputs.float() if outputs.dtype.is_floating_point else outputs.double()
    return outputs


SPLITS = ("zero", "mean")


def _check_at(at: str) -> str:
    if at not in SPLITS:
        raise WnbError(f"unknown split {at!r}; choose zero (at the raw zero, y = 0: negative vs positive outputs) "
                       "or mean (at t = 0 of the standardized outputs, y = the mean)")
    return at


def wasserstein_split(outputs, chunk: int | None = None, at: str = "zero") -> tuple[torch.Tensor, torch.Tensor]:
    """Exact W1 of each column's standardized distribution to N(0, 1), split in two along the axis.

    ``at="zero"`` (default) splits at the raw zero, ``y = 0``, which on the standardized axis is
    ``t = z₀ = −mean/std``: ``lower = ∫_{-∞}^{z₀} |F_z − Φ|`` is the part over *negative* outputs (the
    follow-up's negative pre-activations) and ``upper = ∫_{z₀}^∞`` the part over positive ones. ``at="mean"``
    splits at ``t = 0``, i.e. at ``y`` = the column's mean ("below the mean", not "negative").
    Returns ``(lower, upper)``, each ``[n_neurons]`` float64; ``lower + upper`` is
    :func:`wnb.wasserstein_to_gaussian` either way. A lump of outputs far below the bulk puts most of it
    below the mean; a merely skewed distribution need not (a long right tail also pushes the bulk left,
    which shows below the mean: read it with ``skewness``). Constant columns: NaN.
    """
    return _splits(outputs, chunk, (_check_at(at),))[at]


def _splits(outputs, chunk: int | None, ats) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`wasserstein_split` at each of ``ats``, sorting each column once."""
    y = as_outputs(outputs)
    n, m = y.shape
    if n < 2:
        raise WnbError(f"at least 2 samples are needed to standardize (got {n})")
    chunk = max(1, (1 << 21) // n) if chunk is None else check_int(chunk, "chunk")
    out = {at: (torch.empty(m, dtype=torch.float64), torch.empty(m, dtype=torch.float64)) for at in ats}
    for s in range(0, m, chunk):
        part = torch.from_numpy(np.sort(y[:, s:s + chunk].T.contiguous().numpy(), axis=1)).double()
        std, mean = torch.std_mean(part, dim=1, correction=0, keepdim=True)
        bad = ~(std[:, 0] > 0) | ~torch.isfinite(std[:, 0])
        z = (part - mean) / std
        for at in ats:
            point = -mean / std if at == "zero" else torch.zeros_like(mean)
            lo, hi = _split_sorted(z, point)
            lo[bad], hi[bad] = float("nan"), float("nan")
            out[at][0][s:s + chunk], out[at][1][s:s + chunk] = lo, hi
    return out


def shape_statistics(outputs, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Per neuron, float64 ``[n_neurons]`` each: ``frac_negative`` (share of outputs below zero, raw outputs,
    not standardized), ``skewness`` (third standardized moment) and ``kurtosis`` (excess: fourth standardized
    moment − 3; 0 for a Gaussian). Population moments; NaN skewness and kurtosis for constant columns."""
    y = as_outputs(outputs)
    chunk = check_int(chunk, "chunk")
    m = y.shape[1]
    out = {k: torch.empty(m, dtype=torch.float64) for k in ("frac_negative", "skewness", "kurtosis")}
    for s in range(0, m, chunk):
        part = y[:, s:s + chunk].double()
        out["frac_negative"][s:s + chunk] = (part < 0).double().mean(0)
        d = part - part.mean(0)
        var = (d * d).mean(0)
        ok = var > 0
        skew = (d ** 3).mean(0) / var.clamp_min(1e-300) ** 1.5
        kurt = (d ** 4).mean(0) / var.clamp_min(1e-300) ** 2 - 3
        out["skewness"][s:s + chunk] = torch.where(ok, skew, torch.nan)
        out["kurtosis"][s:s + chunk] = torch.where(ok, kurt, torch.nan)
    return out


def sign_columns(outputs) -> dict[str, np.ndarray]:
    """The sign view's columns of :func:`wnb.neuron_table`, as numpy arrays per neuron: ``frac_negative,
    skewness, kurtosis``; ``wd_below_zero, wd_above_zero`` (:func:`wasserstein_split` at the raw zero) and
    ``wd_share_below_zero`` (``wd_below_zero / wd``); ``wd_below_mean, wd_above_mean, wd_share_below_mean``
    (split at the mean instead)."""
    stats = shape_statistics(outputs)
    cols = {k: v.numpy() for k, v in stats.items()}
    for at, (lower, upper) in _splits(outputs, None, SPLITS).items():
        cols.update({f"wd_below_{at}": lower.numpy(), f"wd_above_{at}": upper.numpy(),
                     f"wd_share_below_{at}": (lower / (lower + upper)).numpy()})
    return cols


# ---------------------------------------------------------------- gated MLPs: (gate, up) sign quadrants

QUADRANTS = ("gate_neg_up_neg", "gate_neg_up_pos", "gate_pos_up_neg", "gate_pos_up_pos")


def up_projection_of(lm, layer: str) -> str:
    """The ``up_proj`` beside a gated MLP's ``gate_proj`` (SwiGLU / GeGLU); WnbError for any other layer."""

    (layer,) = check_layers(lm, [layer])
    parent, _, leaf = layer.rpartition(".")
    up = f"{parent}.up_proj"
    if leaf != "gate_proj" or up not in forward_order(lm):
        raise WnbError(f"sign quadrants are defined for the gate_proj of a gated MLP (SwiGLU/GeGLU: gate_proj and "
                       f"up_proj side by side, e.g. Llama's model.layers.0.mlp.gate_proj); {layer!r} is not one")
    return up


def _quadrant_counts(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``[4, d]`` counts of tokens per quadrant (order of :data:`QUADRANTS`; zero counts as positive)."""
    g, u = gate < 0, up < 0
    return torch.stack([(g & u).sum(0), (g & ~u).sum(0), (~g & u).sum(0), (~g & ~u).sum(0)])


def _quadrant_table(counts: torch.Tensor, neurons: torch.Tensor) -> pd.DataFrame:
    total = counts.sum(0).double()
    table = pd.DataFrame({"neuron": neurons.numpy(), "tokens": total.long().numpy()})
    for name, row in zip(QUADRANTS, counts.double()):
        table[name] = (row / total).numpy()
    return table


def _neuron_index(neurons, d: int) -> torch.Tensor:
    idx = torch.arange(d) if neurons is None else torch.as_tensor(neurons).long().flatten()
    if idx.numel() == 0 or idx.min() < 0 or idx.max() >= d:
        raise WnbError(f"neurons must be indices in [0, {d})")
    return idx


def sign_quadrants(gate, up, neurons=None) -> pd.DataFrame:
    """Share of tokens in each sign quadrant of (gate, up) per hidden neuron of a gated MLP.

    ``gate`` and ``up`` are the gate_proj and up_proj outputs ``[N, d_hidden]`` of the same tokens.
    Columns ``neuron, tokens`` and the four shares of :data:`QUADRANTS` (``neg`` = below zero, ``pos`` =
    zero or above). SwiGLU's output ``silu(gate)·up`` is small for a very negative gate whatever ``up``.
    """
    gate, up = as_outputs(gate, "gate"), as_outputs(up, "up")
    if gate.shape != up.shape:
        raise WnbError(f"gate and up outputs must be of the same tokens and neurons (got {tuple(gate.shape)} "
                       f"and {tuple(up.shape)})")
    idx = _neuron_index(neurons, gate.shape[1])
    return _quadrant_table(_quadrant_counts(gate[:, idx], up[:, idx]), idx)


def gate_up_quadrants(lm, layer: str, windows, neurons=None, max_tokens: int | None = None, batch_size: int = 8,
                      skip_first: int = 0, progress: bool = True) -> pd.DataFrame:
    """:func:`sign_quadrants` of a gate_proj ``layer`` and its up_proj over ``windows``, counted batch by batch
    in one capture pass (memory per neuron, not per token). ``skip_first`` drops positions of every window."""

    up = up_projection_of(lm, layer)
    windows = check_windows(windows, lm)
    _, skip_first = check_skip(windows.shape[1], skip_first)
    idx = None if neurons is None else _neuron_index(neurons, layer_weight(lm, layer).shape[0])
    counts = []

    def feed(batch):
        keep = torch.arange(batch[layer].outputs.shape[0], device=batch[layer].outputs.device) % windows.shape[1]
        keep = keep >= skip_first
        g, u = batch[layer].outputs[keep], batch[up].outputs[keep]
        if idx is not None:
            g, u = g[:, idx.to(g.device)], u[:, idx.to(u.device)]
        c = _quadrant_counts(g, u).cpu()
        counts.append(c if not counts else counts.pop() + c)

    capture(lm, [layer, up], windows, max_tokens=max_tokens, batch_size=batch_size, inputs=False,
            progress=progress, on_batch=feed)
    d = counts[0].shape[1]
    return _quadrant_table(counts[0], torch.arange(d) if idx is None else idx)
