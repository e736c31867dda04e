"""The one-pass reader on the bundled model against plain-hook captures of full forwards: streaming WD within
1e-3 of the exact WD, top and bottom 20 identical to a full sort for sampled neurons of the first, a middle and
the last FFN layer, the first position's tail share close to the exact one; a remote (NDIF) model read
through wnb.capture."""
import numpy as np
import torch
from helpers import hooked_layers

import wnb
from wnb.data.positions import position_tail_share, sink_flags
from wnb.reading.reader import read_model


def brute_force(y, k, side):
    """Flat indices ``[k, d]`` of the k highest (lowest) outputs per column, ties to the lower index."""
    v = y.double().numpy()
    rows = np.arange(v.shape[0])
    return torch.from_numpy(np.stack([np.lexsort((rows, -v[:, j] if side == "high" else v[:, j]))[:k]
                                      for j in range(v.shape[1])], axis=1))


def check_layer(reading, name, y, k, neurons):
    s = reading.stats[name]
    torch.testing.assert_close(s["wd"], wnb.wasserstein_to_gaussian(y), atol=1e-3, rtol=0, equal_nan=True)
    torch.testing.assert_close(s["mean"], y.double().mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s["variance"], y.double().var(0, correction=0), atol=1e-8, rtol=1e-4)
    state = reading.contexts_state(name)
    for side in ("high", "low"):
        expected = brute_force(y[:, neurons], k, side)
        assert torch.equal(state[f"{side}_index"][:, neurons], expected), (name, side)


def test_bundled_first_middle_last_layers(bundled, bundled_windows):
    calib = bundled_windows[0][:8]
    layers = [wnb.ffn_layers(bundled)[i] for i in (0, 46, 89)]
    reading = read_model(bundled, calib, contexts=20, wd="streaming", progress=False)
    assert len(reading.layers) == 90
    ref = hooked_layers(bundled, layers, calib)
    gen = torch.Generator().manual_seed(0)
    for name in layers:
        y = ref[name]
        check_layer(reading, name, y, 20, torch.randperm(y.shape[1], generator=gen)[:64])
        exact = position_tail_share(y, calib.shape[1])
        got = reading.stats[name]["pos0_tail_share"]
        ok = ~torch.isnan(exact)
        assert (got[ok] - exact[ok]).abs().mean() < 0.02
        assert (sink_flags(got) == sink_flags(exact)).double().mean() > 0.97


def test_simulated_remote_model_reads_through_capture(bundled):
    """A remote model (nnsight's in-process NDIF simulation) is read batch by batch through wnb.capture."""
    windows = torch.randint(0, 1000, (3, 32), generator=torch.Generator().manual_seed(0))
    layers = wnb.ffn_layers(bundled)[3:5]
    remote = wnb.load_model(remote="local")
    got = read_model(remote, windows, layers, contexts=5, batch_size=2, max_tokens=80, progress=False)
    want = hooked_layers(bundled, layers, windows, 80)
    for name in layers:
        check_layer(got, name, want[name], 5, torch.arange(want[name].shape[1]))
