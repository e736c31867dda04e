"""One neuron across a layer's Sparse Expansion experts: what each expert takes, and whether the router
separates the neuron's tails.

All three read a :class:`wnb.LayerStudy` (``wnb.study_layer``); ``on`` picks its held-out or calibration
tokens, which are the first tokens of the windows the study was built from (window-major):

- :func:`expert_summary`: per expert, its token share and the neuron's moments, tails and WD there;
- :func:`expert_contexts`: per expert, the neuron's highest and lowest outputs with their contexts;
- :func:`tail_routing`: how the neuron's tail tokens spread over the experts (share in the largest one,
  entropy) next to a seeded random partition of the tokens into groups of the same sizes.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from wnb.core.checks import check_float, check_int
from wnb.core.stats import standardize
from wnb.data.positions import TAIL_SIGMA
from wnb.data.tokens import decode_contexts
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.scoring.wasserstein import wasserstein_to_gaussian


def _dense_neuron(study, neuron, on: str, outputs: str = "dense") -> torch.Tensor:
    n_out = study.weight.shape[0]
    neuron = check_int(neuron, "neuron", minimum=0)
    if neuron >= n_out:
        raise WnbError(f"neuron must be between 0 and {n_out - 1} for {study.layer} (got {neuron})")
    if outputs not in ("dense", "expansion"):
        raise WnbError(f"outputs must be 'dense' or 'expansion' (got {outputs!r})")
    return study.outputs(outputs, on)[:, neuron].double()


def expert_summary(study, neuron: int, on: str = "held_out", threshold: float = TAIL_SIGMA) -> pd.DataFrame:
    """One row per expert: ``tokens, share`` (of the ``on`` tokens routed to it), the neuron's dense output
    ``mean, std`` there, ``lower`` / ``upper`` (its outputs beyond ∓``threshold``σ of the neuron's mean over
    all tokens), and ``wd_dense`` / ``wd_expansion``: WD of the neuron's dense outputs on the expert's tokens
    and of the expert's own outputs (NaN with fewer than 2 tokens or a constant output)."""

    threshold = check_float(threshold, "threshold", 0, None, low_open=True)
    dense = _dense_neuron(study, neuron, on)
    own = _dense_neuron(study, neuron, on, "expansion")
    labels = study.labels(on)
    z = standardize(dense)
    rows = []
    for c in range(study.expansion.n_experts):
        members = labels == c
        n = int(members.sum())
        y, e = dense[members], own[members]
        wd = [wasserstein_to_gaussian(v[:, None])[0].item() if n >= 2 else math.nan for v in (y, e)]
        rows.append({"expert": c, "tokens": n, "share": n / labels.numel(),
                     "mean": y.mean().item() if n else math.nan,
                     "std": y.std(correction=0).item() if n else math.nan,
                     "lower": int((z[members] < -threshold).sum()), "upper": int((z[members] > threshold).sum()),
                     "wd_dense": wd[0], "wd_expansion": wd[1]})
    return pd.DataFrame(rows)


def _check_token_windows(study, windows, on: str):

    windows = check_windows(windows)
    n = (study.held_inputs if on == "held_out" else study.calib_inputs).shape[0]
    if windows.numel() < n:
        raise WnbError(f"the study's {on} tokens are {n:,} but these windows hold only {windows.numel():,}: pass "
                       f"the windows the study was built from ({'held_out' if on == 'held_out' else 'calib'})")
    return windows


