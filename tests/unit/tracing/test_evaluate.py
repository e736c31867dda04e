"""Evaluation helpers against scipy, numpy and Hugging Face's own loss."""
import hashlib
import math

import numpy as np
import pytest
import torch
from scipy import stats

import wnb
import wnb.model.architectures
import wnb.tracing
from wnb.errors import WnbError


def test_perplexity_equals_hf_loss(tiny, tiny_windows):
    with torch.no_grad():
        losses = [tiny.model(w[None], labels=w[None]).loss.item() for w in tiny_windows]
    # every window predicts the same number of tokens, so the mean of window means is the token mean
    assert wnb.perplexity(tiny, tiny_windows, batch_size=4, progress=False) == pytest.approx(
        math.exp(np.mean(losses)), rel=1e-5)


def test_window_nll_equals_hf_loss_per_window(tiny, tiny_windows):
    from wnb.tracing.nll import window_nll

    with torch.no_grad():
        losses = [tiny.model(w[None], labels=w[None]).loss.item() for w in tiny_windows]
    np.testing.assert_allclose(window_nll(tiny, tiny_windows, batch_size=4, progress=False).numpy(), losses, rtol=1e-5)


def test_perplexity_interval_matches_an_independent_resampling():
    from wnb.core.inference import perplexity_of

    nll = np.random.default_rng(3).gamma(9.0, 0.3, size=40)  # per-window NLLs, spread like real windows
    row = perplexity_of(nll, n_boot=20_000, seed=1)
    rng = np.random.default_rng(11)
    boot = np.exp(nll[rng.integers(0, nll.size, size=(20_000, nll.size))].mean(1))
    ref_low, ref_high = np.percentile(boot, [2.5, 97.5])
    width = ref_high - ref_low
    assert abs(row["ppl_low"] - ref_low) < 0.05 * width and abs(row["ppl_high"] - ref_high) < 0.05 * width
    assert row["ppl_low"] < math.exp(nll.mean()) < row["ppl_high"]
    assert row["perplexity"] == pytest.approx(math.exp(nll.mean()))
    assert perplexity_of(nll, n_boot=500, seed=1) == perplexity_of(nll, n_boot=500, seed=1)
    point = perplexity_of(torch.tensor([2.0]))
    assert point["ppl_low"] == pytest.approx(math.exp(2.0)) and point["ppl_high"] == pytest.approx(math.exp(2.0))


def test_sweep_rows_carry_intervals(tiny_llama, tiny_windows):
    table = wnb.sweep(tiny_llama, tiny_windows[:4], tiny_windows[4:], methods=("magnitude",), sparsities=(0.5,),
                      progress=False)
    assert {"ppl_low", "ppl_high"} <= set(table.columns)
    assert (table["ppl_low"] <= table["perplexity"]).all() and (table["perplexity"] <= table["ppl_high"]).all()


def test_output_rmse_matches_numpy():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(400, 7, generator=g) * torch.arange(1, 8)
    approx = dense + 0.1 * torch.randn(400, 7, generator=g)
    dense[:, 3] = 2.0  # constant neuron: relative error undefined
    rmse, rel = wnb.output_rmse(dense, approx)
    d, a = dense.double().numpy(), approx.double().numpy()
    expected = np.sqrt(((a - d) ** 2).mean(0))
    np.testing.assert_allclose(rmse.numpy(), expected, rtol=1e-12)
    keep = np.arange(7) != 3
    np.testing.assert_allclose(rel.numpy()[keep], expected[keep] / d.std(0)[keep], rtol=1e-12)
    assert math.isnan(rel[3].item())


def test_output_shift_matches_scipy():
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(300, 6, generator=g)
    approx = torch.randn(170, 6, generator=g) * 1.5 + 0.3  # different token counts are allowed
    got = wnb.output_shift(dense, approx, chunk=4)
    expected = [stats.wasserstein_distance(dense[:, i].double().numpy(), approx[:, i].double().numpy()) for i in range(6)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)
    assert torch.equal(wnb.output_shift(dense, dense), torch.zeros(6, dtype=torch.float64))


