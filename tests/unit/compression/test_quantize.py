"""Joint sparsity + quantization (issue 15, item 1) against references written here from the definitions:
the min-max grid, a plain per-column SparseGPT + quantization loop (every OBS update applied at once, numpy
inverse), round-to-nearest of Wanda and magnitude masks, the storage accounting by hand, and copies of the
code paths as they were before quantization existed (``bits=None`` must give the same bits)."""
import math

import numpy as np
import pytest
import torch
from test_prune import make_layer

import wnb
import wnb.compression
import wnb.compression.masks
import wnb.compression.pruned as prune_mod
import wnb.experiments
import wnb.tracing
from wnb.compression.expansion import build_experts, expand_layer
from wnb.compression.masks import lowest_mask, nm_mask
from wnb.compression.prune import prune_weight
from wnb.compression.pruned import pruned
from wnb.compression.quantize import (
    check_quant,
    effective_bits,
    fit_grid,
    key_parts,
    mask_bits,
    quantize,
)
from wnb.compression.sparsegpt import _SUB_BLOCK, SparseGPT
from wnb.compression.sparsity import check_nm, check_rows, count_of, parse_sparsity
from wnb.errors import WnbError

# ---------------------------------------------------------------- references

def ref_grid(values: np.ndarray, bits: int):
    """Min-max asymmetric grid of each row of ``values [rows, g]`` (GPTQ's Quantizer, perchannel, sym=False),
    in the values' precision."""
    lo = np.minimum(values.min(1), 0).astype(values.dtype)
    hi = np.maximum(values.max(1), 0).astype(values.dtype)
    flat = (lo == 0) & (hi == 0)
    lo[flat], hi[flat] = -1, 1
    scale = (hi - lo) / values.dtype.type(2 ** bits - 1)
    return scale, np.round(-lo / scale)


def ref_q(w, scale, zero, bits):
    return scale * (np.clip(np.round(w / scale) + zero, 0, 2 ** bits - 1) - zero)


def reference_joint(weight, inputs, bits, sparsity="2:4", group_size=None, blocksize=128, percdamp=0.01):
    """SparseGPT + quantization as a straightforward loop over columns in float64: the upper Cholesky factor
    of H⁻¹; the N:M mask chosen when the loop reaches each group of m columns (unstructured: per block of
    ``blocksize`` columns at the block's start), from ``w² / [H⁻¹]_jj²``; each kept weight quantized on
    its row's grid (fitted on the dense row, or with groups on the group's columns as they are when the
    loop reaches its first column), pruned ones 0; the error ``(w − q) / [H⁻¹]_jj`` pushed onto all later
    columns at once. Returns the ``[rows, cols]`` result."""
    fraction, n, m = parse_sparsity(sparsity)
    W = weight.double().numpy().copy()
    X = inputs.double().numpy()
    H = 2.0 / X.shape[0] * X.T @ X
    rows, cols = W.shape
    if group_size is None:
        scale, zero = ref_grid(W, bits)  # the dense rows, before anything else
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H = H + percdamp * np.mean(np.diag(H)) * np.eye(cols)
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    d = np.diag(U)
    mask = np.zeros_like(W, dtype=bool)
    Q = np.zeros_like(W)
    for j in range(cols):
        if m and j % m == 0:
            score = W[:, j:j + m] ** 2 / d[j:j + m][None] ** 2
            for r in range(rows):
                mask[r, j + np.argsort(score[r], kind="stable")[:n]] = True
        if not m and j % blocksize == 0:
            b1 = min(j + blocksize, cols)
            score = (W[:, j:b1] ** 2 / d[j:b1][None] ** 2).ravel()
            block = np.zeros(score.size, dtype=bool)
            block[np.argsort(score, kind="stable")[:int(round(fraction * score.size))]] = True
            mask[:, j:b1] = block.reshape(rows, b1 - j)
        if group_size is not None and j % group_size == 0:
            scale, zero = ref_grid(W[:, j:j + group_size], bits)
        q = np.where(mask[:, j], 0.0, ref_q(W[:, j], scale, zero, bits))
        err = (W[:, j] - q) / U[j, j]
        W[:, j:] -= np.outer(err, U[j, j:])
        Q[:, j] = q
    return torch.from_numpy(Q)


def recon_error(weight, new, inputs):
    X = inputs.double()
    return float(((X @ (new.double() - weight.double()).T) ** 2).sum())


# Copies of the code as it was before quantization: bits=None must give exactly these results.

