"""The one-pass reader (wnb.scoring.reader) and the many-layer scorer built on it, against independent
references: plain PyTorch hook captures of full forwards, the closed-form exact WD and scipy's W1 of the
captured outputs, numpy moments; passes counted with a plain forward pre-hook."""
import numpy as np
import pytest
import torch
from helpers import count_forwards, hooked_layers
from scipy import stats as st

import wnb
from wnb.core.jobs import Cancelled
from wnb.data.positions import position_tail_share
from wnb.errors import WnbError
from wnb.scoring.layers import score_layers
from wnb.scoring.read_plan import plan_pass
from wnb.scoring.reader import read_layers
from wnb.scoring.wasserstein import wasserstein_to_gaussian


def scipy_wd(y: torch.Tensor, neurons) -> torch.Tensor:
    """scipy's W1 between standardized columns and 10⁵ N(0, 1) quantiles (within ~1e-4 of the continuous law)."""
    grid = st.norm.ppf((np.arange(100_000) + 0.5) / 100_000)
    y = y.double().numpy()
    return torch.tensor([st.wasserstein_distance((y[:, j] - y[:, j].mean()) / y[:, j].std(), grid) for j in neurons])


def check_stats(s: dict, kept: torch.Tensor, wd_tol: float = 1e-3) -> None:
    """Per-neuron statistics of one layer against its kept outputs ``[tokens, d]``."""
    torch.testing.assert_close(s["wd"], wasserstein_to_gaussian(kept), atol=wd_tol, rtol=0, equal_nan=True)
    some = list(range(0, kept.shape[1], 7))
    torch.testing.assert_close(s["wd"][some], scipy_wd(kept, some), atol=wd_tol + 2e-4, rtol=0)
    y = kept.double().numpy()
    torch.testing.assert_close(s["mean"], torch.from_numpy(y.mean(0)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s["variance"], torch.from_numpy(y.var(0)), atol=1e-8, rtol=1e-4)
    torch.testing.assert_close(s["skewness"], torch.from_numpy(st.skew(y)), atol=1e-3, rtol=1e-3)
    assert ((s["frac_negative"] - torch.from_numpy((y < 0).mean(0))).abs() * y.shape[0] <= 1).all()


def test_every_layer_in_one_pass_against_plain_hooks(tiny, tiny_windows):
    layers = wnb.ffn_layers(tiny)
    plan = plan_pass(tiny, tiny_windows, wd="streaming", batch_size=4)
    calls = count_forwards(tiny)
    stats, fed, used = read_layers(tiny, tiny_windows, plan, progress=False)
    calls.handle.remove()
    assert len(calls) == plan.n_batches == 2 and list(stats) == layers and torch.equal(used, tiny_windows)
    ref = hooked_layers(tiny, layers, tiny_windows)
    for name in layers:
        check_stats(stats[name], ref[name])
        assert fed[name] is None


def test_skip_first_and_a_window_cut_short(tiny_llama, tiny_windows):
    name = wnb.ffn_layers(tiny_llama)[3]
    plan = plan_pass(tiny_llama, tiny_windows, [name], skip_first=1, max_tokens=90, batch_size=2, wd="streaming")
    stats, _, used = read_layers(tiny_llama, tiny_windows, plan, progress=False)
    rows = np.flatnonzero(np.arange(90) % 16 >= 1)
    y = hooked_layers(tiny_llama, [name], tiny_windows, 90)[name]
    check_stats(stats[name], y[torch.as_tensor(rows)])
    assert used.shape[0] == 6 and stats[name]["bin_edges"][0] == 1 and stats[name]["bin_count"].sum() == rows.size


def test_exact_wd_and_first_position_share_from_kept_outputs(tiny_gpt2, tiny_windows):
    layers = wnb.ffn_layers(tiny_gpt2)[:2]
    plan = plan_pass(tiny_gpt2, tiny_windows, layers, wd="exact")
    stats, _, _ = read_layers(tiny_gpt2, tiny_windows, plan, progress=False)
    ref = hooked_layers(tiny_gpt2, layers, tiny_windows)
    for name in layers:
        torch.testing.assert_close(stats[name]["wd"], wasserstein_to_gaussian(ref[name]), rtol=0, atol=1e-9)
        some = list(range(0, ref[name].shape[1], 9))
        torch.testing.assert_close(stats[name]["wd"][some], scipy_wd(ref[name], some), rtol=0, atol=3e-4)
        torch.testing.assert_close(stats[name]["pos0_tail_share"], position_tail_share(ref[name], 16), equal_nan=True)


def test_stops_after_the_deepest_layer_and_leaves_the_model_as_it_was(tiny_llama, tiny_windows):
    calls = []
    head = tiny_llama.model.get_submodule("lm_head").register_forward_hook(lambda *a: calls.append(1))
    before = tiny_llama.model(tiny_windows[:1]).logits
    calls.clear()
    plan = plan_pass(tiny_llama, tiny_windows, [wnb.ffn_layers(tiny_llama)[0]], batch_size=2)
    read_layers(tiny_llama, tiny_windows, plan, progress=False)
    assert not calls  # no batch reached the head
    head.remove()
    assert all(not m._forward_hooks for m in tiny_llama.model.modules())
    torch.testing.assert_close(tiny_llama.model(tiny_windows[:1]).logits, before, rtol=0, atol=0)


def test_progress_and_cancel(tiny_llama, tiny_windows):
    seen = []
    plan = plan_pass(tiny_llama, tiny_windows, batch_size=2)
    read_layers(tiny_llama, tiny_windows, plan, progress=False, callback=seen.append)
    assert [p.tokens_done for p in seen] == [0, 32, 64, 96] and seen[-1].tokens_total == 96
    assert seen[0].seconds_left is None and seen[-1].seconds_left == 0

    def cancel(p):
        if p.tokens_done >= 32:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        read_layers(tiny_llama, tiny_windows, plan, progress=False, callback=cancel)
    assert all(not m._forward_hooks for m in tiny_llama.model.modules())


def test_plan_states_memory_and_refuses_what_does_not_fit(tiny_llama, tiny_windows):
    plan = plan_pass(tiny_llama, tiny_windows, wd="streaming")
    assert plan.neurons == sum(plan.widths) and "bytes per neuron" in plan.describe()
    with pytest.raises(WnbError, match="limit"):
        plan_pass(tiny_llama, tiny_windows, max_bytes=10_000)
    streaming = plan_pass(tiny_llama, tiny_windows, wd="streaming", batch_size=6)
    exact = plan_pass(tiny_llama, tiny_windows, wd="exact", batch_size=6)
    assert exact.exact_bytes == 96 * streaming.neurons * 4 and streaming.exact_bytes == 0
    budget = streaming.total_bytes + exact.exact_bytes // 2  # auto: exact only where the outputs fit
    assert plan_pass(tiny_llama, tiny_windows, max_bytes=budget, batch_size=6).wd == "streaming"
    assert plan_pass(tiny_llama, tiny_windows, max_bytes=exact.total_bytes, batch_size=6).wd == "exact"
    for bad in ({"wd": "sorted"}, {"n_bins": 255}, {"skip_first": 16}, {"contexts": 3}):
        with pytest.raises(WnbError):
            plan_pass(tiny_llama, tiny_windows, **bad)
    with pytest.raises(WnbError, match="not a linear layer"):
        plan_pass(tiny_llama, tiny_windows, ["model.layers.0.mlp"])


def test_score_layers_reads_every_layer_in_one_pass(tiny_neox, tiny_windows):
    """auto and streaming: one forward for every layer; exact: as many as the memory budget needs; every
    method equals the per-layer reference (exact WD of plain-hook captures) and keeps the fields asked for."""
    layers = wnb.ffn_layers(tiny_neox)
    ref = hooked_layers(tiny_neox, layers, tiny_windows)
    calls = count_forwards(tiny_neox)
    for wd, tol in (("auto", 1e-9), ("streaming", 1e-3)):
        calls.clear()
        stats = score_layers(tiny_neox, tiny_windows, layers, ("wd", "pos0_tail_share"), wd=wd, batch_size=6,
                             progress=False)
        assert len(calls) == 1 and list(stats) == layers
        for name in layers:
            assert set(stats[name]) == {"wd", "pos0_tail_share"}
            torch.testing.assert_close(stats[name]["wd"], wasserstein_to_gaussian(ref[name]), atol=tol, rtol=0)
    one = plan_pass(tiny_neox, tiny_windows, layers[:1], wd="exact", batch_size=6)
    calls.clear()  # room for the kept outputs and sketches of about two layers beside one batch
    stats = score_layers(tiny_neox, tiny_windows, layers, ("wd", "mean"), wd="exact", batch_size=6,
                         max_bytes=one.total_bytes + one.state_bytes + one.exact_bytes, progress=False)
    calls.handle.remove()
    assert 1 < len(calls) <= len(layers)
    for name in layers:
        torch.testing.assert_close(stats[name]["wd"], wasserstein_to_gaussian(ref[name]), atol=1e-9, rtol=0)
        torch.testing.assert_close(stats[name]["mean"], ref[name].double().mean(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(WnbError, match="fields"):
        score_layers(tiny_neox, tiny_windows, layers, ("md",))
