"""One-shot pruning: magnitude, Wanda and SparseGPT, unstructured or N:M, on all rows or a neuron subset.

Weights are handled as ``[out, in]`` (one row per neuron), inputs as ``[tokens, in]``. Sparsity is a
fraction in ``[0, 1)`` or ``"N:M"`` (n zeros in every group of m consecutive input columns, per row).
The number of zeros is exact: ``round(fraction · count)`` of each SparseGPT column block (over the rows
being pruned), of each row for Wanda, of the whole (selected) matrix for magnitude.

    w = wnb.prune_weight(weight, inputs, method="sparsegpt", sparsity=0.5)
    with wnb.pruned(lm, method="wanda", sparsity="2:4", calib=calib):
        ppl = wnb.perplexity(lm, held_out)
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from wnb.errors import WnbError
from wnb.model.state import changed
from wnb.quantize import check_quant, fit_grid, quant_label, quantize, round_to_grid

METHODS = ("magnitude", "wanda", "sparsegpt")
CRITERIA = ("wd", "random", "mean", "variance", "weight_norm")
MAX_DAMPING_RAISES = 12
_HESSIAN_CHUNK = 4096
_SUB_BLOCK = 32
_GRAM_STRIP = 384  # rows of xᵀx per product in SparseGPT.add_batch


# ---------------------------------------------------------------- arguments

def parse_sparsity(sparsity) -> tuple[float, int, int]:
    """``(fraction, n, m)``: ``n = m = 0`` for unstructured sparsity, else n zeros in every m columns.

    Accepts a number in ``[0, 1)``, a string such as ``"0.5"`` or ``"50%"``, or ``"N:M"`` with
    ``1 <= N < M``.
    """
    if isinstance(sparsity, bool):
        raise WnbError(f"sparsity must be a fraction in [0, 1) or 'N:M' such as '2:4' (got {sparsity!r})")
    if isinstance(sparsity, str):
        text = sparsity.strip()
        nm = re.fullmatch(r"(\d+)\s*:\s*(\d+)", text)
        if nm:
            n, m = int(nm.group(1)), int(nm.group(2))
            if not 1 <= n < m:
                raise WnbError(f"N:M sparsity needs 1 <= N < M (n zeros in every m weights); got {sparsity!r}")
            return n / m, n, m
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise WnbError(f"sparsity {sparsity!r} is neither a fraction in [0, 1) nor 'N:M' such as '2:4'") from None
        sparsity = value
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise WnbError(f"sparsity must be a fraction in [0, 1) or 'N:M' such as '2:4' (got {sparsity!r})") from None
    if not 0 <= value < 1:  # also refuses NaN
        raise WnbError(f"sparsity must be in [0, 1) (the fraction of weights set to zero); got {sparsity!r}")
    return value, 0, 0


def sparsity_label(sparsity) -> str:
    """A short label: ``"50%"`` or ``"2:4"``."""
    fraction, n, m = parse_sparsity(sparsity)
    return f"{n}:{m}" if m else f"{100 * fraction:g}%"


def check_method(method: str) -> str:
    if method not in METHODS:
        raise WnbError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def check_nm(m: int, columns: int, what: str = "the layer") -> None:
    if m and columns % m:
        raise WnbError(f"N:M sparsity with M = {m} needs the input width to be a multiple of {m}, "
                       f"but {what} has {columns} inputs")


def check_rows(neurons, n_rows: int) -> torch.Tensor | None:
    """Validate a neuron subset (indices or a boolean mask); return sorted unique indices, or None for all."""
    if neurons is None:
        return None
    idx = torch.as_tensor(neurons)
    if idx.numel() == 0 and idx.dim() <= 1:
        return torch.empty(0, dtype=torch.long)
    if idx.dtype == torch.bool:
        if idx.shape != (n_rows,):
            raise WnbError(f"a boolean neuron mask must have one entry per neuron ({n_rows}); got shape "
                           f"{tuple(idx.shape)}")
        return torch.nonzero(idx).flatten()
    if idx.dtype.is_floating_point or idx.dim() > 1:
        raise WnbError("neurons must be a 1-D list of integer neuron indices or a boolean mask")
    idx = idx.flatten().long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= n_rows):
        raise WnbError(f"neuron indices must be in [0, {n_rows}); got {idx.min().item()}..{idx.max().item()}")
    return torch.unique(idx)


def check_weight(weight: torch.Tensor, what: str = "the weight") -> torch.Tensor:
    """Refuse a weight pruning cannot use: complex (it would be pruned as its real part) or holding NaN or
    infinite values (SparseGPT spreads one over its row; magnitude keeps it)."""
    if weight.is_complex():
        raise WnbError(f"{what} is complex ({str(weight.dtype).removeprefix('torch.')}); pruning works on real "
                       "weights only (float32, float16, bfloat16)")
    finite = torch.isfinite(weight.detach())
    if not finite.all():
        bad = (~finite).nonzero()
        raise WnbError(f"{what} holds {bad.shape[0]:,} NaN or infinite value(s) (the first at [row, column] "
                       f"{bad[0].tolist()}); pruning needs finite weights: check how the model was loaded or changed")
    return weight


def _count(fraction: float, total: int) -> int:
    return min(total, int(round(fraction * total)))


def _as_inputs(inputs, columns: int) -> torch.Tensor:
    if inputs is None:
        raise WnbError("this pruning method needs calibration inputs of the layer ([tokens, d_in]); "
                       "capture them with wnb.capture(lm, [layer], calib)")
    inputs = getattr(inputs, "inputs", inputs)  # an Activations object works too
    if inputs is None:
        raise WnbError("the activations hold no inputs; capture with inputs=True")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.shape[-1] != columns:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise WnbError(f"inputs must be [tokens, {columns}] to match the weight's input width; got {shape}")
    inputs = inputs.reshape(-1, columns)
    if inputs.shape[0] == 0:
        raise WnbError("no calibration tokens were given")
    return inputs


# ---------------------------------------------------------------- masks

def _nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True at the n lowest scores of every group of m consecutive columns, per row."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    low = torch.topk(groups, n, dim=2, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, low, True)
    return mask.reshape(rows, cols)


def _lowest_mask(scores: torch.Tensor, k: int, dim: int | None = None) -> torch.Tensor:
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
        return _nm_mask(scores, n, m)
    return _lowest_mask(scores, _count(fraction, scores.numel()))


def wanda_scores(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · ‖X_j‖₂`` with the column norm over all calibration tokens (float64 accumulation)."""
    squares = ColumnSquares(weight.shape[1], weight.device)
    squares.add_batch(inputs)
    return _wanda_scores(weight, squares.sums)


