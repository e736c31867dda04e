"""Rough time and memory of whole-model runs, said before they start (the app's size guard).

Time is counted in floating-point operations at a fixed rate per device kind: a forward pass costs
2 × (linear weights it passes through) per token; SparseGPT adds its Gram matrix (2 · tokens · d_in²),
the inverse (d_in³) and the column sweep (2 · d_in² · d_out) per layer, once per expert for Sparse
Expansion. The rates are what wnb reaches on a 2-core laptop CPU and a data-centre GPU; the result is
meant to tell minutes from hours, not to time anything.
"""
from __future__ import annotations

from wnb.errors import WnbError
from wnb.model.architectures import (
    block_of,
    decoder_blocks,
    layer_weight,
    linear_layers,
)

FLOP_RATE = {"cpu": 1e10, "mps": 1e12, "cuda": 2e13}  # operations per second, per device kind


def seconds(lm, flops: float) -> float:
    """``flops`` operations in seconds at the rate of the model's device kind."""
    kind = next(lm.model.parameters()).device.type
    return flops / FLOP_RATE.get(kind, FLOP_RATE["cpu"])


def forward_flops(lm, tokens: int, depth: int | None = None) -> float:
    """Operations of a forward pass over ``tokens`` tokens, through the first ``depth`` blocks only
    (a calibration pass stops after the deepest layer it changes) or the whole model with its head."""
    blocks = decoder_blocks(lm)
    total = 0.0
    for name in linear_layers(lm):
        try:
            inside = block_of(lm, name) < (len(blocks) if depth is None else depth)
        except WnbError:  # the head and other layers outside every block
            inside = depth is None
        if inside:
            total += layer_weight(lm, name).numel()
    return 2.0 * total * tokens


def prune_flops(lm, layers, tokens: int, method: str = "sparsegpt", n_experts: int = 1) -> float:
    """Operations of pruning ``layers`` on ``tokens`` calibration tokens (``n_experts`` experts each)."""
    total = 0.0
    for name in layers:
        d_out, d_in = layer_weight(lm, name).shape
        total += 2.0 * tokens * d_in  # input norms (Wanda) and the forward of the layer
        if method == "sparsegpt":
            total += 2.0 * tokens * d_in**2 + n_experts * (d_in**3 + 2.0 * d_in**2 * d_out)
    return total


def run_seconds(lm, layers, calib_tokens: int, held_tokens: int, method: str = "sparsegpt",
                n_experts: int = 1) -> float:
    """Rough seconds of one run: prune (or expand) ``layers`` on the calibration tokens, then a
    perplexity pass over the held-out tokens."""
    depth = max(block_of(lm, name) for name in layers) + 1
    flops = (forward_flops(lm, calib_tokens, depth) + prune_flops(lm, layers, calib_tokens, method, n_experts)
             + forward_flops(lm, held_tokens))
    return seconds(lm, flops)


def held_bytes(lm, layers, n_experts: int = 1, max_expert_bytes: int | None = None) -> int:
    """Bytes a run holds beside the model: the dense copies of the changed weights, one Gram matrix per
    layer, and the experts' weights (at most ``max_expert_bytes`` of them when an expansion is built in
    groups, as the app does)."""
    dense = experts = 0
    for name in layers:
        weight = layer_weight(lm, name)
        dense += weight.numel() * weight.element_size() + weight.shape[1] ** 2 * 4
        experts += weight.numel() * weight.element_size() * n_experts if n_experts > 1 else 0
    return dense + (experts if max_expert_bytes is None else min(experts, max_expert_bytes))