def test_neuron_errors_table_and_bad_shapes():
    g = torch.Generator().manual_seed(2)
    dense = torch.randn(50, 4, generator=g)
    dense -= dense.mean(0)  # zero mean: RMSE of 0.5·dense is half its std
    table = wnb.neuron_errors(dense, dense * 0.5)
    assert list(table.columns) == ["neuron", "rmse", "rel_rmse", "shift"]
    np.testing.assert_allclose(table["rel_rmse"], 0.5, rtol=1e-9)
    with pytest.raises(WnbError, match="same shape"):
        wnb.output_rmse(dense, dense[:10])
    with pytest.raises(WnbError, match="n_neurons"):
        wnb.output_shift(dense, dense[:, :2])


def test_layer_outputs_equal_module(tiny, tiny_windows):
    """Conv1D (GPT-2) and Linear both: X Wᵀ + b with the [out, in] weight equals the module's output."""
    name = wnb.ffn_layers(tiny)[0]
    acts = wnb.capture(tiny, [name], tiny_windows, progress=False)[name]
    bias = tiny.model.get_submodule(name).bias
    got = wnb.layer_outputs(acts.inputs, wnb.layer_weight(tiny, name).detach(), bias)
    torch.testing.assert_close(got, acts.outputs, rtol=1e-5, atol=1e-5)


def _hash(lm):
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in lm.model.parameters())).hexdigest()


def test_sweep_magnitude_rows_equal_brute_force_pruning(tiny_llama, tiny_windows):
    calib, held_out = tiny_windows[:3], tiny_windows[3:]
    before = _hash(tiny_llama)
    table = wnb.sweep(tiny_llama, calib, held_out, methods=("magnitude",), sparsities=(0.5, "2:4"),
                      progress=False)
    assert _hash(tiny_llama) == before
    assert list(table["method"]) == ["dense", "magnitude", "magnitude"]
    assert list(table["sparsity"]) == ["0%", "50%", "2:4"]
    assert (table["prune_seconds"] >= 0).all() and (table["eval_seconds"] > 0).all()
    assert table["perplexity"][0] == pytest.approx(wnb.perplexity(tiny_llama, held_out, progress=False))
    # magnitude pruning by hand: zero the smallest half of |W| of every FFN layer (numpy sort)
    layers = wnb.ffn_layers(tiny_llama)
    dense = {n: wnb.layer_weight(tiny_llama, n).detach().clone() for n in layers}
    try:
        for name, w in dense.items():
            flat = w.numpy().ravel()
            order = np.argsort(np.abs(flat), kind="stable")
            pruned = flat.copy()
            pruned[order[: flat.size // 2]] = 0
            wnb.model.architectures.set_layer_weight(tiny_llama, name, torch.from_numpy(pruned.reshape(w.shape)))
        expected = wnb.perplexity(tiny_llama, held_out, progress=False)
    finally:
        for name, w in dense.items():
            wnb.model.architectures.set_layer_weight(tiny_llama, name, w)
    assert table["perplexity"][1] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(WnbError, match="unknown pruning method"):
        wnb.sweep(tiny_llama, calib, held_out, methods=("obs",))


def test_ablation_table_prunes_the_chosen_neurons(tiny_llama, tiny_windows):
    calib, held_out = tiny_windows[:3], tiny_windows[3:]
    before = _hash(tiny_llama)
    table = wnb.ablation(tiny_llama, calib, held_out, criteria=("wd", "random"), fraction=0.1, sparsity=0.9,
                         progress=False)
    assert _hash(tiny_llama) == before
    assert list(table["criterion"]) == ["dense", "wd", "random"]
    dense_ppl = table["perplexity"][0]
    assert (table["perplexity"][1:] != dense_ppl).all()  # pruning a tenth of the rows at 90% changes it
    with pytest.raises(WnbError, match="unknown neuron selection"):
        wnb.ablation(tiny_llama, calib, held_out, criteria=("entropy",))