def original_sparsegpt_blocks(W, hinv, fraction, n, m, blocksize):
    WT = W.T.contiguous()
    cols = WT.shape[0]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = WT[i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if m:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            scale = torch.zeros_like(W1)
        else:
            mask1 = lowest_mask(W1.square() / d.square()[:, None], count_of(fraction, W1.numel()))
            scale = mask1 / d[:, None]
        step = m * max(1, _SUB_BLOCK // m) if m else _SUB_BLOCK
        for s1 in range(0, i2 - i1, step):
            s2 = min(s1 + step, i2 - i1)
            for i in range(s1, s2):
                if m and i % m == 0:
                    scores = W1[i:i + m].square() / d[i:i + m].square()[:, None]
                    mask1[i:i + m] = nm_mask(scores.T, n, m).T
                    scale[i:i + m] = mask1[i:i + m] / d[i:i + m, None]
                err = torch.mul(W1[i], scale[i], out=Err1[i])
                W1[i + 1:s2].addr_(Hinv1[i, i + 1:s2], err, alpha=-1)
            if s2 < i2 - i1:
                W1[s2:].addmm_(Hinv1[s1:s2, s2:].T, Err1[s1:s2], alpha=-1)
        W1.masked_fill_(mask1, 0)
        WT[i1:i2] = W1
        if i2 < cols:
            WT[i2:].addmm_(hinv[i1:i2, i2:].T, Err1, alpha=-1)
    return WT.T


def original_prune(self, sparsity=0.5, blocksize=128, percdamp=0.01, rows=None, dtype=torch.float32, **none):
    assert all(v is None for v in none.values())  # callers now pass bits=None, group_size=None
    fraction, n, m = parse_sparsity(sparsity)
    check_nm(m, self.columns)
    row_idx = check_rows(rows, self.rows)
    H = self.hessian()
    out = self.weight.to(torch.float32).clone()
    if fraction == 0 or (row_idx is not None and row_idx.numel() == 0):
        self.damping = percdamp
        return out
    W = (out if row_idx is None else out[row_idx]).to(dtype)
    dead = torch.diag(H) == 0
    self.dead = torch.nonzero(dead).flatten().cpu()
    H[dead, dead] = 1.0
    W[:, dead] = 0
    hinv = self._inverse_factor(H, percdamp).to(dtype)
    W = original_sparsegpt_blocks(W, hinv, fraction, n, m, blocksize)
    if row_idx is None:
        return W.float()
    out[row_idx] = W.float()
    return out


def original_masked(weight, rows, mask_of, **none):
    assert all(v is None for v in none.values())
    out = weight.detach().to(torch.float32).clone()
    part = out if rows is None else out[rows]
    if part.numel() == 0:
        return out
    part = part.masked_fill(mask_of(part), 0)
    if rows is None:
        return part
    out[rows] = part
    return out


def on_grid(values: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> bool:
    """Every value is ``scale · (k − zero)`` for an integer ``k`` in ``[0, 2^bits − 1]`` (to rounding)."""
    k = values.double() / scale.double() + zero.double()
    return bool(((k - k.round()).abs() < 1e-3).all() and (k.round() >= 0).all() and (k.round() <= 2 ** bits - 1).all())


# ---------------------------------------------------------------- the grid

def test_grid_matches_the_definition_and_keeps_zero():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 64, generator=g) * torch.linspace(0.1, 4, 20)[:, None]
    w[3] = w[3].abs() + 0.5   # all positive: lo = 0
    w[4] = -w[4].abs() - 0.5  # all negative: hi = 0
    w[5] = 0                  # all zero: the grid [-1, 1]
    for bits in (2, 3, 4, 8):
        scale, zero = fit_grid(w, bits)
        ref_s, ref_z = ref_grid(w.numpy(), bits)
        np.testing.assert_allclose(scale[:, 0].numpy(), ref_s, rtol=1e-6)
        np.testing.assert_array_equal(zero[:, 0].numpy(), ref_z)
        q = quantize(w, bits)
        np.testing.assert_allclose(q.numpy(), ref_q(w.double().numpy(), ref_s[:, None], ref_z[:, None], bits),
                                   rtol=0, atol=1e-5)
        assert torch.equal(quantize(torch.zeros(3, 8), bits), torch.zeros(3, 8))
        assert (q[5] == 0).all()
        # 0 is a grid point of every row: scale · (zero − zero)
        assert (zero >= 0).all() and (zero <= 2 ** bits - 1).all()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, 16])
