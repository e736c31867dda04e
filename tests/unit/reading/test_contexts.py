"""neuron_contexts and contexts_from_outputs (thin functions over the one-pass reader, wnb.reading.reader) against
brute force: a full sort of a plain-hook capture, direct statistics, tokenizer.decode of the windows."""
import json

import numpy as np
import pytest
import torch
from helpers.contexts import assert_extremes, brute_force, hook_outputs

import wnb
import wnb.reading
import wnb.reading.extremes
from wnb.errors import WnbError
from wnb.reading.extremes import BANDS, RunningExtremes, token_keys


class WordTokenizer:
    """Decodes each id to a word (``w<id>``, space-joined): enough to check which ids a context holds."""

    def decode(self, ids, **_):
        return " ".join(f"w{i}" for i in ids)


@pytest.mark.parametrize("layer_index", [0, -1])
def test_extremes_equal_full_sort_of_hook_capture(tiny, tiny_windows, layer_index):
    layer = wnb.ffn_layers(tiny)[layer_index]
    ctx = wnb.neuron_contexts(tiny, layer, tiny_windows, k=7, batch_size=2, progress=False)
    y = hook_outputs(tiny, layer, tiny_windows)
    assert_extremes(ctx, y, 7)
    assert ctx.n_tokens == tiny_windows.numel() and ctx.n_neurons == y.shape[1]
    std, mean = torch.std_mean(y.double(), dim=0, correction=0)
    torch.testing.assert_close(ctx.mean, mean, rtol=0, atol=1e-6 * std.max().item())
    torch.testing.assert_close(ctx.std, std, rtol=1e-5, atol=1e-9)


def test_many_small_batches_equal_one_batch(tiny_llama):
    windows = torch.randint(0, 128, (12, 16), generator=torch.Generator().manual_seed(3))
    layer = wnb.ffn_layers(tiny_llama)[1]
    one = wnb.neuron_contexts(tiny_llama, layer, windows, k=5, batch_size=12, progress=False)
    many = wnb.neuron_contexts(tiny_llama, layer, windows, k=5, batch_size=1, progress=False)
    for name in ("high_index", "high_values", "low_index", "low_values"):
        assert torch.equal(one.state[name], many.state[name]), name
    torch.testing.assert_close(one.std, many.std, rtol=1e-6, atol=0)


@pytest.mark.parametrize("batch_tokens", [1, 7, 130, 320, 10_000])  # 1, 1, 3, 5 and all 10 windows a batch
def test_ties_go_to_the_lower_index_for_every_batching(batch_tokens):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(-3, 4, (640, 5), generator=gen).float()  # seven values: ties everywhere
    y[:, 4] = 1.0  # a constant neuron: every output ties
    windows = torch.randint(0, 50, (10, 64), generator=gen)
    ctx = wnb.contexts_from_outputs(y, windows, k=6, batch_tokens=batch_tokens)
    assert_extremes(ctx, y, 6)


def test_running_extremes_fed_in_any_order_equal_a_full_sort():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(-2, 3, (300, 4), generator=gen).float()
    ext = RunningExtremes(4, k=5)
    for start in (270, 0, 120, 30, 240, 60, 210, 90, 180, 150):  # not in token order
        ext.update(y[start:start + 30].contiguous(), start)
    ext.flush()
    for side in ("high", "low"):
        assert torch.equal(torch.from_numpy(ext.index[side]), brute_force(y, 5, side)), side


def test_batch_tokens_are_rounded_up_to_whole_windows():
    gen = torch.Generator().manual_seed(10)
    y = torch.randn(640, 6, generator=gen) ** 3
    windows = torch.zeros(10, 64, dtype=torch.long)
    states = {b: wnb.contexts_from_outputs(y, windows, k=3, batch_tokens=b).state for b in (1, 64, 130, 192)}
    for a, b in ((1, 64), (130, 192)):  # ceil(b / 64) windows a batch: 1 and 1, 3 and 3
        for name in ("sample_index", "high_index", "low_index"):
            assert torch.equal(states[a][name], states[b][name]), (a, b, name)
    with pytest.raises(WnbError, match="batch_tokens"):
        wnb.contexts_from_outputs(y, windows, batch_tokens=0)


def test_fewer_tokens_than_k():
    y = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    ctx = wnb.contexts_from_outputs(y, torch.arange(6)[None], k=10, batch_tokens=4)
    top = ctx.top(0)
    assert len(top) == 6 and top["value"].tolist() == sorted(y[:, 0].double().tolist(), reverse=True)
    assert (ctx.state["high_index"][6:] == -1).all()


