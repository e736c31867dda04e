"""Reading one neuron: which tokens make its tails, which near-identical inputs it drives apart, what it writes.

Each function works on what the app already holds for a layer (a capture flattened window-major and
the token windows), so none needs a capture of its own:

- :func:`token_table`: per token id, count, mean and extreme output, and its share of the neuron's lower
  and upper tails (beyond ±2.5σ); :func:`tail_concentration` sums up how much of each tail one token takes,
  next to what random draws of the same size would give;
- :func:`differentiating_pairs`: from the mapping-difficulty pair sample, the pairs with the closest inputs
  and the most different outputs, with both contexts;
- :func:`output_effect`: for an FFN hidden neuron, the tokens whose logits it raises and lowers most.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from wnb.core.checks import check_float, check_int
from wnb.core.stats import median, standardize
from wnb.data.positions import TAIL_SIGMA, check_skip, drop_positions, kept_rows
from wnb.data.tokens import decode, decode_contexts
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import check_layers, forward_order, layer_weight
from wnb.model.lm import require_local
from wnb.scoring.mapping import check_inputs_outputs, input_pairs


def _one_neuron(outputs, neuron=None) -> torch.Tensor:
    """``outputs [N]`` (or ``[N, d]`` with ``neuron``) as a float64 CPU vector."""
    if isinstance(outputs, np.ndarray):
        outputs = torch.from_numpy(outputs)
    if not isinstance(outputs, torch.Tensor):
        raise WnbError(f"outputs must be a tensor [N] of one neuron (or [N, d] with neuron=) (got {type(outputs).__name__})")
    if outputs.dim() == 2 and neuron is not None:
        if not 0 <= int(neuron) < outputs.shape[1]:
            raise WnbError(f"neuron must be between 0 and {outputs.shape[1] - 1} (got {neuron})")
        outputs = outputs[:, int(neuron)]
    if outputs.dim() != 1:
        raise WnbError(f"outputs must be one neuron's outputs [N] (pass outputs[:, neuron] or neuron=) "
                       f"(got shape {tuple(outputs.shape)})")
    return outputs.detach().cpu().double()


def _standardize(y: torch.Tensor) -> torch.Tensor:
    """:func:`wnb.core.stats.standardize`, refused for a constant neuron: it has no tails to read."""
    z = standardize(y)
    if torch.isnan(z).all():
        raise WnbError("this neuron's output is constant over these tokens: it has no tails")
    return z


# ---------------------------------------------------------------- token table

def token_table(token_ids, outputs, tokenizer=None, threshold: float = TAIL_SIGMA, neuron: int | None = None,
                seq_len: int | None = None, skip_first: int = 0) -> pd.DataFrame:
    """Per token id, how one neuron responds to it and how much of its tails it makes.

    ``token_ids``: the windows ``[n, seq_len]`` (or flat ``[N]``) of the tokens whose ``outputs [N]``
    (one neuron; or ``[N, d]`` with ``neuron``) were captured, in the same window-major order
    (``Session.layer(name).outputs[:, i]`` with the session's ``calib``). ``skip_first`` drops positions of
    every window (needs 2-D windows or ``seq_len``). The tails are the outputs beyond ``±threshold`` standard
    deviations of the neuron's mean (each side separately). Columns: ``token_id, token`` (decoded),
    ``count, mean, min, max, extreme`` (the output farthest from the neuron's mean), ``lower`` / ``upper``
    (outputs of the token in each tail) and ``lower_share`` / ``upper_share`` (their share of the tail).
    Sorted by tail outputs, then count.
    """
    ids = torch.as_tensor(token_ids)
    y = _one_neuron(outputs, neuron)
    threshold = check_float(threshold, "threshold", 0, None, low_open=True)
    if ids.dtype.is_floating_point or ids.numel() != y.numel():
        raise WnbError(f"token_ids must be the {y.numel()} integer token ids of the same tokens as the outputs "
                       f"(got {ids.numel()} {ids.dtype})")
    if ids.dim() == 2:
        seq_len = ids.shape[1] if seq_len is None else seq_len
    if skip_first and seq_len is None:
        raise WnbError("skip_first needs the windows [n, seq_len] (or seq_len) to know the positions")
    ids = ids.reshape(-1).long()
    if seq_len is not None:
        rows = kept_rows(ids.numel(), seq_len, skip_first)
        ids, y = ids[rows], y[rows]
    z = _standardize(y)
    uniq, inv = torch.unique(ids, return_inverse=True)
    n = uniq.numel()
    count = torch.bincount(inv, minlength=n).double()
    lower, upper = (torch.bincount(inv, mask.double(), minlength=n) for mask in (z < -threshold, z > threshold))
    # per token, the output farthest from the mean (ties: the earlier token): sort by |z|, then by token id
    order = torch.argsort(z.abs(), descending=True, stable=True)
    order = order[torch.argsort(inv[order], stable=True)]
    first = torch.ones(order.numel(), dtype=torch.bool)
    first[1:] = inv[order][1:] != inv[order][:-1]
    extreme = y[order[first]]
    table = pd.DataFrame({
        "token_id": uniq.numpy(), "token": [decode(tokenizer, [i]) for i in uniq.tolist()],
        "count": count.long().numpy(), "mean": (torch.bincount(inv, y, minlength=n) / count).numpy(),
        "min": torch.full((n,), np.inf, dtype=torch.float64).scatter_reduce(0, inv, y, "amin").numpy(),
        "max": torch.full((n,), -np.inf, dtype=torch.float64).scatter_reduce(0, inv, y, "amax").numpy(),
        "extreme": extreme.numpy(), "lower": lower.long().numpy(), "upper": upper.long().numpy(),
        "lower_share": (lower / lower.sum()).numpy() if lower.sum() > 0 else np.nan,
        "upper_share": (upper / upper.sum()).numpy() if upper.sum() > 0 else np.nan})
    table["tails"] = table["lower"] + table["upper"]
    table = table.sort_values(["tails", "count", "token_id"], ascending=[False, False, True], kind="stable")
    return table.drop(columns="tails").reset_index(drop=True)


def tail_concentration(table: pd.DataFrame, n_control: int = 200, seed: int = 0) -> pd.DataFrame:
    """How much of each tail its single most frequent token takes, from a :func:`token_table`.

    One row per tail (``lower``, ``upper``): ``tail_outputs``, ``top_token_id``, ``top_token``,
    ``concentration`` (its share of the tail), and ``control``: the mean concentration of ``n_control``
    seeded random draws of as many tokens from all of them (a tail of 5 outputs can reach 0.4 by chance
    when the text repeats a few words). A concentration far above the control means one word form makes
    the tail; near it, the tail spreads over tokens as the text does.
    """
    n_control, seed = check_int(n_control, "n_control"), check_int(seed, "seed", minimum=0)
    p = torch.tensor(table["count"].to_numpy(), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for side in ("lower", "upper"):
        counts = table[side].to_numpy()
        n = int(counts.sum())
        row = {"tail": side, "tail_outputs": n, "top_token_id": None, "top_token": None,
               "concentration": np.nan, "control": np.nan}
        if n:
            best = int(np.argmax(counts))  # the table is sorted by tail outputs: ties go to the earlier row
            draws = torch.multinomial(p, n * n_control, replacement=True, generator=gen).view(n_control, n)
            top = torch.stack([torch.bincount(d).max() for d in draws]).double() / n
            row.update(top_token_id=int(table["token_id"].iloc[best]), top_token=table["token"].iloc[best],
                       concentration=counts[best] / n, control=top.mean().item())
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- differentiating pairs

def differentiating_pairs(inputs, outputs, neuron: int, windows, tokenizer=None, n_pairs: int = 50_000,
                          seed: int = 0, top: int = 10, width: int = 8, skip_first: int = 0) -> pd.DataFrame:
    """The pairs of the mapping-difficulty sample that make ``neuron`` hard to map: close inputs, far outputs.

    ``inputs [N, d_in]`` and ``outputs [N, d_out]`` are a layer's capture of ``windows [n, seq_len]``
    (window-major, ``Session.layer(name)`` with the session's ``calib``). The pairs are those of
    :func:`wnb.mapping_difficulty` with the same ``n_pairs``, ``seed`` and ``skip_first`` (the dots of
    Fig. 2b–d); they are ranked by ``ratio = dy / dx``, the pair's term of MD (``dx = ‖x_a − x_b‖ / max``,
    ``dy = |y_a − y_b| / median``). Returns the ``top`` pairs: ``rank, dx, dy, ratio`` and for each side
    ``a`` / ``b``: ``value, z, window, position, token, left, right``.
    """
    
    windows = check_windows(windows)
    check_inputs_outputs(inputs, outputs)
    if outputs.shape[0] > windows.numel():
        raise WnbError(f"the capture has {outputs.shape[0]} tokens but the windows only {windows.numel()}")
    y = _one_neuron(outputs, neuron)
    top = check_int(top, "top")
    seq_len, skip_first = check_skip(windows.shape[1], skip_first)
    rows = kept_rows(y.numel(), seq_len, skip_first)
    x, y = drop_positions(inputs, seq_len, skip_first), y[rows]
    i, j, dx = input_pairs(x, n_pairs, seed)
    dy_raw = (y[i] - y[j]).abs()
    ny = median(dy_raw[:, None])[0]
    if not ny > 0:
        raise WnbError("the median output difference of this neuron is 0: its pairs cannot be ranked")
    dy = dy_raw / ny
    ratio = dy / dx
    order = torch.argsort(ratio, descending=True, stable=True)[:top]
    z = _standardize(y)
    table = pd.DataFrame({"rank": np.arange(1, order.numel() + 1), "dx": dx[order].numpy(),
                          "dy": dy[order].numpy(), "ratio": ratio[order].numpy()})
    for side, idx in (("a", i[order]), ("b", j[order])):
        ctx = decode_contexts(tokenizer, windows, rows[idx], width)
        table[f"value_{side}"] = y[idx].numpy()
        table[f"z_{side}"] = z[idx].numpy()
        for col in ("window", "position", "token", "left", "right"):
            table[f"{col}_{side}"] = ctx[col].to_numpy()
    return table


# ---------------------------------------------------------------- output effect

DOWN_PROJECTION = {"gate_proj": "down_proj", "up_proj": "down_proj", "dense_h_to_4h": "dense_4h_to_h",
                   "c_fc": "c_proj", "fc1": "fc2"}
"""First FFN projection (its rows are the hidden neurons) → the down projection beside it."""


def down_projection_of(lm, layer: str) -> str:
    """The down projection reading the hidden neurons that ``layer`` (gate_proj / up_proj / dense_h_to_4h /
    c_fc / fc1) writes; WnbError naming the allowed layers for any other."""

    (layer,) = check_layers(lm, [layer])
    parent, _, leaf = layer.rpartition(".")
    down = f"{parent}.{DOWN_PROJECTION.get(leaf, '')}"
    if leaf not in DOWN_PROJECTION or down not in forward_order(lm):
        raise WnbError(f"the output effect is defined for an FFN hidden neuron: a row of a first FFN projection "
                       f"({', '.join(DOWN_PROJECTION)}), whose output the down projection reads as its input i; "
                       f"{layer!r} is not one (its outputs go into the residual stream or attention, not through "
                       f"a down projection)")
    return down


def _extremes(values: np.ndarray, k: int, descending: bool) -> np.ndarray:
    """Indices of the ``k`` largest (or smallest) ``values`` in order, ties to the lower index: the first
    ``k`` of a stable argsort, sorting only the candidates a partition finds (the vocabulary is 50k+
    long; numpy, as torch's small-tensor ops are slow on a loaded CPU)."""
    signed = values if descending else -values
    bound = signed[np.argpartition(-signed, k - 1)[:k]].min()
    candidates = np.flatnonzero(signed >= bound)  # every value that can be among the k, ties included
    return candidates[np.argsort(-signed[candidates], kind="stable")[:k]]


def output_effect(lm, layer: str, neuron: int, k: int = 20) -> pd.DataFrame:
    """The tokens whose logits an FFN hidden neuron raises and lowers most, per unit of its activation.

    For a row ``i`` of ``layer`` (gate_proj, up_proj, dense_h_to_4h, c_fc or fc1) the down projection's
    column ``i`` is what one unit of hidden activation ``i`` adds to the residual stream (for a gated MLP
    the hidden activation is ``act(gate_i) · up_i``); times the unembedding (``lm_head``, which is the input
    embedding in tied models) it gives the direct change of every logit. This ignores the final norm and
    every later layer, so it is the neuron's direct effect only. Returns ``side`` (``raises`` / ``lowers``),
    ``rank, token_id, token, effect`` (logit change per unit), ``k`` rows per side.
    """

    require_local(lm, "the output effect")
    down = down_projection_of(lm, layer)
    w_down = layer_weight(lm, down)  # [d_model, d_hidden], Conv1D transposed by layer_weight
    neuron = check_int(neuron, "neuron", minimum=0)
    if neuron >= w_down.shape[1]:
        raise WnbError(f"neuron must be between 0 and {w_down.shape[1] - 1} for {layer} (got {neuron})")
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise WnbError(f"{lm.name} has no output embedding (lm_head): the output effect needs one")
    unembed = head.weight  # [vocab, d_model]
    k = check_int(k, "k", maximum=unembed.shape[0])
    with torch.no_grad():
        column = w_down[:, neuron].detach().to(unembed.device, torch.float32)
        effect = (unembed.detach().float() @ column).cpu().numpy().astype(np.float64)
    frames = []
    for side, descending in (("raises", True), ("lowers", False)):
        order = _extremes(effect, k, descending)
        frames.append(pd.DataFrame({"side": side, "rank": np.arange(1, k + 1), "token_id": order,
                                    "token": [decode(lm.tokenizer, [t]) for t in order.tolist()],
                                    "effect": effect[order]}))
    return pd.concat(frames, ignore_index=True)