def _wanda_scores(weight: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().double() * squares.to(weight.device).sqrt()[None]


def wanda_mask(weight: torch.Tensor, inputs: torch.Tensor, sparsity=0.5) -> torch.Tensor:
    """Boolean mask (True = pruned) of the lowest Wanda scores per row, or n of every m per row."""
    return _wanda_mask(weight, wanda_scores(weight, _as_inputs(inputs, weight.shape[1])), sparsity)


def _wanda_mask(weight: torch.Tensor, scores: torch.Tensor, sparsity) -> torch.Tensor:
    if not torch.isfinite(scores).all():
        raise WnbError("the calibration inputs (or the weight) hold NaN or infinite values; Wanda cannot use them")
    fraction, n, m = parse_sparsity(sparsity)
    check_nm(m, weight.shape[1])
    if m:
        return _nm_mask(scores, n, m)
    return _lowest_mask(scores, _count(fraction, scores.shape[1]), dim=1)


class ColumnSquares:
    """``Σ x_j²`` per input column (float64), accumulated batch by batch: all Wanda needs of the inputs."""

    def __init__(self, columns: int, device=None):
        self.sums = torch.zeros(columns, dtype=torch.float64, device=device)

    def add_batch(self, inputs: torch.Tensor) -> None:
        for chunk in inputs.reshape(-1, inputs.shape[-1]).split(_HESSIAN_CHUNK):
            self.sums += chunk.float().square().sum(0, dtype=torch.float64).to(self.sums.device)


# ---------------------------------------------------------------- SparseGPT

class SparseGPT:
    """SparseGPT for one layer, as an accumulator: ``add_batch`` the layer's inputs, then ``prune``.

    ``H = 2/N · Σ x xᵀ`` is kept in float64 (each chunk's product is formed in float32 and summed in
    float64). ``prune`` returns the pruned ``[out, in]`` weight (float32, on the weight's device) and
    sets ``damping`` (the fraction of ``mean(diag H)`` finally added to the diagonal, ``percdamp`` unless
    Cholesky needed more) and ``dead`` (inputs that were always zero).
    """

    def __init__(self, weight: torch.Tensor):
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise WnbError("SparseGPT needs a 2-D [out, in] weight tensor")
        self.weight = check_weight(weight).detach()
        self.rows, self.columns = weight.shape
        self.device = weight.device
        self.H = torch.zeros(self.columns, self.columns, dtype=torch.float64, device=self.device)
        self.nsamples = 0
        self.damping: float | None = None
        self.dead: torch.Tensor | None = None

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Accumulate the layer inputs ``[n, in]`` (any leading shape ``[..., in]``) into the Hessian."""
        x = _as_inputs(inputs, self.columns)
        for chunk in x.split(_HESSIAN_CHUNK):
            _add_upper_gram(self.H, chunk.to(self.device, torch.float32))
        self.nsamples += x.shape[0]

    def hessian(self) -> torch.Tensor:
        """``2/N · Σ x xᵀ`` (float64), exactly symmetric."""
        if self.nsamples == 0:
            raise WnbError("SparseGPT has no calibration inputs yet; call add_batch(inputs) first")
        return (torch.triu(self.H) + torch.triu(self.H, 1).T) * (2.0 / self.nsamples)

    def prune(self, sparsity=0.5, blocksize: int = 128, percdamp: float = 0.01, rows=None,
              dtype: torch.dtype = torch.float32, bits: int | None = None,
              group_size: int | None = None) -> torch.Tensor:
        """Prune the weight (only ``rows`` if given; the others are returned unchanged).

        Columns are processed in blocks of ``blocksize``; per block the mask drops the
        ``round(sparsity · rows · block)`` entries with the smallest ``w² / [H⁻¹]_jj²`` (one threshold
        across the rows), or for N:M the n smallest of every m columns of each row, and each column's
        error is pushed onto the later columns (OBS update). ``dtype`` is the precision of that loop.

        ``bits`` (2 to 8) also quantizes every kept weight, as the sweep reaches its column, to the
        min-max grid of its row (:mod:`wnb.quantize`) fitted on the dense row before pruning (the
        reference code's ``--wbits``), or with ``group_size`` on each group's columns as they are when
        the sweep reaches the group's first column (OBS-updated by the earlier columns, not yet pruned;
        GPTQ reads them as of the start of the lazy-update block instead). The error ``w − q(w)`` of a
        kept weight is pushed onto the later columns like the pruning error ``w`` of a pruned one. With
        ``bits`` and sparsity 0 this is GPTQ.
        """
        fraction, n, m = parse_sparsity(sparsity)
        check_nm(m, self.columns)
        bits, group_size = check_quant(bits, group_size, self.columns)
        if not isinstance(blocksize, int) or blocksize < 1 or (m and blocksize % m):
            raise WnbError(f"blocksize must be a positive integer{' and a multiple of M = ' + str(m) if m else ''} "
                           f"(got {blocksize!r})")
        if not percdamp >= 0:
            raise WnbError(f"percdamp must be >= 0 (got {percdamp!r})")
        row_idx = check_rows(rows, self.rows)
        H = self.hessian()
        if not torch.isfinite(torch.diag(H)).all():  # a NaN or inf input makes its diagonal entry non-finite
            raise WnbError("the calibration inputs hold NaN or infinite values; SparseGPT cannot use them")
        out = self.weight.to(torch.float32).clone()
        if (fraction == 0 and bits is None) or (row_idx is not None and row_idx.numel() == 0):
            self.damping = percdamp
            return out
        W = (out if row_idx is None else out[row_idx]).to(dtype)
        grid = None
        if bits is not None and group_size is None:  # per channel: fitted on the dense rows
            grid = tuple(t[:, 0] for t in fit_grid(W, bits))
        dead = torch.diag(H) == 0
        self.dead = torch.nonzero(dead).flatten().cpu()
        H[dead, dead] = 1.0
        W[:, dead] = 0
        hinv = self._inverse_factor(H, percdamp).to(dtype)
        W = _sparsegpt_blocks(W, hinv, fraction, n, m, blocksize, bits=bits, group_size=group_size, grid=grid)
        if row_idx is None:
            return W.float()
        out[row_idx] = W.float()
        return out

    def _inverse_factor(self, H: torch.Tensor, percdamp: float) -> torch.Tensor:
        """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` (``(H + λI)⁻¹ = UᵀU``), raising λ tenfold until
        the factorization succeeds.

        With ``J`` the reversal permutation and ``J(H + λI)J = LLᵀ``, ``U = J L⁻¹ J`` (upper triangular,
        positive diagonal): one Cholesky and one triangular inverse, without forming ``(H + λI)⁻¹``.
        """
        mean_diag = torch.diag(H).mean().item()
        flipped = H.flip(0, 1)
        eye = torch.eye(self.columns, dtype=H.dtype, device=H.device)
        damping = percdamp
        for _ in range(MAX_DAMPING_RAISES + 1):
            lower, info = torch.linalg.cholesky_ex(flipped + (damping * mean_diag) * eye)
            if info.item() == 0:
                inverse = torch.linalg.solve_triangular(lower, eye, upper=False)
                if torch.isfinite(inverse.diagonal()).all():
                    self.damping = damping
                    return inverse.flip(0, 1)
            damping = damping * 10 if damping > 0 else 1e-6
        raise WnbError(f"the Hessian stayed singular even with damping {damping / 10:g} · mean(diag H); "
                       "give more calibration tokens")


def _add_upper_gram(H: torch.Tensor, x: torch.Tensor, strip: int = _GRAM_STRIP) -> None:
    """``H += xᵀx`` on and above the diagonal only, strip of rows by strip of rows (the rest of ``H`` is
    left as it is): about 5/8 of the work of the full product for a 1536-wide input, which on a CPU is
    much of what whole-model SparseGPT spends outside the model itself."""
    columns = x.shape[1]
    if columns <= strip:
        H += (x.T @ x).double()
        return
    xt = x.T.contiguous()
    for i in range(0, columns, strip):
        H[i:i + strip, i:] += (xt[i:i + strip] @ x[:, i:]).double()


def _sparsegpt_blocks(W: torch.Tensor, hinv: torch.Tensor, fraction: float, n: int, m: int,
                      blocksize: int, bits: int | None = None, group_size: int | None = None,
                      grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The SparseGPT column sweep on ``W [rows, cols]`` with ``hinv`` the upper Cholesky factor of H⁻¹.

    The sweep runs on ``Wᵀ`` so that every rank-1 OBS update touches contiguous memory (on CPU, an
    in-place update of a column slice of a row-major matrix is a slow strided loop).

    With ``bits``, each column's kept weights become ``q(w)`` on the grid ``(scale, zero)`` (``[rows]``
    each; per channel: ``grid``, with ``group_size``: fitted on each group's current columns when the
    sweep reaches it) and the error ``(w − q) / d`` (pruned: ``q = 0``) is what gets pushed on.
    """
    WT = W.T.contiguous()  # [cols, rows]: row j of WT is column j of W
    cols = WT.shape[0]
    quant = bits is not None
    if quant and grid is not None:
        q_scale, q_zero = grid
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = WT[i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Q1 = torch.empty_like(W1) if quant else None
        Hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if m:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            scale = torch.zeros_like(W1)
        else:
            mask1 = _lowest_mask(W1.square() / d.square()[:, None], _count(fraction, W1.numel()))
            scale = mask1 / d[:, None]
        # err_i = (w_i − q_i) / d_i = w_i · mask_i / d_i; pushed onto the later columns. Columns go in
        # sub-blocks of ~32: rank-1 updates stay inside the sub-block, the rest of the block gets one
        # matmul per sub-block (same arithmetic, far less memory traffic).
        step = m * max(1, _SUB_BLOCK // m) if m else _SUB_BLOCK
        for s1 in range(0, i2 - i1, step):
            s2 = min(s1 + step, i2 - i1)
            for i in range(s1, s2):
                if m and i % m == 0:
                    scores = W1[i:i + m].square() / d[i:i + m].square()[:, None]
                    mask1[i:i + m] = _nm_mask(scores.T, n, m).T
                    scale[i:i + m] = mask1[i:i + m] / d[i:i + m, None]
                if not quant:
                    err = torch.mul(W1[i], scale[i], out=Err1[i])
                else:
                    if group_size is not None and (i1 + i) % group_size == 0:
                        now = _columns_now(WT, W1, Err1, hinv, i1, i2, s1, s2, i, group_size)
                        q_scale, q_zero = (t[:, 0] for t in fit_grid(now.T, bits))
                    q = torch.masked_fill(round_to_grid(W1[i], q_scale, q_zero, bits), mask1[i], 0)
                    Q1[i] = q
                    err = torch.sub(W1[i], q, out=Err1[i]).div_(d[i])
                W1[i + 1:s2].addr_(Hinv1[i, i + 1:s2], err, alpha=-1)
            if s2 < i2 - i1:
                W1[s2:].addmm_(Hinv1[s1:s2, s2:].T, Err1[s1:s2], alpha=-1)
        if quant:
            WT[i1:i2] = Q1
        else:
            W1.masked_fill_(mask1, 0)
            WT[i1:i2] = W1
        if i2 < cols:
            WT[i2:].addmm_(hinv[i1:i2, i2:].T, Err1, alpha=-1)
    return WT.T


def _columns_now(WT, W1, Err1, hinv, i1, i2, s1, s2, i, size) -> torch.Tensor:
    """Columns ``i1 + i .. i1 + i + size − 1`` of the weight (``[size, rows]``, rows of ``Wᵀ``) as they are
    when the sweep reaches column ``i1 + i``: with every earlier column's OBS update applied, also the
    ones the lazy batching still holds back (later sub-blocks of the block wait for the current
    sub-block's errors ``s1 .. i − 1``; later blocks for the block's errors ``0 .. i − 1``)."""
    end = i1 + i + size
    parts = [W1[i:min(s2, end - i1)]]  # the current sub-block is up to date
    if end - i1 > s2 and s2 < i2 - i1:
        upto = min(i2 - i1, end - i1)
        parts.append(W1[s2:upto] - hinv[i1 + s1:i1 + i, i1 + s2:i1 + upto].T @ Err1[s1:i])
    if end > i2:
        parts.append(WT[i2:end] - hinv[i1:i1 + i, i2:end].T @ Err1[:i])
    return torch.cat(parts)


# ---------------------------------------------------------------- one layer

def prune_weight(weight: torch.Tensor, inputs=None, method: str = "sparsegpt", sparsity=0.5, neurons=None,
                 blocksize: int = 128, percdamp: float = 0.01, bits: int | None = None,
                 group_size: int | None = None) -> torch.Tensor:
    """Return a pruned copy ``[out, in]`` (float32, on the weight's device) of an ``[out, in]`` weight.

    ``inputs [tokens, in]`` are the layer's calibration inputs (needed by Wanda and SparseGPT).
    ``neurons`` (indices or a boolean mask) restricts pruning to those rows; every other row is
    returned unchanged, bit for bit. ``blocksize`` and ``percdamp`` are SparseGPT's.

    ``bits`` (2 to 8) quantizes the pruned rows too, on a min-max grid per row (``group_size``: per
    group of that many columns; see :mod:`wnb.quantize`): SparseGPT inside its sweep, propagating the
    quantization error (:meth:`SparseGPT.prune`); Wanda and magnitude by rounding the masked weights to
    the nearest point of the grid fitted on the dense rows (zeros stay zeros).

    A complex weight, or one holding NaN or infinite values, is refused (WnbError), as by every pruning
    method (:class:`SparseGPT`, :func:`prune_layer`, :func:`pruned`, the experts of Sparse Expansion).
    """
    from wnb.core.checks import check_float, check_int

    check_method(method)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise WnbError("weight must be a 2-D [out, in] tensor (use wnb.layer_weight(lm, name))")
    check_weight(weight)
    percdamp = check_float(percdamp, "percdamp", 0)
    blocksize = check_int(blocksize, "blocksize")
    _, n, m = parse_sparsity(sparsity)
    check_nm(m, weight.shape[1], "the weight")
    bits, group_size = check_quant(bits, group_size, weight.shape[1])
    rows = check_rows(neurons, weight.shape[0])
    if method != "magnitude":
        inputs = _as_inputs(inputs, weight.shape[1])
    if method == "sparsegpt":
        sgpt = SparseGPT(weight)
        sgpt.add_batch(inputs)
        return sgpt.prune(sparsity, blocksize=blocksize, percdamp=percdamp, rows=rows, bits=bits,
                          group_size=group_size)
    return _masked(weight, rows, lambda part: magnitude_mask(part, sparsity) if method == "magnitude"
                   else wanda_mask(part, inputs, sparsity), bits=bits, group_size=group_size)


def _masked(weight: torch.Tensor, rows, mask_of, bits: int | None = None, group_size: int | None = None) -> torch.Tensor:
    """A float32 copy of ``weight`` with ``mask_of(rows of it)`` zeroed in those rows (all if None); with
    ``bits``, those rows then rounded to the nearest point of the grid fitted on their dense values."""
    out = weight.detach().to(torch.float32).clone()
    part = out if rows is None else out[rows]
    if part.numel() == 0:
        return out
    if bits is None:
        part = part.masked_fill(mask_of(part), 0)
    else:
        mask = mask_of(part)
        part = quantize(part.masked_fill(mask, 0), bits, group_size,
                        grid=fit_grid(part, bits, group_size)).masked_fill_(mask, 0)
    if rows is None:
        return part
    out[rows] = part
    return out


def prune_layer(lm, layer: str, acts, method: str = "sparsegpt", sparsity=0.5, neurons=None,
                fraction: float = 0.03, seed: int = 0, bits: int | None = None, group_size: int | None = None,
                **kw) -> torch.Tensor:
    """Pruned ``[out, in]`` weight of one layer from captured activations (``wnb.tracing.capture``); the model is
    not changed. ``neurons`` may be indices, a boolean mask or a selection criterion (see
    :func:`select_neurons`, which then uses the captured outputs). ``bits`` and ``group_size``
    quantize as well (:func:`prune_weight`)."""
    from wnb.model.architectures import check_layers, layer_weight
    from wnb.model.lm import require_local

    require_local(lm, "pruning")
    check_method(method)
    (layer,) = check_layers(lm, [layer])
    if layer not in acts:
        raise WnbError(f"layer {layer!r} was not captured; captured: {', '.join(acts) or 'none'}")
    act = acts[layer]
    weight = check_weight(layer_weight(lm, layer).detach(), f"the weight of {layer}")
    check_quant(bits, group_size, weight.shape[1], layer)
    if isinstance(neurons, str):
        if act.outputs is None and neurons in ("wd", "mean", "variance"):
            raise WnbError(f"selecting neurons by {neurons!r} needs the layer's outputs; capture with outputs=True")
        neurons = select_neurons(neurons, outputs=act.outputs, weight=weight, fraction=fraction, seed=seed)
    return prune_weight(weight, act.inputs, method, sparsity, neurons=neurons, bits=bits, group_size=group_size, **kw)


# ---------------------------------------------------------------- neuron subsets (paper Fig. 3)

def select_neurons(criterion: str, outputs: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                   fraction: float = 0.03, k: int | None = None, seed: int = 0) -> torch.Tensor:
    """Indices of ``fraction`` of a layer's neurons (at least one; ``k`` overrides), chosen by:

    ``"wd"`` highest Wasserstein distance to a Gaussian of the outputs, ``"random"`` uniformly (seeded),
    ``"mean"`` largest absolute output mean, ``"variance"`` largest output variance, ``"weight_norm"``
    largest L2 norm of the weight row. ``outputs`` is ``[tokens, n_neurons]``; ``weight`` ``[out, in]``.
    Highest score first (random: in drawn order).
    """
    from wnb.scoring.wasserstein import top_neurons, wasserstein_to_gaussian

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


# ---------------------------------------------------------------- whole model

@dataclass
class LayerReport:
    """What pruning did to one layer."""

    layer: str
    method: str
    sparsity: str
    zeros: float          # fraction of the layer's weights that are zero after pruning
    neurons: int          # rows pruned
    damping: float | None  # SparseGPT: fraction of mean(diag H) added (raised from percdamp if needed)
    seconds: float
    bits: int | None = None        # quantization of the pruned rows (None: not quantized)
    group_size: int | None = None  # columns per quantization grid (None: one grid per row)


class PruneReport(dict):
    """``{layer: LayerReport}`` in pruning order; ``table()`` gives a DataFrame."""

    def table(self):
        """One row per layer; the ``bits`` and ``group_size`` columns only when some layer was quantized."""
        import pandas as pd

        frame = pd.DataFrame([vars(r) for r in self.values()])
        for col in ("bits", "group_size"):
            if col in frame and frame[col].isna().all():
                frame = frame.drop(columns=col)
        return frame


def _plan_neurons(lm, layers, neurons):
    """Validate ``neurons`` for :func:`pruned`: None, a criterion name, or ``{layer: indices}``."""
    from wnb.model.architectures import layer_weight

    if neurons is None or isinstance(neurons, str):
        if isinstance(neurons, str) and neurons not in CRITERIA:
            raise WnbError(f"unknown neuron selection {neurons!r}; choose one of {', '.join(CRITERIA)} "
                           "or pass {layer: indices}")
        return neurons
    if not isinstance(neurons, dict):
        raise WnbError("neurons must be None (all rows), a selection criterion "
                       f"({', '.join(CRITERIA)}) or a dict {{layer: indices}}")
    missing = [name for name in layers if name not in neurons]
    if missing:
        raise WnbError(f"neurons has no entry for layer(s) {', '.join(missing[:3])}; give one per pruned layer "
                       "or pass layers= to prune only the layers in the dict")
    return {name: check_rows(neurons[name], layer_weight(lm, name).shape[0]) for name in layers}


def streams_inputs(method: str, neurons=None) -> bool:
    """Whether whole-model pruning accumulates what the method needs of the inputs batch by batch
    (SparseGPT's Hessians, Wanda's column norms) instead of keeping each block's calibration inputs:
    it does, unless neurons are chosen by a criterion on the layer's outputs."""
    return method in ("sparsegpt", "wanda") and not isinstance(neurons, str)


class _Accumulators:
    """Per-layer statistics of the inputs fed batch by batch during a walk (``walk(on_inputs=...)``):
    SparseGPT Hessians or Wanda column sums of squares, so no block's calibration inputs are ever
    kept whole. Layers fed the very same tensor (Llama's gate and up projections) share one."""

    def __init__(self, lm, method: str):
        self.lm = lm
        self.method = method
        self.clear()

    def clear(self) -> None:
        self.acc: dict[str, SparseGPT | ColumnSquares] = {}
        self.alias: dict[str, str] = {}
        self._last: tuple[torch.Tensor, str] | None = None

    def __call__(self, name: str, x: torch.Tensor) -> None:
        from wnb.model.architectures import layer_weight

        if name not in self.acc and name not in self.alias:
            last = self._last
            if (last is not None and last[0].data_ptr() == x.data_ptr() and last[0].shape == x.shape
                    and torch.equal(last[0], x)):
                self.alias[name] = last[1]
            else:
                weight = layer_weight(self.lm, name).detach()
                self.acc[name] = (SparseGPT(weight) if self.method == "sparsegpt"
                                  else ColumnSquares(weight.shape[1], weight.device))
        if name in self.acc:
            self.acc[name].add_batch(x)
        self._last = (x, self.alias.get(name, name))

    def __getitem__(self, name: str) -> SparseGPT | ColumnSquares:
        return self.acc[self.alias.get(name, name)]


def check_untied(lm, layers) -> None:
    """Refuse layers whose weight is shared with another module (``lm_head`` tied to the input embedding):
    pruning one would silently prune the other too."""
    from wnb.model.architectures import module

    owners: dict[int, list[str]] = {}
    for name, param in lm.model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for name in layers:
        shared = [n for n in owners.get(id(module(lm, name).weight), []) if not n.startswith(name + ".")]
        if shared:
            raise WnbError(f"{name}'s weight is tied to {', '.join(shared)} (the model shares them), so pruning it "
                           "would prune that too; pick another layer (e.g. the FFN layers)")


@contextmanager
def pruned(lm, method: str = "sparsegpt", sparsity=0.5, calib=None, layers=None, neurons=None,
           fraction: float = 0.03, seed: int = 0, blocksize: int = 128, percdamp: float = 0.01,
           batch_size: int = 8, progress: bool = True, keep_inputs: bool = False, true_sequential: bool = True,
           bits: int | None = None, group_size: int | None = None):
    """Prune layers of ``lm`` (default: every FFN layer) for the duration of a ``with`` block.

    ``bits`` (2 to 8) also quantizes the pruned weights, per output channel or per ``group_size``
    columns (:func:`prune_weight`; SparseGPT propagates the quantization error inside its sweep, Wanda
    and magnitude round to nearest); ``None`` (default) leaves them in full precision.

    Pruning is sequential: the calibration inputs of block ``l`` are computed through the blocks
    ``< l`` as already pruned (``wnb.walk``), and within a block (``true_sequential=True``) through
    its layers already pruned: down_proj is calibrated on the pruned gate and up projections' outputs.
    ``true_sequential=False`` calibrates all of a block's layers on the block as it entered (the
    reference SparseGPT and Wanda code; llm-compressor). ``neurons`` restricts pruning to rows: ``{layer: indices}``,
    or a criterion of :func:`select_neurons` applied per layer to its calibration outputs with
    ``fraction`` and ``seed`` (random draws differ per layer). On exit, also after an exception or a
    KeyboardInterrupt, every dense weight is restored bit for bit. Yields a :class:`PruneReport`.

    SparseGPT and Wanda accumulate what they need of each layer's inputs (Hessian, column norms) batch
    by batch while its block runs, so memory does not grow with the number of calibration tokens;
    neuron criteria and ``keep_inputs=True`` keep a block's calibration inputs in CPU memory instead
    (same result up to summation order).
    """
    from wnb.data.windows import check_windows
    from wnb.model.architectures import check_layers, ffn_layers, layer_weight, module
    from wnb.model.lm import require_local

    from wnb.core.checks import check_float, check_int

    require_local(lm, "pruning")
    check_method(method)
    batch_size = check_int(batch_size, "batch_size")
    blocksize = check_int(blocksize, "blocksize")
    percdamp = check_float(percdamp, "percdamp", 0)
    label = sparsity_label(sparsity)
    _, _, m = parse_sparsity(sparsity)
    layers = check_layers(lm, list(neurons) if isinstance(neurons, dict) and layers is None
                          else ffn_layers(lm) if layers is None else layers)
    for name in layers:
        check_nm(m, layer_weight(lm, name).shape[1], name)
        bits, group_size = check_quant(bits, group_size, layer_weight(lm, name).shape[1], name)
        check_weight(layer_weight(lm, name), f"the weight of {name}")
    bits, group_size = check_quant(bits, group_size)
    check_untied(lm, layers)
    plan = _plan_neurons(lm, layers, neurons)
    needs_walk = method != "magnitude" or isinstance(plan, str)
    if needs_walk:
        if calib is None:
            raise WnbError(f"{method} pruning{' with neuron selection' if isinstance(plan, str) else ''} needs "
                           "calibration windows: pass calib= (from wnb.token_windows)")
        calib = check_windows(calib, lm)
    if isinstance(plan, str) and not 0 < fraction <= 1:
        raise WnbError(f"fraction must be in (0, 1] (got {fraction})")
    if blocksize < 1 or (m and blocksize % m):
        raise WnbError(f"blocksize must be a positive multiple of M (got {blocksize})")

    desc = f"prune {method} {label}" + (f" {quant_label(bits, group_size)}" if bits is not None else "")
    with changed(lm, f"pruned ({desc})"):  # holds the model; is_dense(lm) is False until restored
        dense = {name: module(lm, name).weight.detach().to("cpu", copy=True) for name in layers}
        report = PruneReport()
        bar = tqdm(total=len(layers), desc=desc, disable=not progress, leave=False)
        try:
            opts = dict(method=method, sparsity=sparsity, label=label, plan=plan, fraction=fraction, seed=seed,
                        blocksize=blocksize, percdamp=percdamp, report=report, bar=bar)
            if bits is not None:
                opts.update(bits=bits, group_size=group_size)
            if needs_walk:
                from wnb.tracing.sequential import walk

                stream = streams_inputs(method, plan) and not keep_inputs
                stats = _Accumulators(lm, method) if stream else None
                for _, inputs in walk(lm, calib, layers, batch_size=batch_size, progress=False, on_inputs=stats,
                                     true_sequential=true_sequential):
                    _prune_block(lm, inputs, stats=stats, **opts)
                    if stats is not None:
                        stats.clear()
            else:
                for name in layers:
                    _prune_block(lm, {name: None}, **opts)
            bar.close()
            yield report
        finally:
            bar.close()
            with torch.no_grad():
                for name, weight in dense.items():
                    module(lm, name).weight.copy_(weight)


def _prune_block(lm, inputs: dict, method, sparsity, label, plan, fraction, seed, blocksize, percdamp,
                 report, bar, stats: _Accumulators | None = None, bits: int | None = None,
                 group_size: int | None = None) -> None:
    """Prune the layers of one block given their calibration inputs (or the statistics of them
    accumulated during the walk, ``stats``); write the weights into the model."""
    from wnb.model.architectures import layer_weight, set_layer_weight

    shared: list[tuple[torch.Tensor, SparseGPT]] = []
    for name, x in inputs.items():
        start = time.perf_counter()
        weight = layer_weight(lm, name).detach()
        rows = _rows_for(lm, name, x, weight, plan, fraction, seed)
        damping = None
        if method == "sparsegpt":
            sgpt = SparseGPT(weight)
            same = (stats[name] if stats is not None else
                    next((s for xs, s in shared if xs.shape == x.shape and torch.equal(xs, x)), None))
            if same is None:  # gate_proj and up_proj see the same inputs: one Hessian for both
                sgpt.add_batch(x)
                shared.append((x, sgpt))
            else:
                sgpt.H, sgpt.nsamples = same.H, same.nsamples
            new = sgpt.prune(sparsity, blocksize=blocksize, percdamp=percdamp, rows=rows, bits=bits,
                             group_size=group_size)
            damping = sgpt.damping
        elif method == "wanda" and stats is not None:
            new = _masked(weight, rows, lambda part: _wanda_mask(part, _wanda_scores(part, stats[name].sums),
                                                                 sparsity), bits=bits, group_size=group_size)
        else:
            new = prune_weight(weight, x, method, sparsity, neurons=rows, bits=bits, group_size=group_size)
        set_layer_weight(lm, name, new)
        report[name] = LayerReport(layer=name, method=method, sparsity=label,
                                   zeros=(new == 0).double().mean().item(),
                                   neurons=weight.shape[0] if rows is None else rows.numel(),
                                   damping=damping, seconds=time.perf_counter() - start, bits=bits,
                                   group_size=group_size)
        bar.set_postfix_str(name, refresh=False)
        bar.update(1)


def _rows_for(lm, name, x, weight, plan, fraction, seed):
    if plan is None:
        return None
    if isinstance(plan, dict):
        return plan[name]
    from wnb.model.architectures import forward_order, layer_bias

    outputs = None
    if plan in ("wd", "mean", "variance"):
        outputs = x @ weight.to("cpu", torch.float32).T
        bias = layer_bias(lm, name)
        if bias is not None:
            outputs += bias.detach().to("cpu", torch.float32)
    layer_seed = int(seed) * 1_000_003 + forward_order(lm).index(name)
    return select_neurons(plan, outputs=outputs, weight=weight, fraction=fraction, seed=layer_seed)
