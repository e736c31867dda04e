"""The app reads from one pass: after the session's whole reading (every FFN layer, every calibration token,
with contexts), its model overview, the contexts of "What it reads" of any FFN layer and the sign study's
ranking run no further forward of the model (counted with a plain forward pre-hook), and equal the
per-layer references (exact WD of plain-hook captures, a full sort for the top and bottom k)."""
import numpy as np
import pytest
import torch
from helpers import count_forwards, hooked_layers

import wnb
from wnb.app.layers import CONTEXT_K, READ_BATCH
from wnb.app.session import Session
from wnb.scoring.wasserstein import wasserstein_to_gaussian


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WNB_STRICT", raising=False)


@pytest.fixture
def session(tiny_llama):
    g = torch.Generator().manual_seed(5)
    calib, held_out = torch.randint(0, 128, (12, 16), generator=g), torch.randint(0, 128, (2, 16), generator=g)
    return Session(lm=tiny_llama, calib=calib, held_out=held_out, budget="small")


def top_k(y: torch.Tensor, k: int, side: str) -> torch.Tensor:
    """Flat token indices ``[k, d]`` of each column's k highest (lowest) outputs, ties to the lower index."""
    v = y.double().numpy()
    rows = np.arange(v.shape[0])
    return torch.from_numpy(np.stack([np.lexsort((rows, -v[:, j] if side == "high" else v[:, j]))[:k]
                                      for j in range(v.shape[1])], axis=1))


def test_one_pass_serves_the_overview_and_what_it_reads_of_every_layer(session, tiny_llama):
    layers = wnb.ffn_layers(tiny_llama)
    picked = [layers[0], layers[len(layers) // 2], layers[-1]]
    calls = count_forwards(tiny_llama)
    session.contexts(picked[1], progress=False)  # not stored yet: one pass reads every FFN layer
    assert len(calls) == -(-session.calib.shape[0] // READ_BATCH)
    calls.clear()
    scores, table = session.overview(progress=False)
    contexts = {name: session.contexts(name, progress=False) for name in picked}
    ranking = session.sign_scores(layers[:3], progress=False)
    calls.handle.remove()
    assert calls == []  # no further forward of the model
    ref = hooked_layers(tiny_llama, layers, session.calib)
    assert list(table["layer"]) == layers
    for name in layers:
        torch.testing.assert_close(scores[name], wasserstein_to_gaussian(ref[name]), atol=1e-3, rtol=0)
    for name in layers[:3]:
        torch.testing.assert_close(ranking[name], scores[name])
    for name, ctx in contexts.items():
        assert ctx.k == CONTEXT_K and ctx.n_tokens == session.calib.numel()
        for side in ("high", "low"):
            assert torch.equal(ctx.state[f"{side}_index"], top_k(ref[name], CONTEXT_K, side))


def test_before_the_whole_reading_the_overview_reads_its_own_tokens(session, tiny_llama):
    calls = count_forwards(tiny_llama)
    scores, table = session.overview(progress=False)
    batches = -(-session.calib.shape[0] // READ_BATCH)
    assert len(calls) == batches  # one pass (a forward per batch), every FFN layer, budget.overview_tokens
    tokens = min(session.budget.overview_tokens, session.calib.numel())
    ref = hooked_layers(tiny_llama, list(scores), session.calib, tokens)
    for name, wd in scores.items():
        torch.testing.assert_close(wd, wasserstein_to_gaussian(ref[name]), atol=1e-3, rtol=0)
    calls.clear()
    session.overview(progress=False)  # cached
    session.whole_reading(progress=False)
    assert len(calls) == batches  # the whole reading: one more pass
    session.overview(progress=False)  # from the whole reading now
    session.whole_reading(progress=False)
    calls.handle.remove()
    assert len(calls) == batches


def test_a_held_capture_gives_the_contexts_the_pass_gives(session, tiny_llama, tmp_path, monkeypatch):
    """The neuron view's capture of a layer gives its contexts without a pass, as the whole reading would."""
    name = wnb.ffn_layers(tiny_llama)[4]
    session.layer(name, progress=False)
    calls = count_forwards(tiny_llama)
    ctx = session.contexts(name, progress=False)
    calls.handle.remove()
    assert calls == []
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "elsewhere"))
    fresh = Session(lm=tiny_llama, calib=session.calib, held_out=session.held_out, budget="small")
    whole = fresh.whole_reading(progress=False).contexts_state(name)
    for key in ("high_index", "low_index", "sample_index", "bin_count"):
        assert torch.equal(ctx.state[key], whole[key]), key
    torch.testing.assert_close(ctx.state["high_values"], whole["high_values"], rtol=1e-6, atol=1e-7)
