"""Where the negative mass sits across activations (Kong et al., ICLR 2026; PAPER.md §8): per layer, the share
of the Wasserstein distance that lies below the raw zero of the first FFN projection's outputs
(:func:`wnb.wasserstein_split` at ``y = 0``), for the model's own activation — smooth (SiLU, GELU) in Llama,
Qwen, Pythia, GPT-2, ReLU in OPT, the follow-up's contrast. A smooth activation passes small negative
pre-activations on, a ReLU zeroes them all, so only the former can use negative values to tell tokens apart.

    table = negative_mass(lm, calib)          # one row per block
    wnb.plots.negative_mass.negative_mass_plot({"SmolLM2": table, "OPT-125m": opt_table})
"""
from __future__ import annotations

import pandas as pd
import torch

from wnb.core.memory import available_memory
from wnb.data.positions import check_skip, drop_positions
from wnb.data.windows import check_windows
from wnb.errors import WnbError
from wnb.model.architectures import (
    activation_module,
    block_of,
    check_layers,
    first_ffn_layers,
    module,
)
from wnb.scoring.selection import check_fraction
from wnb.scoring.sign import wasserstein_split
from wnb.scoring.wasserstein import top_neurons
from wnb.tracing.capture import capture, split_by_memory

COLUMNS = ["block", "layer", "activation", "n_neurons", "n_tokens", "wd_mean", "share_below_zero",
           "median_share_below_zero", "top_share_below_zero", "frac_negative"]


def mass_row(outputs: torch.Tensor, fraction: float = 0.01) -> dict:
    """The columns of one layer from its outputs ``[tokens, neurons]`` (constant neurons left out):
    ``n_neurons, n_tokens, wd_mean``; ``share_below_zero`` = Σ WD below zero / Σ WD over the layer's neurons;
    ``median_share_below_zero`` (the median neuron's share); ``top_share_below_zero`` (the share over its top
    ``fraction`` by WD, the Wasserstein neurons); ``frac_negative`` (the mean share of outputs below zero)."""
    lower, upper = wasserstein_split(outputs, at="zero")
    wd = lower + upper
    ok = torch.isfinite(wd)
    if not ok.any():
        raise WnbError("every neuron of the layer is constant over these tokens; no WD to split")
    top = top_neurons(wd, fraction=fraction)
    return {"n_neurons": int(wd.numel()), "n_tokens": int(outputs.shape[0]), "wd_mean": float(wd[ok].mean()),
            "share_below_zero": float(lower[ok].sum() / wd[ok].sum()),
            "median_share_below_zero": float(torch.quantile(lower[ok] / wd[ok], 0.5)),
            "top_share_below_zero": float(lower[top].sum() / wd[top].sum()),
            "frac_negative": float((outputs < 0).double().mean())}


def negative_mass(lm, windows, layers=None, fraction: float = 0.01, max_tokens: int | None = None,
                  skip_first: int = 0, batch_size: int = 8, max_bytes: int | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Per first FFN projection (default: every block's; ``layers`` picks some), over the tokens of ``windows``
    (the first ``max_tokens``; ``skip_first`` positions of every window left out): ``block, layer,
    activation`` (the class of the activation that follows, e.g. ``SiLUActivation``, ``ReLU``) and
    :func:`mass_row`'s columns. Exact: the layers are captured in as few passes as ``max_bytes`` allows
    (default: 30% of the memory available). ``attrs``: the model's name and the settings."""
    check_fraction(fraction)
    layers = check_layers(lm, first_ffn_layers(lm) if layers is None else layers)
    activations = {name: type(module(lm, activation_module(lm, name))).__name__ for name in layers}
    windows = check_windows(windows, lm)
    seq_len, skip_first = check_skip(windows.shape[1], skip_first)
    n_tokens = windows.numel() if max_tokens is None else min(int(max_tokens), windows.numel())
    limit = int(0.3 * available_memory()) if max_bytes is None else int(max_bytes)
    rows = []
    for group in split_by_memory(lm, layers, n_tokens, limit):
        acts = capture(lm, group, windows, max_tokens=max_tokens, batch_size=batch_size, inputs=False,
                       progress=progress)
        for name in group:
            y = drop_positions(acts.pop(name).outputs, seq_len, skip_first)
            rows.append({"block": block_of(lm, name), "layer": name, "activation": activations[name],
                         **mass_row(y, fraction)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs.update(model=lm.name, fraction=fraction, skip_first=skip_first, n_tokens=n_tokens)
    return table
