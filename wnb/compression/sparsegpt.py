"""SparseGPT (PAPER.md §4) for one layer, as an accumulator fed the layer's calibration inputs: the
Hessian ``2/N · Σ x xᵀ`` in float64, the damped inverse's Cholesky factor, and the column sweep that
prunes (and, with ``bits``, quantizes) block by block, pushing each column's error onto the later ones."""
from __future__ import annotations

import torch

from wnb.compression.masks import INPUT_CHUNK, lowest_mask, nm_mask
from wnb.compression.quantize import check_quant, fit_grid, round_to_grid
from wnb.compression.sparsity import (
    as_inputs,
    check_nm,
    check_rows,
    check_weight,
    count_of,
    parse_sparsity,
)
from wnb.errors import WnbError

MAX_DAMPING_RAISES = 12




_SUB_BLOCK = 32
_GRAM_STRIP = 384  # rows of xᵀx per product in SparseGPT.add_batch


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
        x = as_inputs(inputs, self.columns)
        for chunk in x.split(INPUT_CHUNK):
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
        min-max grid of its row (:mod:`wnb.compression.quantize`) fitted on the dense row before pruning (the
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
        mask1, scale = _block_mask(W1, d, fraction, m)
        # err_i = (w_i − q_i) / d_i = w_i · mask_i / d_i; pushed onto the later columns. Columns go in
        # sub-blocks of ~32: rank-1 updates stay inside the sub-block, the rest of the block gets one
        # matmul per sub-block (same arithmetic, far less memory traffic).
        step = m * max(1, _SUB_BLOCK // m) if m else _SUB_BLOCK
        for s1 in range(0, i2 - i1, step):
            s2 = min(s1 + step, i2 - i1)
            for i in range(s1, s2):
                if m and i % m == 0:
                    scores = W1[i:i + m].square() / d[i:i + m].square()[:, None]
                    mask1[i:i + m] = nm_mask(scores.T, n, m).T
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


def _block_mask(W1: torch.Tensor, d: torch.Tensor, fraction: float, m: int):
    """A block's mask (True = pruned) and ``mask / d``: for unstructured sparsity the lowest ``w² / d²`` of the
    whole block at once; for N:M empty, filled group by group as the sweep reaches them."""
    if m:
        return torch.zeros_like(W1, dtype=torch.bool), torch.zeros_like(W1)
    mask = lowest_mask(W1.square() / d.square()[:, None], count_of(fraction, W1.numel()))
    return mask, mask / d[:, None]


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
