"""read_model and cached_reading: contexts of many layers from one pass, against brute force (a full sort of
plain-hook captures, ties to the lower token index), band samples checked against their bands, the cache
round trip counted in forward passes (a plain forward pre-hook)."""
import numpy as np
import pytest
import torch
from helpers import count_forwards, hooked_layers

import wnb
from wnb.core import cache
from wnb.errors import WnbError
from wnb.model.state import changed
from wnb.reading.extremes import BANDS
from wnb.reading.reader import cached_reading, contexts_key, plan_read, read_model
from wnb.reading.readout import Readout


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))


def brute_force(y, k, side, rows=None):
    """Flat indices ``[k, d]`` of the k highest (lowest) outputs per column, ties to the lower index."""
    rows = np.arange(y.shape[0]) if rows is None else rows
    v = y.double().numpy()[rows]
    return torch.from_numpy(np.stack([rows[np.lexsort((rows, -v[:, j] if side == "high" else v[:, j]))[:k]]
                                      for j in range(y.shape[1])], axis=1))


def check_extremes(reading, name, y, k, rows=None):
    state = reading.contexts_state(name)
    for side in ("high", "low"):
        expected = brute_force(y, k, side, rows)
        assert torch.equal(state[f"{side}_index"], expected), (name, side)
        torch.testing.assert_close(state[f"{side}_values"], y[expected, torch.arange(y.shape[1])].float(),
                                   rtol=1e-6, atol=1e-7)  # the reader's own forward may differ in the last bit