def test_skip_first_leaves_positions_out(tiny_llama, tiny_windows):
    layer = wnb.ffn_layers(tiny_llama)[0]
    seq_len = tiny_windows.shape[1]
    ctx = wnb.neuron_contexts(tiny_llama, layer, tiny_windows, k=4, skip_first=2, progress=False)
    y = hook_outputs(tiny_llama, layer, tiny_windows)
    keep = torch.arange(y.shape[0]) % seq_len >= 2
    assert_extremes(ctx, y, 4, keep)
    std, mean = torch.std_mean(y[keep].double(), dim=0, correction=0)
    torch.testing.assert_close(ctx.std, std, rtol=1e-5, atol=1e-9)
    assert ctx.n_tokens == int(keep.sum())
    assert (ctx.top(0)["position"] >= 2).all() and ctx.positions(0)["first"].min() == 2


def test_top_frame_and_decoded_contexts_at_window_edges():
    seq_len, width = 10, 3
    windows = torch.arange(40).view(4, seq_len)
    position = torch.arange(40) % seq_len
    y = torch.stack([position.float(), position.float() + 0.01 * torch.arange(40)], dim=1)
    ctx = wnb.contexts_from_outputs(y, windows, WordTokenizer(), k=4, width=width)
    high = ctx.top(0, "high")
    assert list(high.columns) == ["rank", "window", "position", "value", "z", "token", "left", "right", "token_id"]
    assert high["rank"].tolist() == [1, 2, 3, 4]
    assert (high["position"] == seq_len - 1).all()  # the last position of every window: no right context
    assert high["window"].tolist() == [0, 1, 2, 3]  # ties to the lower index
    low = ctx.top(1, "low")
    assert (low["position"] == 0).all()  # the first position: no left context
    tok = WordTokenizer()
    for frame in (high, low, ctx.samples(0, per_band=5)):
        for row in frame.itertuples():
            ids = windows[row.window].tolist()
            p = row.position
            assert row.token == tok.decode(ids[p:p + 1])
            assert row.left == tok.decode(ids[max(0, p - width):p])
            assert row.right == tok.decode(ids[p + 1:p + 1 + width])
            assert row.value == pytest.approx(y[row.window * seq_len + p, 0 if frame is not low else 1].item())
    assert high["right"].eq("").all() and low["left"].eq("").all()
    z = (high["value"] - ctx.mean[0].item()) / ctx.std[0].item()
    np.testing.assert_allclose(high["z"], z)


def test_samples_lie_in_their_bands_and_are_seeded():
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(20_000, 3, generator=gen) ** 3  # heavy tails: every band has members
    windows = torch.zeros(200, 100, dtype=torch.long)
    ctx = wnb.contexts_from_outputs(y, windows, k=3, n_samples=8, batch_tokens=2048)
    frame = ctx.samples(1, seed=0, per_band=3)
    z = (y[:, 1].double() - y[:, 1].double().mean()) / y[:, 1].double().std(correction=0)
    edges = [b[0] for b in BANDS[1:]]
    for row in frame.itertuples():
        flat = row.window * 100 + row.position
        assert row.value == pytest.approx(y[flat, 1].item())
        assert row.z == pytest.approx(z[flat].item(), rel=1e-6)
        assert row.band == int(np.searchsorted(edges, row.z, side="left"))  # bands are (low, high]
        assert row.label == wnb.reading.extremes.BAND_LABELS[row.band]
    assert frame.groupby("band").size().reindex(range(7)).fillna(0).ge(1).all()  # every band shown
    assert frame.groupby("band").size().max() <= 3
    assert frame.equals(ctx.samples(1, seed=0, per_band=3))
    assert not frame.equals(ctx.samples(1, seed=5, per_band=3))


def test_band_samples_are_the_lowest_keys_of_their_band_beyond_three_sigma():
    """Beyond ±3σ every member is looked at: the kept examples are the band's lowest-key members."""
    gen = torch.Generator().manual_seed(5)
    y = torch.randn(8192, 2, generator=gen)
    ctx = wnb.contexts_from_outputs(y, torch.zeros(64, 128, dtype=torch.long), k=2, n_samples=4, batch_tokens=8192)
    z = (y[:, 0].double() - ctx.mean[0]) / ctx.std[0]
    for band in (0, 6):
        members = torch.nonzero(z <= -3 if band == 0 else z > 3).flatten()
        keys = token_keys(members, 0)
        expected = members[torch.argsort(keys)[:4]].sort().values
        held = ctx.state["sample_index"][band, :, 0]
        assert torch.equal(held[held >= 0].sort().values, expected)