def test_at_most_2_to_the_bits_values_per_channel_and_group(bits, group_size):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, 512, generator=g)
    q = quantize(w, bits, group_size)
    size = group_size or 512
    groups = q.reshape(12, 512 // size, size)
    counts = [len(torch.unique(groups[r, c])) for r in range(12) for c in range(512 // size)]
    assert max(counts) <= 2 ** bits
    if group_size:  # each group has a grid of its own
        assert len(torch.unique(q[0])) > 2 ** bits or bits == 8
    assert (q - w).abs().max() <= fit_grid(w, bits, group_size)[0].max() / 2 + 1e-6  # nearest point


# ---------------------------------------------------------------- SparseGPT + bits against the plain loop

@pytest.mark.parametrize("sparsity", ["2:4", 0.5])
@pytest.mark.parametrize("group_size", [None, 32, 16])
def test_joint_sparsegpt_equals_the_per_column_reference(sparsity, group_size):
    """2:4 (and 50%) + 4-bit SparseGPT, per channel and per group, with blocks (48) and sub-blocks (32) that
    do not line up with the groups, so the groups' current values need the held-back lazy updates."""
    weight, inputs = make_layer(rows=40, cols=128, tokens=900)
    ref = reference_joint(weight, inputs, 4, sparsity, group_size, blocksize=48)
    sgpt = SparseGPT(weight)
    sgpt.add_batch(inputs)
    out64 = sgpt.prune(sparsity, blocksize=48, dtype=torch.float64, bits=4, group_size=group_size)
    torch.testing.assert_close(out64.double(), ref, rtol=0, atol=1e-5)
    assert torch.equal(out64 == 0, ref == 0)
    err_ref = recon_error(weight, ref, inputs)
    assert recon_error(weight, out64, inputs) == pytest.approx(err_ref, rel=1e-6)
    # the default float32 sweep: the same weights up to float32 rounding (a rounding tie may move one
    # weight by a grid step, so the reconstruction error is compared, and nearly all weights)
    out32 = prune_weight(weight, inputs, "sparsegpt", sparsity, blocksize=48, bits=4, group_size=group_size)
    assert recon_error(weight, out32, inputs) == pytest.approx(err_ref, rel=1e-3)
    assert ((out32.double() - ref).abs() < 1e-3).double().mean() > 0.99


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, 16])
def test_joint_sparsegpt_values_are_on_the_grid_and_the_pattern_holds(bits, group_size):
    weight, inputs = make_layer(rows=24, cols=96)
    out = prune_weight(weight, inputs, "sparsegpt", "2:4", bits=bits, group_size=group_size)
    zeros = (out == 0).reshape(24, -1, 4).sum(2)
    assert (zeros >= 2).all()  # the 2:4 pattern (kept weights may round to 0 as well)
    size = group_size or 96
    groups = out.reshape(24, 96 // size, size)
    assert max(len(torch.unique(groups[r, c])) for r in range(24) for c in range(96 // size)) <= 2 ** bits
    if group_size is None:  # per channel: the grid fitted on the dense rows
        scale, zero = fit_grid(weight, bits)
        assert on_grid(out, scale, zero, bits)
    # unstructured: at least the asked zeros, one grid per row
    out = prune_weight(weight, inputs, "sparsegpt", 0.5, bits=bits, group_size=group_size)
    assert (out == 0).double().mean() >= 0.5
    groups = out.reshape(24, 96 // size, size)
    assert max(len(torch.unique(groups[r, c])) for r in range(24) for c in range(96 // size)) <= 2 ** bits


def test_quantization_costs_some_error_and_more_bits_cost_less():
    weight, inputs = make_layer(rows=32, cols=96)
    errors = [recon_error(weight, prune_weight(weight, inputs, "sparsegpt", "2:4", bits=b), inputs)
              for b in (2, 3, 4, 8)]
    plain = recon_error(weight, prune_weight(weight, inputs, "sparsegpt", "2:4"), inputs)
    assert errors[0] > errors[1] > errors[2] > errors[3] > plain * 0.999
    assert errors[3] < plain * 1.05
    # the propagation is what SparseGPT adds: it beats rounding SparseGPT's result afterwards
    after = quantize(prune_weight(weight, inputs, "sparsegpt", "2:4"), 4, grid=fit_grid(weight, 4))
    assert errors[2] < recon_error(weight, after, inputs)


def test_bits_at_zero_sparsity_is_gptq_and_rows_subset():
    weight, inputs = make_layer(rows=16, cols=64)
    ref = reference_joint(weight, inputs, 3, 0.0)
    sgpt = SparseGPT(weight)
    sgpt.add_batch(inputs)
    torch.testing.assert_close(sgpt.prune(0.0, dtype=torch.float64, bits=3).double(), ref, rtol=0, atol=1e-5)
    rows = torch.tensor([1, 5, 9])
    out = prune_weight(weight, inputs, "sparsegpt", "2:4", neurons=rows, bits=4)
    others = torch.ones(16, dtype=torch.bool)
    others[rows] = False
    assert torch.equal(out[others], weight[others])
    torch.testing.assert_close(out[rows], prune_weight(weight[rows], inputs, "sparsegpt", "2:4", bits=4))


# ---------------------------------------------------------------- Wanda and magnitude

@pytest.mark.parametrize("method", ["wanda", "magnitude"])
@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
@pytest.mark.parametrize("group_size", [None, 16])
def test_wanda_and_magnitude_round_the_masked_weights_to_nearest(method, sparsity, group_size):
    weight, inputs = make_layer(rows=24, cols=96)
    masked = prune_weight(weight, inputs, method, sparsity)
    out = prune_weight(weight, inputs, method, sparsity, bits=4, group_size=group_size)
    size = group_size or 96
    # the grid of the dense weights, by hand
    scale, zero = ref_grid(weight.numpy().reshape(-1, size), 4)
    expected = ref_q(masked.double().numpy().reshape(-1, size), scale[:, None], zero[:, None], 4).reshape(24, 96)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-6)
    assert ((masked == 0) <= (out == 0)).all()  # zeros stay zeros
    assert out[masked == 0].abs().sum() == 0
    groups = out.reshape(24, 96 // size, size)
    assert max(len(torch.unique(groups[r, c])) for r in range(24) for c in range(96 // size)) <= 16


# ---------------------------------------------------------------- bits=None is today's code, bit for bit

@pytest.mark.parametrize("sparsity", [0.5, 0.7, "2:4", 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bits_none_is_the_original_sparsegpt_bit_for_bit(sparsity, dtype):
    weight, inputs = make_layer(rows=40, cols=160)
    weight[:, 7] = 0
    inputs[:, 11] = 0  # a dead input
    for rows in (None, torch.tensor([0, 3, 17])):
        for blocksize in (128, 48):
            new, old = SparseGPT(weight), SparseGPT(weight)
            new.add_batch(inputs)
            old.add_batch(inputs)
            a = new.prune(sparsity, blocksize=blocksize, rows=rows, dtype=dtype)
            b = original_prune(old, sparsity, blocksize=blocksize, rows=rows, dtype=dtype)
            assert torch.equal(a, b) and new.damping == old.damping
            assert torch.equal(prune_weight(weight, inputs, "sparsegpt", sparsity, neurons=rows, blocksize=blocksize), a) \
                or dtype != torch.float32


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_bits_none_is_the_original_masking_bit_for_bit(method):
    weight, inputs = make_layer(rows=24, cols=96)
    for sparsity in (0.5, "2:4"):
        mask_of = (lambda part, s=sparsity: wnb.compression.masks.magnitude_mask(part, s)) if method == "magnitude" else \
            (lambda part, s=sparsity: wnb.compression.masks.wanda_mask(part, inputs, s))
        for rows in (None, torch.tensor([2, 4])):
            assert torch.equal(prune_weight(weight, inputs, method, sparsity, neurons=rows),
                               original_masked(weight, rows, mask_of))


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
def test_bits_none_whole_model_is_the_original_bit_for_bit(tiny_llama, tiny_windows, monkeypatch, method):
    def weights(lm):
        return {n: wnb.layer_weight(lm, n).detach().clone() for n in wnb.ffn_layers(lm)}

    with pruned(tiny_llama, method, "2:4", calib=tiny_windows, progress=False, bits=None) as report:
        now = weights(tiny_llama)
        assert "bits" not in report.table().columns
    monkeypatch.setattr(prune_mod.SparseGPT, "prune", original_prune)
    monkeypatch.setattr(prune_mod, "masked", original_masked)
    with pruned(tiny_llama, method, "2:4", calib=tiny_windows, progress=False):
        before = weights(tiny_llama)
    assert all(torch.equal(now[n], before[n]) for n in now)


def test_bits_none_experts_are_the_original_sparsegpt(monkeypatch):
    weight, inputs = make_layer(rows=24, cols=64)
    labels = torch.arange(inputs.shape[0]) % 3
    now = build_experts(weight, inputs, labels, 3, "2:4", bits=None)
    monkeypatch.setattr(prune_mod.SparseGPT, "prune", original_prune)
    assert torch.equal(now.weights, build_experts(weight, inputs, labels, 3, "2:4").weights)


# ---------------------------------------------------------------- experts and whole models

def test_experts_are_quantized_the_same_way():
    weight, inputs = make_layer(rows=24, cols=64)
    bias = torch.zeros(24)
    layer = expand_layer(weight, inputs, bias, n_experts=1, sparsity="2:4", pca_factor=4, bits=4, group_size=16)
    assert torch.equal(layer.experts[0], prune_weight(weight, inputs, "sparsegpt", "2:4", bits=4, group_size=16))
    layer = expand_layer(weight, inputs, bias, n_experts=3, sparsity=0.5, pca_factor=4, bits=3)
    for expert in layer.experts:
        assert max(len(torch.unique(r)) for r in expert) <= 8 and (expert == 0).double().mean() >= 0.5


def test_pruned_and_expanded_take_bits(tiny_llama, tiny_windows):
    name = wnb.ffn_layers(tiny_llama)[0]
    dense = wnb.layer_weight(tiny_llama, name).detach().clone()
    for method in ("sparsegpt", "wanda", "magnitude"):
        with pruned(tiny_llama, method, 0.5, calib=tiny_windows, progress=False, bits=3, group_size=16) as report:
            for n in wnb.ffn_layers(tiny_llama):
                w = wnb.layer_weight(tiny_llama, n).detach()
                groups = w.reshape(w.shape[0], -1, 16)
                assert max(len(torch.unique(groups[r, c])) for r in range(w.shape[0])
                           for c in range(groups.shape[1])) <= 8
            table = report.table()
            assert (table["bits"] == 3).all() and (table["group_size"] == 16).all()
    assert torch.equal(wnb.layer_weight(tiny_llama, name), dense)
    with wnb.expanded(tiny_llama, n_experts=2, sparsity="2:4", calib=tiny_windows, pca_factor=4, progress=False,
                      bits=4) as exp:
        assert exp.bits == 4 and exp.group_size is None
        for layer in exp.layers.values():
            for expert in layer.experts:
                assert max(len(torch.unique(r)) for r in expert) <= 16
    assert torch.equal(wnb.layer_weight(tiny_llama, name), dense)


def test_sweeps_label_quantized_rows(tiny_llama, tiny_windows):
    layers = wnb.ffn_layers(tiny_llama)[:1]
    table = wnb.sweep(tiny_llama, tiny_windows, tiny_windows, methods=("magnitude",), sparsities=(0.5,),
                      layers=layers, progress=False, bits=4)
    assert list(table["bits"].iloc[1:]) == [4] and "group_size" not in table
    plain = wnb.sweep(tiny_llama, tiny_windows, tiny_windows, methods=("magnitude",), sparsities=(0.5,),
                      layers=layers, progress=False, dense=False)
    assert "bits" not in plain
    from wnb.experiments.sweeps import expansion_sweep

    table = expansion_sweep(tiny_llama, tiny_windows, tiny_windows, n_experts=(1,), layers=layers, dense=False,
                            progress=False, pca_factor=4, bits=4, group_size=16)
    assert list(table["bits"]) == [4] and list(table["group_size"]) == [16]


# ---------------------------------------------------------------- storage and cache keys

def test_effective_bits_by_hand():
    # 2:4 + 4-bit per channel, 576 columns: 4 bits × 1/2 + ceil(log2 C(4,2)) = 3 bits per 4 + (16 + 4) / 576
    assert effective_bits(4, "2:4", columns=576) == pytest.approx(2 + 0.75 + 20 / 576)
    # 50% + 4-bit in groups of 128: 2 + a 1-bit mask + 20 / 128
    assert effective_bits(4, 0.5, group_size=128, columns=1536) == pytest.approx(2 + 1 + 20 / 128)
    assert effective_bits(None, 0.0) == 16          # dense 16-bit
    assert effective_bits(None, 0.5) == 9           # 16 × 1/2 + 1
    assert effective_bits(None, "2:4") == 8.75
    assert effective_bits(8, 0.0, columns=64) == pytest.approx(8 + 24 / 64)  # GPTQ: no mask
    assert effective_bits(3, "4:8", columns=96) == pytest.approx(1.5 + math.ceil(math.log2(70)) / 8 + 19 / 96)
    assert mask_bits("1:4") == 0.5 and mask_bits(0.7) == 1.0
    with pytest.raises(WnbError, match="columns"):
        effective_bits(4, "2:4")


def test_model_effective_bits_weights_layers_by_size(tiny_llama):
    names = wnb.ffn_layers(tiny_llama)
    shapes = [wnb.layer_weight(tiny_llama, n).shape for n in names]
    expected = sum(r * c * effective_bits(4, "2:4", columns=c) for r, c in shapes) / sum(r * c for r, c in shapes)
    assert wnb.model_effective_bits(tiny_llama, 4, "2:4") == pytest.approx(expected)


def test_cache_key_parts_are_empty_without_bits():
    assert key_parts() == {} and key_parts(None, None) == {}
    assert key_parts(4) == {"bits": 4} and key_parts(np.int64(4), 128) == {"bits": 4, "group_size": 128}
    from wnb.core import cache

    assert cache.key(a=1, **key_parts()) == cache.key(a=1)
    assert cache.key(a=1, **key_parts(4)) != cache.key(a=1, **key_parts(3)) != cache.key(a=1)
    assert cache.key(a=1, **key_parts(4, 64)) != cache.key(a=1, **key_parts(4))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("bits, group_size, message", [
    (1, None, "bits must be a whole number from 2 to 8"),
    (9, None, "bits must be a whole number from 2 to 8"),
    (4.5, None, "bits"),
    ("4", None, "bits"),
    (True, None, "bits"),
    (4, 0, "group_size"),
    (4, -8, "group_size"),
    (4, 7, "must divide the input width"),
    (4, 2.0, "group_size"),
    (None, 16, "needs bits"),
])
def test_bad_bits_and_group_size_are_refused_before_work(tiny_llama, tiny_windows, monkeypatch, bits, group_size,
                                                         message):
    def no_work(*a, **k):
        raise AssertionError("work started before the input was checked")

    weight, inputs = make_layer(rows=8, cols=32)
    with pytest.raises(WnbError, match=message):
        prune_weight(weight, inputs, "sparsegpt", 0.5, bits=bits, group_size=group_size)
    with pytest.raises(WnbError, match=message):
        prune_weight(weight, inputs, "wanda", 0.5, bits=bits, group_size=group_size)
    sgpt = SparseGPT(weight)
    sgpt.add_batch(inputs)
    with pytest.raises(WnbError, match=message):
        sgpt.prune(0.5, bits=bits, group_size=group_size)
    with pytest.raises(WnbError, match=message):
        effective_bits(bits, 0.5, group_size, columns=32)
    import wnb.compression.expansion as expand
    import wnb.tracing.sequential as sequential

    monkeypatch.setattr(sequential, "walk", no_work)
    monkeypatch.setattr(expand.Router, "fit", no_work)
    with pytest.raises(WnbError, match=message):
        with pruned(tiny_llama, "sparsegpt", 0.5, calib=tiny_windows, progress=False, bits=bits,
                    group_size=group_size):
            pass
    with pytest.raises(WnbError, match=message):
        with pruned(tiny_llama, "magnitude", 0.5, progress=False, bits=bits, group_size=group_size):
            pass
    with pytest.raises(WnbError, match=message):
        with wnb.expanded(tiny_llama, n_experts=2, calib=tiny_windows, pca_factor=4, progress=False, bits=bits,
                          group_size=group_size):
            pass
    with pytest.raises(WnbError, match=message):
        expand_layer(weight, inputs, None, n_experts=2, pca_factor=4, bits=bits, group_size=group_size)
    with pytest.raises(WnbError, match=message):
        wnb.sweep(tiny_llama, tiny_windows, tiny_windows, methods=("magnitude",), sparsities=(0.5,), progress=False,
                  bits=bits, group_size=group_size)


def test_group_size_not_dividing_a_layer_names_it(tiny_llama, tiny_windows):
    # tiny Llama: gate/up take 32 inputs, down 64; 64 divides neither
    with pytest.raises(WnbError, match=r"gate_proj has 32 inputs"):
        with pruned(tiny_llama, "magnitude", 0.5, progress=False, bits=4, group_size=64):
            pass
    assert check_quant(np.int32(3), np.int64(16), 32) == (3, 16)
    assert type(check_quant(np.int32(3))[0]) is int
