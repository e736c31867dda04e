"""Entanglement scores: Wasserstein distance to a Gaussian, mapping difficulty, top neurons.

WD (PAPER.md §2) is computed exactly against the continuous N(0, 1), in quantile form:
``W1 = ∫_0^1 |F_n^{-1}(u) − Φ^{-1}(u)| du``. On ``u ∈ ((i−1)/n, i/n]`` the empirical quantile is the
i-th smallest standardized sample ``z_i``, and since ``d/du[−φ(Φ^{-1}(u))] = Φ^{-1}(u)`` each piece
has a closed form split at ``u* = Φ(z_i)``; where ``z_i`` does not cross ``Φ^{-1}`` inside its interval
the piece is simply ``|z_i/n − ∫Φ^{-1}|``. Sorting is done in the samples' own precision (an affine
map does not change the order), everything after it in float64.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .checks import check_int
from .errors import WnbError

_SQRT_2PI = math.sqrt(2 * math.pi)


def _phi(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / _SQRT_2PI


def _quantile_grid(n: int) -> dict[str, torch.Tensor]:
    """Per interval i = 1..n of u: its ends u_lo, u_hi, the normal quantiles q_lo, q_hi there, and
    H(u) = −φ(Φ^{-1}(u)) at both ends (H(0) = H(1) = 0), each a ``[n]`` float64 vector."""
    u = torch.arange(n + 1, dtype=torch.float64) / n
    q = torch.special.ndtri(u)
    h = -_phi(q)
    h[0] = h[-1] = 0.0
    return {"u_lo": u[:-1], "u_hi": u[1:], "q_lo": q[:-1], "q_hi": q[1:], "h_lo": h[:-1], "h_hi": h[1:]}


def _median(x: torch.Tensor) -> torch.Tensor:
    """Column medians, averaging the two middle values for an even count (as numpy does)."""
    lower = x.kthvalue((x.shape[0] + 1) // 2, dim=0).values
    upper = x.kthvalue(x.shape[0] // 2 + 1, dim=0).values
    return (lower + upper) / 2


def _samples(outputs) -> torch.Tensor:
    """A 2-D tensor of samples: torch tensors as they are, numpy arrays wrapped; anything else refused."""
    if isinstance(outputs, np.ndarray):
        outputs = torch.from_numpy(outputs)
    if not isinstance(outputs, torch.Tensor):
        raise WnbError(f"outputs must be a torch tensor or a numpy array [n_samples, n_neurons] "
                       f"(got {type(outputs).__name__})")
    if outputs.dim() != 2:
        raise WnbError(f"outputs must be [n_samples, n_neurons] (got shape {tuple(outputs.shape)})")
    if outputs.dtype.is_complex or outputs.dtype == torch.bool:
        raise WnbError(f"outputs must hold real numbers (got {outputs.dtype})")
    return outputs


def wasserstein_to_gaussian(outputs: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Exact W1 distance of each column's standardized distribution to N(0, 1).

    ``outputs`` is ``[n_samples, n_neurons]`` (a torch tensor on any device, or a numpy array; bfloat16
    and float16 are upcast exactly to float32); returns ``[n_neurons]`` float64. Columns with zero
    variance (constant neurons) get NaN. Work is chunked over ``chunk`` neurons so memory stays bounded.
    """
    outputs = _samples(outputs)
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
                    + g["h_lo"][cols] + g["h_hi"][cols] + 2 * _phi(zc))
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