def test_band_samples_over_many_batches_are_uniform_draws_of_their_band_and_seeded():
    """Fed in 10 batches (the bands set with the moments of the batches before), a band's examples are still a
    uniform draw from it: over 40 seeds (the keys are per token, shared by the neurons, so neurons are not
    independent draws; seeds are) their tokens spread uniformly over the tokens and their z follow N(0, 1) cut
    to the band (Kolmogorov–Smirnov, scipy). The same seed draws the same examples, another seed others."""
    stats = pytest.importorskip("scipy.stats")
    y = torch.randn(4_000, 2, generator=torch.Generator().manual_seed(11))
    z_all = (y.double() - y.double().mean(0)) / y.double().std(0, correction=0)
    windows = torch.zeros(40, 100, dtype=torch.long)
    drawn = {band: [] for band in ((-1.0, 1.0), (1.0, 2.0))}
    for seed in range(40):
        index = wnb.contexts_from_outputs(y, windows, k=2, n_samples=8, seed=seed, batch_tokens=400).state["sample_index"]
        for band, held in drawn.items():
            held.append(index[BANDS.index(band), :, 0])
    for (low, high), held in drawn.items():
        index = torch.cat(held)
        assert (index >= 0).all()
        assert stats.kstest(index.numpy() / 4_000, "uniform").pvalue > 0.01
        assert stats.kstest(z_all[index, 0].numpy(), stats.truncnorm(low, high).cdf).pvalue > 0.01
    one, again, other = (wnb.contexts_from_outputs(y, windows, n_samples=8, seed=seed, batch_tokens=400)
                         for seed in (3, 3, 4))
    assert torch.equal(one.state["sample_index"], again.state["sample_index"])
    assert not torch.equal(one.state["sample_index"], other.state["sample_index"])


def test_positions_by_bin_equal_direct_statistics():
    seq_len = 40
    gen = torch.Generator().manual_seed(6)
    y = torch.randn(400, 2, generator=gen) + torch.arange(400)[:, None] % seq_len * 0.1
    ctx = wnb.contexts_from_outputs(y, torch.zeros(10, seq_len, dtype=torch.long), batch_tokens=37)
    frame = ctx.positions(1)
    assert frame["first"].tolist() == [0, 1, 2, 3, 4, 8, 16, 32]
    assert frame["last"].tolist() == [0, 1, 2, 3, 7, 15, 31, 39]
    pos = torch.arange(400) % seq_len
    for row in frame.itertuples():
        part = y[(pos >= row.first) & (pos <= row.last), 1].double()
        assert row.count == part.numel()
        assert row.mean == pytest.approx(part.mean().item(), abs=1e-6)
        assert row.std == pytest.approx(part.std(correction=0).item(), rel=1e-5)
        assert row.mean_z == pytest.approx((part.mean().item() - ctx.mean[1].item()) / ctx.std[1].item(), abs=1e-5)


def test_first_position_share_flags_a_sink():
    seq_len = 32
    gen = torch.Generator().manual_seed(7)
    y = torch.randn(32 * seq_len, 3, generator=gen)
    first = torch.arange(y.shape[0]) % seq_len == 0
    y[first, 0] += 50.0  # massive activation on the first token of every window
    y[first, 1] -= 50.0
    ctx = wnb.contexts_from_outputs(y, torch.zeros(32, seq_len, dtype=torch.long), k=20)
    table = ctx.table()
    assert table["first_share"][0] == 1.0 and table["first_share"][1] == 1.0 and table["first_share"][2] < 0.3
    assert table["sink"].tolist() == [True, True, False]
    skipped = wnb.contexts_from_outputs(y, torch.zeros(32, seq_len, dtype=torch.long), k=20, skip_first=1)
    assert not skipped.table()["sink"].any()


