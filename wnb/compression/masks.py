"""Which weights to zero: the lowest scores overall, per row, or n of every m columns; magnitude
(``|W|``) and Wanda (``|W_ij| · ‖X_j‖₂``, column norms accumulated batch by batch)."""
from __future__ import annotations

import torch

from wnb.compression.sparsity import as_inputs, check_nm, count_of, parse_sparsity
from wnb.errors import WnbError

INPUT_CHUNK = 4096  # calibration rows accumulated at once (Wanda's column norms, SparseGPT's Hessian)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True at the n lowest scores of every group of m consecutive columns, per row."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    low = torch.topk(groups, n, dim=2, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, low, True)
    return mask.reshape(rows, cols)


def lowest_mask(scores: torch.Tensor, k: int, dim: int | None = None) -> torch.Tensor:
    """True at the k lowest scores overall (``dim=None``) or along ``dim`` (per row for ``dim=1``).

    A k-th-value selection (linear time; ``topk`` with k near half the entries is several times
    slower on CPU): everything below the k-th value, then as many entries equal to it as are still
    missing, the first ones in index order, so that exactly k are chosen.
    """
    flat = dim is None
    values = scores.reshape(1, -1) if flat else scores.movedim(dim, -1)
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    kth = torch.kthvalue(values, k, dim=-1, keepdim=True).values
    mask = values < kth
    missing = k - mask.sum(-1, keepdim=True)
    ties = values == kth
    mask |= ties & (ties.cumsum(-1) <= missing)
    return mask.reshape(scores.shape) if flat else mask.movedim(-1, dim)


def magnitude_mask(weight: torch.Tensor, sparsity=0.5) -> torch.Tensor:
    """Boolean mask (True = pruned) of the smallest ``|W|``: over the whole matrix, or n of every m per row."""
    fraction, n, m = parse_sparsity(sparsity)
    check_nm(m, weight.shape[1])
    scores = weight.detach().abs().float()
    if m:
        return nm_mask(scores, n, m)
    return lowest_mask(scores, count_of(fraction, scores.numel()))


def wanda_scores(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · ‖X_j‖₂`` with the column norm over all calibration tokens (float64 accumulation)."""
    squares = ColumnSquares(weight.shape[1], weight.device)
    squares.add_batch(inputs)
    return wanda_scores_from_squares(weight, squares.sums)


def wanda_scores_from_squares(weight: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().double() * squares.to(weight.device).sqrt()[None]


def wanda_mask(weight: torch.Tensor, inputs: torch.Tensor, sparsity=0.5) -> torch.Tensor:
    """Boolean mask (True = pruned) of the lowest Wanda scores per row, or n of every m per row."""
    return mask_by_scores(weight, wanda_scores(weight, as_inputs(inputs, weight.shape[1])), sparsity)


def mask_by_scores(weight: torch.Tensor, scores: torch.Tensor, sparsity) -> torch.Tensor:
    if not torch.isfinite(scores).all():
        raise WnbError("the calibration inputs (or the weight) hold NaN or infinite values; Wanda cannot use them")
    fraction, n, m = parse_sparsity(sparsity)
    check_nm(m, weight.shape[1])
    if m:
        return nm_mask(scores, n, m)
    return lowest_mask(scores, count_of(fraction, scores.shape[1]), dim=1)


class ColumnSquares:
    """``Σ x_j²`` per input column (float64), accumulated batch by batch: all Wanda needs of the inputs."""

    def __init__(self, columns: int, device=None):
        self.sums = torch.zeros(columns, dtype=torch.float64, device=device)

    def add_batch(self, inputs: torch.Tensor) -> None:
        for chunk in inputs.reshape(-1, inputs.shape[-1]).split(INPUT_CHUNK):
            self.sums += chunk.float().square().sum(0, dtype=torch.float64).to(self.sums.device)