def test_first_middle_and_last_layer_against_brute_force(tiny, tiny_windows):
    layers = wnb.ffn_layers(tiny)
    picked = [layers[0], layers[len(layers) // 2], layers[-1]]
    calls = count_forwards(tiny)
    reading = read_model(tiny, tiny_windows, contexts=4, wd="streaming", batch_size=4, progress=False)
    calls.handle.remove()
    assert len(calls) == 2 and reading.layers == layers  # 6 windows in batches of 4: every layer in each forward
    ref = hooked_layers(tiny, picked, tiny_windows)
    for name in picked:
        check_extremes(reading, name, ref[name], k=4)
        ctx = reading.contexts(name)
        assert ctx.n_tokens == 96 and ctx.layer == name and torch.equal(ctx.windows, tiny_windows.int())
        torch.testing.assert_close(ctx.mean, ref[name].double().mean(0), atol=1e-5, rtol=1e-5)


def test_skip_first_and_a_window_cut_short(tiny_llama, tiny_windows):
    name = wnb.ffn_layers(tiny_llama)[3]
    reading = read_model(tiny_llama, tiny_windows, [name], contexts=3, skip_first=1, max_tokens=90, batch_size=2,
                         wd="streaming", progress=False)
    y = hooked_layers(tiny_llama, [name], tiny_windows, 90)[name]
    rows = np.flatnonzero(np.arange(90) % 16 >= 1)
    check_extremes(reading, name, y, k=3, rows=rows)
    assert reading.n_tokens == 90 and reading.contexts(name).n_tokens == rows.size


def test_band_samples_are_outputs_of_their_band(tiny_neox, tiny_windows):
    name = wnb.ffn_layers(tiny_neox)[0]
    windows = tiny_windows.repeat(8, 1)[:, torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    reading = read_model(tiny_neox, windows, [name], contexts=2, n_samples=4, batch_size=8, progress=False)
    y = hooked_layers(tiny_neox, [name], windows)[name].double()
    state = reading.contexts_state(name)
    index, values = state["sample_index"], state["sample_values"]
    held = index >= 0
    cols = torch.arange(y.shape[1]).expand_as(index)
    torch.testing.assert_close(values[held].double(), y[index[held], cols[held]], rtol=1e-6, atol=1e-7)
    z = (y[index.clamp_min(0), cols] - y.mean(0)) / y.std(0, correction=0)  # with the final moments
    edges = torch.tensor([-np.inf] + [b[1] for b in BANDS], dtype=torch.float64)
    band = torch.arange(len(BANDS))[:, None, None].expand_as(index)
    # bands are assigned with the moments of the batches before: in the band, or within 0.3σ of its edges
    assert ((z[held] > edges[band[held]] - 0.3) & (z[held] <= edges[band[held] + 1] + 0.3)).all()
    assert held[BANDS.index((-1.0, 1.0))].all()  # the bulk always has members
    inside = (z[held] > edges[band[held]]) & (z[held] <= edges[band[held] + 1])
    assert inside.double().mean() > 0.95


def test_the_cache_holds_the_reading_once_and_a_second_read_runs_no_forward(tiny_llama, tiny_windows):
    args = dict(contexts=3, seed=2, batch_size=3, wd="streaming", progress=False)
    calls = count_forwards(tiny_llama)
    first = cached_reading(tiny_llama, tiny_windows, **args)
    assert len(calls) == 2
    again = cached_reading(tiny_llama, tiny_windows, **args)
    assert len(calls) == 2 and again.meta == first.meta and again.layers == first.layers
    for name in first.layers:
        for stat, value in first.stats[name].items():
            torch.testing.assert_close(again.stats[name][stat], value, equal_nan=True, rtol=0, atol=0)
        key = contexts_key(tiny_llama.name, tiny_windows, name, k=3, seed=2, batch_size=3)
        stored = cache.lookup("contexts", key)
        assert torch.equal(stored["high_index"], first.contexts_state(name)["high_index"])
        assert again.contexts(name).top(0).equals(first.contexts(name).top(0))
    assert len(list((cache.cache_dir() / "reading").iterdir())) == 1
    assert len(list((cache.cache_dir() / "contexts").iterdir())) == len(first.layers)
    cached_reading(tiny_llama, tiny_windows, **{**args, "seed": 3})  # another seed: another reading
    assert len(calls) == 4
    with changed(tiny_llama, "a test's change"):  # not the dense model: read, never stored nor reused
        cached_reading(tiny_llama, tiny_windows, **{**args, "seed": 4})
        cached_reading(tiny_llama, tiny_windows, **args)
    calls.handle.remove()
    assert len(calls) == 8 and len(list((cache.cache_dir() / "reading").iterdir())) == 2


def test_a_reading_cached_by_an_older_sketch_is_read_again(tiny_llama, tiny_windows, monkeypatch):
    """What a sketch computes changed (its version is bumped): a reading it cached before is not served."""
    import wnb.reading.reader as reader

    args = dict(seed=2, batch_size=3, wd="streaming", progress=False)
    calls = count_forwards(tiny_llama)
    version = reader.SKETCH_VERSION
    monkeypatch.setattr(reader, "SKETCH_VERSION", version - 1)
    cached_reading(tiny_llama, tiny_windows, **args)
    monkeypatch.setattr(reader, "SKETCH_VERSION", version)
    cached_reading(tiny_llama, tiny_windows, **args)
    cached_reading(tiny_llama, tiny_windows, **args)
    calls.handle.remove()
    assert len(calls) == 4 and len(list((cache.cache_dir() / "reading").iterdir())) == 2


def test_readout_tables_and_state(tiny_llama, tiny_windows):
    reading = read_model(tiny_llama, tiny_windows, contexts=2, progress=False)
    name = reading.layers[0]
    table = reading.table(name)
    assert table["rank"].tolist() == list(range(1, len(table) + 1)) and table["wd"].is_monotonic_decreasing
    assert {"frac_negative", "wd_below_zero", "pos0_tail_share", "sink", "lower_share"} <= set(table)
    assert reading.overview(tiny_llama)["layer"].tolist() == reading.layers
    assert set(reading.layer_statistics()[name]) == {"wd", "pos0_tail_share"}
    assert len(reading.neurons(tiny_llama)) == sum(reading.meta["widths"])
    positions = reading.positions(name, 5)
    assert positions["count"].sum() == 96 and positions["first"].iloc[0] == 0
    back = Readout.from_state(reading.to_state())
    with pytest.raises(WnbError, match="no contexts"):
        Readout(reading.meta | {"contexts": 0}, reading.stats).contexts(name)
    with pytest.raises(WnbError, match="no longer stored"):
        back.contexts(name)
    with pytest.raises(WnbError, match="Readout state"):
        Readout.from_state({"format": "wnb-readout-1", "stats": {name: {"wd": torch.zeros(2)}}})


def test_plan_states_the_contexts_memory(tiny_llama, tiny_windows):
    plain = plan_read(tiny_llama, tiny_windows, wd="streaming")
    plan = plan_read(tiny_llama, tiny_windows, contexts=5, wd="streaming")
    assert plan.state_bytes > plain.state_bytes and plan.contexts == 5
    reading = read_model(tiny_llama, tiny_windows, contexts=5, wd="streaming", progress=False)
    assert reading.meta["total_bytes"] == plan.total_bytes
    with pytest.raises(WnbError):
        plan_read(tiny_llama, tiny_windows, contexts=-1)
