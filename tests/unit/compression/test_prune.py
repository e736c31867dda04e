"""Pruning against references written here from the definitions: a plain SparseGPT loop (immediate OBS
updates, numpy inverse), brute-force Wanda and magnitude masks, and manual sequential pruning."""
import hashlib
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

import wnb
import wnb.compression
import wnb.model.architectures
import wnb.scoring
import wnb.tracing
from wnb.compression.prune import prune_weight
from wnb.compression.pruned import pruned
from wnb.compression.sparsegpt import SparseGPT
from wnb.errors import WnbError
from wnb.scoring.selection import select_neurons


def make_layer(rows=48, cols=96, tokens=800, seed=0):
    """A weight and correlated calibration inputs with uneven column scales (like real activations)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / math.sqrt(cols) + torch.eye(cols)
    scale = torch.rand(cols, generator=g) * 3 + 0.1
    inputs = (torch.randn(tokens, cols, generator=g) @ mix) * scale
    return weight, inputs


def reference_sparsegpt(weight, inputs, sparsity=0.5, n=0, m=0, blocksize=128, percdamp=0.01):
    """SparseGPT as written in the paper, in float64 numpy, with every column's OBS update applied at once
    to all later columns (no lazy batching). Returns (pruned weight, mask)."""
    W = weight.double().numpy().copy()
    X = inputs.double().numpy()
    H = 2.0 / X.shape[0] * X.T @ X
    cols = W.shape[1]
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H = H + percdamp * np.mean(np.diag(H)) * np.eye(cols)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper factor of H^-1
    mask = np.zeros_like(W, dtype=bool)
    for b0 in range(0, cols, blocksize):
        b1 = min(b0 + blocksize, cols)
        d = np.diag(U)[b0:b1]
        if not m:
            score = (W[:, b0:b1] ** 2 / d[None] ** 2).ravel()
            k = int(round(sparsity * score.size))
            block = np.zeros(score.size, dtype=bool)
            block[np.argsort(score, kind="stable")[:k]] = True
            mask[:, b0:b1] = block.reshape(W.shape[0], b1 - b0)
        for j in range(b0, b1):
            if m and (j - b0) % m == 0:
                score = W[:, j:j + m] ** 2 / np.diag(U)[j:j + m][None] ** 2
                for r in range(W.shape[0]):
                    mask[r, j + np.argsort(score[r], kind="stable")[:n]] = True
            err = np.where(mask[:, j], W[:, j], 0.0) / U[j, j]
            W[:, j:] -= np.outer(err, U[j, j:])
            W[mask[:, j], j] = 0.0
    return torch.from_numpy(W), torch.from_numpy(mask)


# ---------------------------------------------------------------- SparseGPT

@pytest.mark.parametrize("sparsity, n, m", [(0.5, 0, 0), (0.7, 0, 0), ("2:4", 2, 4), ("4:8", 4, 8)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparsegpt_matches_reference(sparsity, n, m, dtype):
    weight, inputs = make_layer(cols=96)
    frac = 0.5 if m else sparsity
    ref_w, ref_mask = reference_sparsegpt(weight, inputs, frac, n, m, blocksize=32)
    sgpt = SparseGPT(weight)
    for chunk in inputs.split(300):  # accumulating in batches must not matter
        sgpt.add_batch(chunk)
    out = sgpt.prune(sparsity, blocksize=32, dtype=dtype)
    assert out.dtype == torch.float32 and out.shape == weight.shape
    assert torch.equal(out == 0, ref_mask)
    torch.testing.assert_close(out.double(), ref_w, rtol=0, atol=1e-5)
    assert sgpt.damping == 0.01


@pytest.mark.parametrize("cols", [40, 1000])
def test_sparsegpt_hessian_is_twice_the_mean_gram_matrix(cols):
    """Batches of any size, inputs narrower and wider than one strip of xᵀx: 2/N · XᵀX in float64."""
    x = torch.randn(900, cols, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.1, 3, cols)
    sgpt = SparseGPT(torch.zeros(8, cols))
    for chunk in x.split([1, 300, 599]):
        sgpt.add_batch(chunk)
    H = sgpt.hessian()
    expected = 2.0 / 900 * (x.double().T @ x.double())
    assert H.dtype == torch.float64 and torch.equal(H, H.T)
    torch.testing.assert_close(H, expected, rtol=1e-5, atol=1e-5)


def test_sparsegpt_partial_last_block_and_dead_inputs():
    weight, inputs = make_layer(cols=200)
    inputs[:, [3, 150]] = 0  # dead inputs: H_ii = 0
    ref_w, ref_mask = reference_sparsegpt(weight, inputs, 0.5, blocksize=128)
    out = prune_weight(weight, inputs, "sparsegpt", 0.5)
    assert torch.equal(out == 0, ref_mask)
    torch.testing.assert_close(out.double(), ref_w, rtol=0, atol=1e-5)
    assert (out[:, [3, 150]] == 0).all()


def test_sparsegpt_reconstruction_beats_wanda_and_magnitude():
    weight, inputs = make_layer(rows=64, cols=128, tokens=2000)
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        for sparsity in (0.5, "2:4"):
            w = prune_weight(weight, inputs, method, sparsity)
            errors[method, sparsity] = torch.linalg.norm(inputs @ weight.T - inputs @ w.T).item()
    for sparsity in (0.5, "2:4"):
        assert errors["sparsegpt", sparsity] < errors["wanda", sparsity] < errors["magnitude", sparsity]


def test_sparsegpt_exact_count_per_block():
    weight, inputs = make_layer(rows=40, cols=300)
    for sparsity in (0.3, 0.5, 0.77):
        out = prune_weight(weight, inputs, "sparsegpt", sparsity, blocksize=128)
        for b0 in range(0, 300, 128):
            block = out[:, b0:b0 + 128]
            assert (block == 0).sum().item() == round(sparsity * block.numel())


def test_damping_is_raised_until_cholesky_succeeds():
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    inputs = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))  # rank 3 of 32: H singular
    sgpt = SparseGPT(weight)
    sgpt.add_batch(inputs)
    out = sgpt.prune(0.5, percdamp=0.0)
    assert torch.isfinite(out).all()
    assert sgpt.damping > 0
    H = 2.0 / 3 * inputs.double().T @ inputs.double()
    eye = torch.eye(32, dtype=torch.float64)
    assert torch.linalg.cholesky_ex(H + sgpt.damping * H.diag().mean() * eye).info == 0
    below = sgpt.damping / 10 if sgpt.damping > 1e-6 else 0.0
    assert torch.linalg.cholesky_ex(H + below * H.diag().mean() * eye).info != 0


def test_sparsegpt_rows_subset_is_the_reference_on_those_rows():
    weight, inputs = make_layer()
    rows = torch.tensor([2, 7, 30, 31, 40])
    out = prune_weight(weight, inputs, "sparsegpt", 0.9, neurons=rows)
    others = torch.ones(weight.shape[0], dtype=torch.bool)
    others[rows] = False
    assert torch.equal(out[others], weight[others])  # bit for bit
    ref_w, ref_mask = reference_sparsegpt(weight[rows], inputs, 0.9)
    assert torch.equal(out[rows] == 0, ref_mask)
    torch.testing.assert_close(out[rows].double(), ref_w, rtol=0, atol=1e-5)


def test_sparsegpt_on_gpu_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    weight, inputs = make_layer()
    cpu = prune_weight(weight, inputs, "sparsegpt", 0.5)
    gpu = prune_weight(weight.cuda(), inputs, "sparsegpt", 0.5)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- Wanda and magnitude

def brute_wanda_mask(weight, inputs, k=None, n=0, m=0):
    rows, cols = weight.shape
    norms = [math.sqrt(sum(float(inputs[t, j]) ** 2 for t in range(inputs.shape[0]))) for j in range(cols)]
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for i in range(rows):
        score = [abs(float(weight[i, j])) * norms[j] for j in range(cols)]
        if m:
            for g in range(0, cols, m):
                for j in sorted(range(g, g + m), key=lambda j: score[j])[:n]:
                    mask[i, j] = True
        else:
            for j in sorted(range(cols), key=lambda j: score[j])[:k]:
                mask[i, j] = True
    return mask


def test_wanda_mask_equals_brute_force():
    weight, inputs = make_layer(rows=6, cols=16, tokens=40)
    out = prune_weight(weight, inputs, "wanda", 0.5)
    assert torch.equal(out == 0, brute_wanda_mask(weight, inputs, k=8))
    kept = out != 0
    assert torch.equal(out[kept], weight[kept])
    out = prune_weight(weight, inputs, "wanda", "2:4")
    assert torch.equal(out == 0, brute_wanda_mask(weight, inputs, n=2, m=4))
    out = prune_weight(weight, inputs, "wanda", 0.3)
    assert torch.equal(out == 0, brute_wanda_mask(weight, inputs, k=round(0.3 * 16)))


def test_magnitude_mask_equals_brute_force():
    weight, _ = make_layer(rows=6, cols=16)
    out = prune_weight(weight, None, "magnitude", 0.6)
    k = round(0.6 * weight.numel())
    smallest = sorted(range(weight.numel()), key=lambda t: abs(float(weight.flatten()[t])))[:k]
    expected = torch.zeros(weight.numel(), dtype=torch.bool)
    expected[smallest] = True
    assert torch.equal(out == 0, expected.view_as(weight))


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
def test_nm_pattern_in_every_group(method, n, m):
    weight, inputs = make_layer(cols=64)
    out = prune_weight(weight, inputs, method, f"{n}:{m}")
    zeros = (out == 0).reshape(out.shape[0], -1, m).sum(2)
    assert (zeros == n).all()


def test_wanda_exact_count_per_row():
    weight, inputs = make_layer()
    for sparsity in (0.25, 0.5, 0.7):
        out = prune_weight(weight, inputs, "wanda", sparsity)
        assert ((out == 0).sum(1) == round(sparsity * weight.shape[1])).all()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_neurons_leave_other_rows_bit_identical(method):
    weight, inputs = make_layer()
    weight = weight.to(torch.bfloat16)  # float32 round trip of the untouched rows must be exact
    rows = [0, 5, 47]
    mask = torch.zeros(weight.shape[0], dtype=torch.bool)
    mask[rows] = True
    for neurons in (rows, mask):
        out = prune_weight(weight, inputs, method, 0.5, neurons=neurons)
        assert torch.equal(out[~mask].to(torch.bfloat16), weight[~mask])
        assert ((out[mask] == 0).sum() >= 0.5 * mask.sum() * weight.shape[1]).item()
    assert torch.equal(prune_weight(weight, inputs, method, 0.5, neurons=[]), weight.float())


def test_zero_sparsity_is_identity():
    weight, inputs = make_layer()
    for method in ("magnitude", "wanda", "sparsegpt"):
        assert torch.equal(prune_weight(weight, inputs, method, 0.0), weight)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "3:2", "0:4", "2:", "abc", True, "150%"])
def test_bad_sparsity(sparsity):
    weight, inputs = make_layer()
    with pytest.raises(WnbError, match="sparsity|N:M"):
        prune_weight(weight, inputs, "sparsegpt", sparsity)


def test_parse_sparsity_forms():
    assert wnb.parse_sparsity(0.5) == (0.5, 0, 0)
    assert wnb.parse_sparsity("70%") == (0.7, 0, 0)
    assert wnb.parse_sparsity("2:4") == (0.5, 2, 4)


def test_impossible_nm_and_other_errors(tiny_llama, tiny_windows):
    weight, inputs = make_layer(cols=90)
    with pytest.raises(WnbError, match="multiple of 4"):
        prune_weight(weight, inputs, "wanda", "2:4")
    with pytest.raises(WnbError, match="unknown pruning method"):
        prune_weight(weight, inputs, "obs", 0.5)
    with pytest.raises(WnbError, match="calibration inputs"):
        prune_weight(weight, None, "sparsegpt", 0.5)
    with pytest.raises(WnbError, match=r"\[tokens, 90\]"):
        prune_weight(weight, inputs[:, :10], "wanda", 0.5)
    with pytest.raises(WnbError, match=r"\[0, 48\)"):
        prune_weight(weight, inputs, "wanda", 0.5, neurons=[48])
    with pytest.raises(WnbError, match="add_batch"):
        SparseGPT(weight).prune(0.5)
    layers = wnb.ffn_layers(tiny_llama)
    acts = wnb.capture(tiny_llama, layers[:1], tiny_windows, progress=False)
    with pytest.raises(WnbError, match="was not captured"):
        wnb.prune_layer(tiny_llama, layers[1], acts)
    with pytest.raises(WnbError, match="not a linear layer"):
        with pruned(tiny_llama, calib=tiny_windows, layers=["model.layers.0.mlp.nope"], progress=False):
            pass
    with pytest.raises(WnbError, match="calib"):
        with pruned(tiny_llama, "wanda", progress=False):
            pass
    with pytest.raises(WnbError, match="unknown neuron selection"):
        with pruned(tiny_llama, calib=tiny_windows, neurons="entropy", progress=False):
            pass


def test_prune_layer_uses_captured_inputs(tiny_llama, tiny_windows):
    name = wnb.ffn_layers(tiny_llama)[1]
    acts = wnb.capture(tiny_llama, [name], tiny_windows, progress=False)
    weight = wnb.layer_weight(tiny_llama, name).detach()
    expected = prune_weight(weight, acts[name].inputs, "wanda", 0.5)
    assert torch.equal(wnb.prune_layer(tiny_llama, name, acts, "wanda", 0.5), expected)
    rows = wnb.prune_layer(tiny_llama, name, acts, "sparsegpt", 0.9, neurons="wd", fraction=0.1)
    changed = torch.nonzero((rows != weight).any(1)).flatten()
    top = wnb.top_neurons(wnb.wasserstein_to_gaussian(acts[name].outputs), fraction=0.1)
    assert set(changed.tolist()) == set(top.tolist())


# ---------------------------------------------------------------- neuron selection

def test_select_neurons_by_each_criterion():
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(500, 100, generator=g) * torch.rand(100, generator=g) + torch.randn(100, generator=g)
    weight = torch.randn(100, 20, generator=g)
    y = outputs.double().numpy()
    expected = {"mean": np.argsort(-np.abs(y.mean(0)), kind="stable")[:3],
                "variance": np.argsort(-y.var(0), kind="stable")[:3],
                "weight_norm": np.argsort(-np.linalg.norm(weight.double().numpy(), axis=1), kind="stable")[:3]}
    for criterion, idx in expected.items():
        got = select_neurons(criterion, outputs=outputs, weight=weight, fraction=0.03)
        assert got.tolist() == idx.tolist(), criterion
    from scipy import stats

    z = (y - y.mean(0)) / y.std(0)
    grid = stats.norm.ppf((np.arange(20000) + 0.5) / 20000)
    approx_wd = np.array([stats.wasserstein_distance(z[:, i], grid) for i in range(100)])
    got = select_neurons("wd", outputs=outputs, fraction=0.05)
    assert set(got.tolist()) == set(np.argsort(-approx_wd)[:5].tolist())
    a = select_neurons("random", outputs=outputs, fraction=0.1, seed=3)
    assert torch.equal(a, select_neurons("random", outputs=outputs, fraction=0.1, seed=3))
    assert not torch.equal(a, select_neurons("random", outputs=outputs, fraction=0.1, seed=4))
    assert a.numel() == 10 and a.unique().numel() == 10
    with pytest.raises(WnbError, match="unknown neuron selection"):
        select_neurons("entropy", outputs=outputs)


# ---------------------------------------------------------------- whole model

def model_hash(lm):
    h = hashlib.sha256()
    for name, p in lm.model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("method, sparsity", [("magnitude", 0.5), ("wanda", "2:4"), ("sparsegpt", 0.5)])
def test_pruned_restores_weights_exactly(tiny, tiny_windows, method, sparsity):
    before = model_hash(tiny)
    with pruned(tiny, method, sparsity, calib=tiny_windows, progress=False) as report:
        assert model_hash(tiny) != before
        for name in wnb.ffn_layers(tiny):
            assert (wnb.layer_weight(tiny, name) == 0).double().mean().item() == pytest.approx(0.5)
            assert report[name].zeros == pytest.approx(0.5)
    assert model_hash(tiny) == before


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_pruned_restores_when_the_body_raises(tiny_llama, tiny_windows, error):
    before = model_hash(tiny_llama)
    with pytest.raises(error):
        with pruned(tiny_llama, "sparsegpt", 0.5, calib=tiny_windows, progress=False):
            raise error("stop")
    assert model_hash(tiny_llama) == before


def test_pruned_restores_when_interrupted_while_pruning(tiny_llama, tiny_windows, monkeypatch):
    before = model_hash(tiny_llama)
    calls = []
    real = SparseGPT.prune

    def interrupting(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # after block 0 was written into the model
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SparseGPT, "prune", interrupting)
    with pytest.raises(KeyboardInterrupt):
        with pruned(tiny_llama, "sparsegpt", 0.5, calib=tiny_windows, progress=False):
            pass
    assert len(calls) == 4
    assert model_hash(tiny_llama) == before


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_pruning_is_sequential(tiny, tiny_windows, method):
    """Each layer is calibrated on inputs computed through the already pruned earlier blocks: redo it by
    hand with capture (nnsight, independent of the block walker), one block at a time."""
    layers = [names[0] for names in _by_block(tiny).values()]  # the first FFN layer of each block
    dense = {n: wnb.layer_weight(tiny, n).detach().clone() for n in layers}
    with pruned(tiny, method, 0.5, calib=tiny_windows, layers=layers, progress=False):
        got = {n: wnb.layer_weight(tiny, n).detach().clone() for n in layers}
    manual = {}
    try:
        for name in layers:
            x = wnb.capture(tiny, [name], tiny_windows, outputs=False, progress=False)[name].inputs
            manual[name] = prune_weight(wnb.layer_weight(tiny, name).detach(), x, method, 0.5)
            wnb.model.architectures.set_layer_weight(tiny, name, manual[name])
    finally:
        for name in layers:
            wnb.model.architectures.set_layer_weight(tiny, name, dense[name])
    for name in layers:
        torch.testing.assert_close(got[name], manual[name], rtol=0, atol=1e-5)
    # and the later blocks did see the pruned earlier ones: dense-calibrated pruning differs
    x = wnb.capture(tiny, [layers[-1]], tiny_windows, outputs=False, progress=False)[layers[-1]].inputs
    assert not torch.allclose(prune_weight(dense[layers[-1]], x, method, 0.5), got[layers[-1]], atol=1e-5)


def _by_block(lm):
    from wnb.tracing.sequential import group_by_block

    return group_by_block(lm, wnb.ffn_layers(lm))


def test_pruned_neurons_by_criterion_and_dict(tiny_llama, tiny_windows):
    layers = wnb.ffn_layers(tiny_llama)
    first = layers[0]
    dense = wnb.layer_weight(tiny_llama, first).detach().clone()
    out = wnb.capture(tiny_llama, [first], tiny_windows, inputs=False, progress=False)[first].outputs
    top = wnb.top_neurons(wnb.wasserstein_to_gaussian(out), fraction=0.1)
    with pruned(tiny_llama, "sparsegpt", 0.9, calib=tiny_windows, neurons="wd", fraction=0.1,
                progress=False) as report:
        changed = torch.nonzero((wnb.layer_weight(tiny_llama, first) != dense).any(1)).flatten()
        assert set(changed.tolist()) == set(top.tolist())
        assert all(r.neurons == max(1, round(0.1 * wnb.layer_weight(tiny_llama, r.layer).shape[0]))
                   for r in report.values())
    rows = {layers[0]: [1, 2], layers[4]: [0]}
    with pruned(tiny_llama, "magnitude", 0.5, neurons=rows, progress=False) as report:
        assert list(report) == [layers[0], layers[4]]
        w = wnb.layer_weight(tiny_llama, layers[0])
        assert torch.equal(w[3:], dense[3:]) and ((w[1:3] == 0).sum() == dense.shape[1]).item()
    with pytest.raises(WnbError, match="no entry"):
        with pruned(tiny_llama, "magnitude", 0.5, layers=layers[:2], neurons={layers[0]: [1]}, progress=False):
            pass


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_streamed_statistics_equal_the_all_in_memory_path(tiny, tiny_windows, method):
    """Whole-model SparseGPT and Wanda accumulate Hessians / column norms batch by batch while the block
    runs (no block's inputs kept); they give the weights of the path that keeps every calibration input
    (keep_inputs)."""
    layers = wnb.ffn_layers(tiny)
    with pruned(tiny, method, 0.5, calib=tiny_windows, batch_size=2, progress=False):
        streamed = {n: wnb.layer_weight(tiny, n).detach().clone() for n in layers}
    with pruned(tiny, method, 0.5, calib=tiny_windows, batch_size=2, keep_inputs=True, progress=False):
        kept = {n: wnb.layer_weight(tiny, n).detach().clone() for n in layers}
    for name in layers:
        assert torch.equal(streamed[name] == 0, kept[name] == 0), name
        torch.testing.assert_close(streamed[name], kept[name], rtol=0, atol=1e-5)


def test_walk_passes_batches_on_without_keeping_them(tiny_llama, tiny_windows):
    from wnb.tracing.sequential import walk

    seen = []
    layers = wnb.ffn_layers(tiny_llama)
    for _, inputs in walk(tiny_llama, tiny_windows, layers, batch_size=2, progress=False,
                          on_inputs=lambda name, x: seen.append((name, x.shape[0]))):
        assert all(v is None for v in inputs.values())
    assert {name for name, _ in seen} == set(layers)
    assert max(rows for _, rows in seen) == 2 * tiny_windows.shape[1]
    assert len(seen) == len(layers) * tiny_windows.shape[0] // 2


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
@pytest.mark.parametrize("true_sequential", [True, False])
def test_every_ffn_layer_calibrated_in_order(tiny, tiny_windows, method, true_sequential):
    """Redone by hand with capture (nnsight, independent of the block walker) on the model as pruned so
    far. True-sequential: layer by layer in forward order, so down_proj sees the pruned gate and up
    projections. Block order: each block's layers all from one capture of the block as it entered."""
    layers = wnb.ffn_layers(tiny)
    dense = {n: wnb.layer_weight(tiny, n).detach().clone() for n in layers}
    with pruned(tiny, method, 0.5, calib=tiny_windows, true_sequential=true_sequential, progress=False):
        got = {n: wnb.layer_weight(tiny, n).detach().clone() for n in layers}
    steps = [[n] for n in layers] if true_sequential else list(_by_block(tiny).values())
    manual = {}
    try:
        for step in steps:
            captured = wnb.capture(tiny, step, tiny_windows, outputs=False, progress=False)
            for name in step:
                manual[name] = prune_weight(dense[name], captured[name].inputs, method, 0.5)
            for name in step:
                wnb.model.architectures.set_layer_weight(tiny, name, manual[name])
    finally:
        for name in layers:
            wnb.model.architectures.set_layer_weight(tiny, name, dense[name])
    _assert_same_weights(got, manual)


ATTENTION = {"LlamaForCausalLM": "self_attn", "GPT2LMHeadModel": "attn", "GPTNeoXForCausalLM": "attention"}


def _prune_all_counting_calls(lm, windows, **kwargs):
    """SparseGPT on every FFN layer; returns (pruned weights, calls per block of its attention and of
    each FFN layer, by the layer's name within the block)."""
    calls = defaultdict(lambda: defaultdict(int))
    layers = wnb.ffn_layers(lm)  # (finding the forward order runs the model once)
    blocks = wnb.model.architectures.decoder_blocks(lm)
    counted = [(i, "attention", f"{b}.{ATTENTION[lm.name]}") for i, b in enumerate(blocks)]
    counted += [(wnb.model.architectures.block_of(lm, n), n.rsplit(".", 1)[1], n) for n in layers]

    def count(i, what):
        def hook(mod, args, out):
            calls[i][what] += 1
        return hook

    hooks = [lm.model.get_submodule(name).register_forward_hook(count(i, what)) for i, what, name in counted]
    try:
        with pruned(lm, "sparsegpt", 0.5, calib=windows, batch_size=2, progress=False, **kwargs):
            weights = {n: wnb.layer_weight(lm, n).detach().clone() for n in layers}
    finally:
        for h in hooks:
            h.remove()
    return weights, {i: dict(c) for i, c in calls.items()}


def _assert_same_weights(a, b):
    for name in a:
        assert torch.equal(a[name] == 0, b[name] == 0), name
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize("true_sequential", [True, False])
def test_walk_runs_each_layer_once_when_only_the_mlp_changes(tiny, tiny_windows, monkeypatch, true_sequential):
    """Blocks that add their MLP to the residual (Llama, GPT-2) run attention once per batch: later
    stages and the outputs start from the residual kept by the first run, and the outputs from the
    kept inputs of the last layer. True-sequential then runs every layer once per batch. The weights
    equal those of whole-block runs. GPT-NeoX's parallel residual has no such form: blocks run whole."""
    import wnb.tracing.sequential as sequential

    got, calls = _prune_all_counting_calls(tiny, tiny_windows, true_sequential=true_sequential)
    monkeypatch.setattr(sequential, "_residual_mlp", lambda *a: None)
    whole, whole_calls = _prune_all_counting_calls(tiny, tiny_windows, true_sequential=true_sequential)
    _assert_same_weights(got, whole)
    batches = tiny_windows.shape[0] // 2
    runs = 3 if true_sequential else 2  # a run per stage, then one for the outputs (not in the last block)
    probe = 1 if true_sequential else 0  # one batch of the first block, to find the stages
    assert [c["attention"] for c in whole_calls.values()] == [runs * batches + probe, runs * batches,
                                                              (runs - 1) * batches]
    if tiny.name == "GPTNeoXForCausalLM":
        assert calls == whole_calls
        return
    # (+ 1: the first block's probe on one batch checks the forms against the whole block)
    assert [c["attention"] for c in calls.values()] == [batches + 1, batches, batches]
    first = {k: v for k, v in calls[1].items() if k != "attention"}
    if true_sequential:
        assert set(first.values()) == {batches}, first
    else:  # the layers before the last run twice: on the dense block, then in the edited one
        assert first == {**{k: 2 * batches for k in first}, list(first)[-1]: batches}, first


def test_walk_runs_the_mlp_again_when_the_last_inputs_would_be_too_big(tiny_llama, tiny_windows, monkeypatch):
    import wnb.tracing.sequential as sequential

    kept, _ = _prune_all_counting_calls(tiny_llama, tiny_windows)
    monkeypatch.setattr(sequential, "KEEP_BYTES", 0)
    rerun, calls = _prune_all_counting_calls(tiny_llama, tiny_windows)
    _assert_same_weights(rerun, kept)
    batches = tiny_windows.shape[0] // 2
    # the probe runs gate_proj twice (whole block, MLP alone); stage 2 and the outputs once per batch each
    assert calls[0]["gate_proj"] == 2 * batches + 2 and calls[1]["gate_proj"] == 2 * batches
    assert calls[2]["gate_proj"] == batches


def test_walk_falls_back_to_whole_blocks_when_the_mlp_form_does_not_hold(tiny_llama, tiny_windows, monkeypatch):
    """The MLP-only runs are checked once against the whole block: with a wrong residual form (the
    attention's norm taken for the MLP's) the check fails and every block is run whole."""
    import wnb.tracing.sequential as sequential

    monkeypatch.setattr(sequential, "_residual_mlp", lambda *a: None)
    whole, _ = _prune_all_counting_calls(tiny_llama, tiny_windows)
    monkeypatch.undo()
    monkeypatch.setattr(sequential, "_RESIDUAL_MLP", (("input_layernorm", "mlp"),))
    got, calls = _prune_all_counting_calls(tiny_llama, tiny_windows)
    _assert_same_weights(got, whole)
    batches = tiny_windows.shape[0] // 2
    assert [c["attention"] for c in calls.values()] == [3 * batches + 1, 3 * batches, 2 * batches]