def expert_contexts(study, neuron: int, windows, tokenizer=None, k: int = 5, width: int = 8,
                    on: str = "held_out", outputs: str = "dense") -> pd.DataFrame:
    """Per expert, the ``k`` highest and ``k`` lowest outputs of ``neuron`` among the tokens routed to it.

    ``windows`` are the token windows behind the study's ``on`` tokens (``held_out`` or ``calib`` as given
    to :func:`wnb.study_layer`); ``outputs="dense"`` ranks by the dense layer's output, ``"expansion"`` by the
    expert's own. Columns ``expert, side, rank, token_index`` (row of the study's tokens), ``window, position,
    value, z, token, left, right`` (``z`` over all ``on`` tokens). Ties go to the earlier token.
    """
    k = check_int(k, "k")
    y = _dense_neuron(study, neuron, on, outputs)
    windows = _check_token_windows(study, windows, on)
    labels = study.labels(on)
    z = standardize(y)
    frames = []
    for c in range(study.expansion.n_experts):
        members = torch.nonzero(labels == c).flatten()
        for side, descending in (("high", True), ("low", False)):
            order = torch.argsort(y[members], descending=descending, stable=True)[:k]
            idx = members[order]
            frame = decode_contexts(tokenizer, windows, idx, width)
            frame.insert(0, "expert", c)
            frame.insert(1, "side", side)
            frame.insert(2, "rank", np.arange(1, idx.numel() + 1))
            frame.insert(3, "token_index", idx.numpy())
            frame.insert(6, "value", y[idx].numpy())
            frame.insert(7, "z", z[idx].numpy())
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _spread(experts: torch.Tensor, sizes: torch.Tensor) -> tuple[int, float, float, float]:
    """``(largest expert, its share, entropy in bits, enrichment)`` of the experts the tokens went to;
    enrichment is the largest share over that expert's share of all tokens (``sizes``)."""
    counts = torch.bincount(experts, minlength=sizes.numel()).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    best = int(counts.argmax())
    return best, p[best].item(), float(-(nz * nz.log2()).sum()), (p[best] / (sizes[best] / sizes.sum())).item()


def tail_routing(study, neuron: int, on: str = "held_out", threshold: float = TAIL_SIGMA, n_control: int = 200,
                 seed: int = 0) -> pd.DataFrame:
    """Whether the router separates ``neuron``'s tails: how its tail tokens spread over the experts.

    One row per tail (``lower``: z < −threshold, ``upper``: z > threshold, ``both``): ``tail_tokens``,
    ``largest_expert`` and ``largest_share`` (the share of the tail in the expert holding most of it),
    ``expert_share`` (that expert's share of all tokens), ``enrichment`` (``largest_share / expert_share``:
    1 when the tail is spread like the tokens), ``entropy`` (bits; 0 = all in one expert). The control
    deals the tokens into groups of the experts' own sizes at random (``n_control`` seeded draws):
    ``control_share``, ``control_enrichment`` and ``control_entropy`` (means), and ``p_share`` /
    ``p_enrichment``: the share of draws reaching the router's value or more (small: the router gathers
    the tail more than chance does). With unequal experts a large expert takes most of any tail by
    chance, so read ``largest_share`` next to its control, and ``enrichment`` for small experts.
    """
    threshold = check_float(threshold, "threshold", 0, None, low_open=True)
    n_control, seed = check_int(n_control, "n_control"), check_int(seed, "seed", minimum=0)
    z = standardize(_dense_neuron(study, neuron, on))
    labels = study.labels(on).cpu()
    sizes = torch.bincount(labels, minlength=study.expansion.n_experts).double()
    gen = torch.Generator().manual_seed(seed)
    draws = [labels[torch.randperm(labels.numel(), generator=gen)] for _ in range(n_control)]
    rows = []
    for tail, mask in (("lower", z < -threshold), ("upper", z > threshold), ("both", z.abs() > threshold)):
        n = int(mask.sum())
        row = dict.fromkeys(("largest_share", "expert_share", "enrichment", "entropy", "control_share",
                             "control_enrichment", "control_entropy", "p_share", "p_enrichment"), math.nan)
        row.update(tail=tail, tail_tokens=n, largest_expert=None)
        if n:
            expert, share, entropy, enrichment = _spread(labels[mask], sizes)
            control = np.array([_spread(d[mask], sizes)[1:] for d in draws])
            row.update(largest_expert=expert, largest_share=share, expert_share=(sizes[expert] / sizes.sum()).item(),
                       enrichment=enrichment, entropy=entropy, control_share=float(control[:, 0].mean()),
                       control_enrichment=float(control[:, 2].mean()), control_entropy=float(control[:, 1].mean()),
                       p_share=float((control[:, 0] >= share - 1e-12).mean()),
                       p_enrichment=float((control[:, 2] >= enrichment - 1e-12).mean()))
        rows.append(row)
    columns = ["tail", "tail_tokens", "largest_expert", "largest_share", "expert_share", "enrichment", "entropy",
               "control_share", "control_enrichment", "control_entropy", "p_share", "p_enrichment"]
    return pd.DataFrame(rows)[columns]