def sample_pairs(n_tokens: int, n_pairs: int = 50_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint random token pairs (each token in at most one pair), seeded."""
    n_pairs = check_int(n_pairs, "n_pairs")  # the paper uses 50,000
    if n_tokens < 2:
        raise WnbError(f"mapping difficulty needs at least 2 tokens (got {n_tokens})")
    n_pairs = min(n_pairs, n_tokens // 2)
    perm = torch.randperm(n_tokens, generator=torch.Generator().manual_seed(seed))
    return perm[:n_pairs], perm[n_pairs:2 * n_pairs]


PAIR_CHUNK = 4096  # token pairs whose input difference is held at once


_last_pairs: list = []  # [(weak reference to the inputs, their version, n_pairs, seed), result]: see _input_pairs


def _input_pairs(inputs: torch.Tensor, n_pairs: int, seed: int):
    """Sampled pairs with distinct inputs and their input distance normalized by the largest one.

    The last result is kept while the same inputs tensor lives unchanged: selecting neuron after neuron
    of one layer (the app, the reading section) asks for the same pairs every time."""
    import weakref

    from .expand import _version

    if _last_pairs:
        (ref, version, n, s), result = _last_pairs
        if ref() is inputs and version == _version(inputs) and (n, s) == (n_pairs, seed):
            return result
    result = _sample_input_pairs(inputs, n_pairs, seed)
    try:
        _last_pairs[:] = [(weakref.ref(inputs), _version(inputs), n_pairs, seed), result]
    except TypeError:  # a tensor subclass without weak references: nothing kept
        _last_pairs.clear()
    return result


def _sample_input_pairs(inputs: torch.Tensor, n_pairs: int, seed: int):
    i, j = sample_pairs(inputs.shape[0], n_pairs, seed)
    dx = torch.empty(i.numel(), dtype=torch.float64)
    for s in range(0, i.numel(), PAIR_CHUNK):  # chunked: P x d_in float64 differences would be ~0.7 GB
        a, b = i[s:s + PAIR_CHUNK], j[s:s + PAIR_CHUNK]
        dx[s:s + PAIR_CHUNK] = torch.linalg.vector_norm(inputs[a].double() - inputs[b].double(), dim=1)
    keep = dx > 0
    if not keep.any():
        raise WnbError("every sampled pair has identical inputs; mapping difficulty is undefined")
    return i[keep], j[keep], dx[keep] / dx[keep].max()


def pair_distances(inputs: torch.Tensor, outputs: torch.Tensor, n_pairs: int = 50_000, seed: int = 0):
    """Normalized input distance and per-neuron normalized output difference of random token pairs.

    Returns ``(dx [P], dy [P, n_neurons])`` with ``dx = ‖x_i − x_j‖ / max`` and ``dy = |y_i − y_j| / median``
    (pairs with identical inputs are dropped). This is what the paper's Fig. 2b–d plots.
    """
    _check_xy(inputs, outputs)
    i, j, dx = _input_pairs(inputs, n_pairs, seed)
    dy = (outputs[i].double() - outputs[j].double()).abs()
    return dx, dy / _median(dy)


def mapping_difficulty(inputs: torch.Tensor, outputs: torch.Tensor, n_pairs: int = 50_000, seed: int = 0,
                       chunk: int = 64) -> torch.Tensor:
    """Per-neuron mapping difficulty (PAPER.md §3): mean of (|Δy| / median|Δy|) / (‖Δx‖ / max‖Δx‖).

    Returns ``[n_neurons]`` float64; NaN where the median output difference is zero.
    """
    _check_xy(inputs, outputs)
    i, j, dx = _input_pairs(inputs, n_pairs, seed)
    m = outputs.shape[1]
    result = torch.empty(m, dtype=torch.float64)
    for start in range(0, m, chunk):
        dy = (outputs[i, start:start + chunk].double() - outputs[j, start:start + chunk].double()).abs()
        ny = _median(dy)
        md = (dy / dx[:, None]).mean(0) / ny
        md[~(ny > 0)] = float("nan")
        result[start:start + chunk] = md
    return result


def _check_xy(inputs: torch.Tensor, outputs: torch.Tensor) -> None:
    if inputs is None or outputs is None:
        raise WnbError("mapping difficulty needs both inputs and outputs; capture with inputs=True, outputs=True")
    if inputs.dim() != 2 or outputs.dim() != 2 or inputs.shape[0] != outputs.shape[0]:
        raise WnbError(f"inputs [N, d_in] and outputs [N, d_out] must have the same N "
                       f"(got {tuple(inputs.shape)} and {tuple(outputs.shape)})")


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

    ``sign=True`` adds the sign view (:func:`wnb.sign_view.sign_columns`): ``frac_negative, skewness,
    kurtosis`` (excess), ``wd_below_zero, wd_above_zero`` (the WD integral over negative and positive
    outputs, split at the raw zero; they add up to ``wd``), ``wd_share_below_zero`` and the same split at the
    mean (``wd_below_mean, wd_above_mean, wd_share_below_mean``). Given ``seq_len`` (the capture's window length: rows are flattened
    window-major), ``skip_first`` positions of every window are dropped from every statistic, and the
    columns ``pos0_tail_share`` (:func:`wnb.position_tail_share`: share of the neuron's outputs beyond ±2.5σ
    at the first position kept) and ``sink`` (that share ``>= wnb.positions.SINK_SHARE``) are added.
    """
    from .positions import drop_positions, position_tail_share, sink_flags

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
        from .sign_view import sign_columns

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


def _layer_outputs(lm, windows, layers, max_tokens, batch_size, progress, skip_first):
    """One capture pass of outputs only; yields ``(layer, outputs without the first skip_first positions,
    the kept window length)`` and frees each layer once the caller is done with it."""
    from .capture import capture, check_windows
    from .models import ffn_layers
    from .positions import check_skip, drop_positions

    windows = check_windows(windows, lm)
    seq_len, skip_first = check_skip(windows.shape[1], skip_first)
    layers = ffn_layers(lm) if layers is None else layers
    acts = capture(lm, layers, windows, max_tokens=max_tokens, batch_size=batch_size, inputs=False,
                   progress=progress)
    for name in list(acts):
        yield name, drop_positions(acts.pop(name).outputs, seq_len, skip_first), seq_len - skip_first


def layer_statistics(lm, windows, layers=None, max_tokens: int | None = 2048, batch_size: int = 8,
                     progress: bool = True, skip_first: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Per FFN layer (or ``layers``), from one capture pass of outputs only: ``{"wd": [d], "pos0_tail_share":
    [d]}`` (WD, and the share of each neuron's tails at the first position kept, see
    :func:`wnb.position_tail_share`). ``skip_first`` drops that many positions from every window first."""
    from .positions import position_tail_share

    return {name: {"wd": wasserstein_to_gaussian(y), "pos0_tail_share": position_tail_share(y, seq_len)}
            for name, y, seq_len in _layer_outputs(lm, windows, layers, max_tokens, batch_size, progress, skip_first)}


def layer_scores(lm, windows, layers=None, max_tokens: int | None = 2048, batch_size: int = 8,
                 progress: bool = True, skip_first: int = 0) -> dict[str, torch.Tensor]:
    """WD of every neuron of every FFN layer (or ``layers``), from one capture pass of outputs only;
    ``skip_first`` drops that many positions from every window (0: all, as in the paper)."""
    return {name: wasserstein_to_gaussian(y)
            for name, y, _ in _layer_outputs(lm, windows, layers, max_tokens, batch_size, progress, skip_first)}


def overview_table(lm, scores: dict[str, torch.Tensor], fraction: float = 0.03, top: int = 5,
                   pos0_shares: dict[str, torch.Tensor] | None = None) -> pd.DataFrame:
    """One row per layer: block, kind, neurons, WD quantiles, mean WD of the top ``fraction`` (the
    Wasserstein neurons), its ratio to the median, and the ``top`` neuron indices.

    A layer whose neurons are all constant (NaN WD) gets NaN statistics and no top neurons. Given
    ``pos0_shares`` (``{layer: [d]}``, e.g. from :func:`layer_statistics`), ``sinks`` counts the layer's
    neurons flagged as first-position tails (share >= ``wnb.positions.SINK_SHARE``) and ``sink_top_share``
    is the share of its Wasserstein neurons so flagged.
    """
    from .models import block_of
    from .positions import sink_flags

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


def overview(lm, windows, layers=None, fraction: float = 0.03, max_tokens: int | None = 2048,
             batch_size: int = 8, progress: bool = True, skip_first: int = 0) -> pd.DataFrame:
    """Whole-model overview: :func:`layer_statistics` of every FFN layer summarized by :func:`overview_table`
    (with the first-position ``sinks`` columns); ``skip_first`` drops positions from every window."""
    stats = layer_statistics(lm, windows, layers, max_tokens=max_tokens, batch_size=batch_size, progress=progress,
                             skip_first=skip_first)
    return overview_table(lm, {n: s["wd"] for n, s in stats.items()}, fraction,
                          pos0_shares={n: s["pos0_tail_share"] for n, s in stats.items()})