def test_state_round_trips_through_safetensors(tmp_path, tiny_llama, tiny_windows):
    from safetensors.torch import load_file, save_file

    ctx = wnb.neuron_contexts(tiny_llama, wnb.ffn_layers(tiny_llama)[0], tiny_windows, k=3, progress=False)
    state = ctx.to_state()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    meta = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    assert all(isinstance(v, (int, str)) for v in meta.values())
    save_file(tensors, tmp_path / "ctx.safetensors", metadata={"meta": json.dumps(meta)})
    loaded = load_file(tmp_path / "ctx.safetensors")
    from safetensors import safe_open

    with safe_open(tmp_path / "ctx.safetensors", "pt") as f:
        loaded.update(json.loads(f.metadata()["meta"]))
    again = wnb.NeuronContexts.from_state(loaded, None)
    for neuron in (0, 5):
        assert again.top(neuron, "low").equals(ctx.top(neuron, "low"))
        assert again.samples(neuron).equals(ctx.samples(neuron))
        assert again.positions(neuron).equals(ctx.positions(neuron))
    broken = dict(loaded, high_index=loaded["high_index"][:2])
    with pytest.raises(WnbError, match="shapes"):
        wnb.NeuronContexts.from_state(broken)
    with pytest.raises(WnbError, match="format"):
        wnb.NeuronContexts.from_state({"layer": "x"})


def test_state_size_does_not_grow_with_tokens():
    gen = torch.Generator().manual_seed(8)
    small = wnb.contexts_from_outputs(torch.randn(1_000, 16, generator=gen), torch.zeros(10, 100, dtype=torch.long))
    large = wnb.contexts_from_outputs(torch.randn(20_000, 16, generator=gen), torch.zeros(200, 100, dtype=torch.long))
    assert small.nbytes() == large.nbytes()
    assert large.nbytes(windows=True) - large.nbytes() == 20_000 * 4  # the windows, as int32


def test_bad_arguments(tiny_llama, tiny_windows):
    layer = wnb.ffn_layers(tiny_llama)[0]
    for kwargs in ({"k": 0}, {"width": -1}, {"skip_first": 16}, {"n_samples": 0}, {"k": 2.5}):
        with pytest.raises(WnbError):
            wnb.neuron_contexts(tiny_llama, layer, tiny_windows, progress=False, **kwargs)
    with pytest.raises(WnbError, match="one layer"):
        wnb.neuron_contexts(tiny_llama, [layer], tiny_windows, progress=False)
    with pytest.raises(WnbError, match="not a linear layer"):
        wnb.neuron_contexts(tiny_llama, "model.layers.0.mlp", tiny_windows, progress=False)
    ctx = wnb.neuron_contexts(tiny_llama, layer, tiny_windows, k=2, progress=False)
    with pytest.raises(WnbError, match="between 0 and 63"):
        ctx.top(64)
    with pytest.raises(WnbError, match="side"):
        ctx.top(0, side="upper")
    with pytest.raises(WnbError, match="NaN"):
        wnb.contexts_from_outputs(torch.tensor([[1.0], [float("nan")]]), torch.zeros(1, 2, dtype=torch.long))
    windows = torch.zeros(2, 3, dtype=torch.long)
    for outputs in (torch.ones(6), torch.ones(7, 2), torch.ones(0, 2), torch.ones(6, 2).numpy()):
        with pytest.raises(WnbError, match="outputs must be"):
            wnb.contexts_from_outputs(outputs, windows)
    for kwargs in ({"width": -1}, {"k": 0}, {"n_samples": 0}, {"skip_first": 3}):
        with pytest.raises(WnbError):
            wnb.contexts_from_outputs(torch.randn(6, 2), windows, **kwargs)


def test_the_retired_accumulator_names_what_replaced_it():
    with pytest.raises(AttributeError, match="retired.*neuron_contexts"):
        wnb.ContextAccumulator
    assert "ContextAccumulator" not in wnb.__all__ and "neuron_contexts" in wnb.__all__


def test_scale_is_the_largest_absolute_output():
    y = torch.tensor([[1.0, -5.0], [-3.0, 2.0], [2.0, 0.0]])
    ctx = wnb.contexts_from_outputs(y, torch.zeros(1, 3, dtype=torch.long), k=2)
    assert ctx.scale(0) == 3.0 and ctx.scale(1) == 5.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_equals_cpu(tiny_windows):
    gen = torch.Generator().manual_seed(9)
    y = torch.randn(4000, 33, generator=gen) ** 3
    windows = torch.zeros(40, 100, dtype=torch.long)
    cpu = wnb.contexts_from_outputs(y, windows, k=6, batch_tokens=500)
    gpu = wnb.contexts_from_outputs(y.cuda(), windows, k=6, batch_tokens=500)
    for name in ("high_index", "low_index", "high_values", "low_values"):
        assert torch.equal(cpu.state[name], gpu.state[name]), name
    torch.testing.assert_close(cpu.std, gpu.std)  # the band samples may differ at band edges (float32 sums)
    assert ((gpu.state["sample_index"] >= 0).sum() - (cpu.state["sample_index"] >= 0).sum()).abs() < 20


