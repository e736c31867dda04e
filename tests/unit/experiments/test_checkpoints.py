"""checkpoint_study over local checkpoint folders (tiny random models saved with save_pretrained): WD and the
Wasserstein sets from outputs read with a plain forward hook, the overlap with the last set from Python sets, the
ablation's Δ perplexity from logits of the plain transformers model with a clamp hook written here, McNemar
against scipy's exact binomial test."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import hooked_outputs, tiny_word_llama
from matplotlib.figure import Figure
from scipy import stats

import wnb
from wnb.errors import WnbError
from wnb.experiments import checkpoints
from wnb.experiments.checkpoints import checkpoint_study, step_of
from wnb.plots.checkpoints import checkpoint_plot

FRACTION = 0.05  # 3 of the 64 neurons of each layer


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three 'training checkpoints' (different random models) and a copy of the last one."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = []
    for step, seed in ((10, 1), (200, 2), (3000, 3), (3001, 3)):
        lm = tiny_word_llama(seed=seed)
        folder = root / f"step{step}"
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
        out.append(folder)
    return out


@pytest.fixture(scope="module")
def windows():
    lm = tiny_word_llama()
    ids = lm.tokenizer(" ".join(p["good"] for p in wnb.minimal_pairs(n=8)), add_special_tokens=False).input_ids
    ids = torch.tensor(ids[:12 * 16]).view(12, 16)
    return ids[:6], ids[6:]


def _ppl(model, ids, clamp=None):
    handles = []
    for name, idx in (clamp or {}).items():
        def hook(mod, args, out, idx=idx):
            out = out.clone()
            out[..., idx] = out[..., idx].clamp(min=0)
            return out
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    return math.exp(F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:]).item())


def test_study_over_local_folders(folders, windows):
    calib, held_out = windows
    pairs = wnb.minimal_pairs(n=3)
    table = checkpoint_study(folders, calib, held_out, pairs=pairs, fraction=FRACTION, device="cpu", progress=False)
    assert list(table["checkpoint"]) == ["step10", "step200", "step3000", "step3001"]
    assert list(table["step"]) == [10, 200, 3000, 3001]
    sets = []
    for folder, row in zip(folders, table.itertuples()):
        lm = wnb.load_model(str(folder), device="cpu")
        layers = wnb.first_ffn_layers(lm)
        wd = {n: wnb.wasserstein_to_gaussian(hooked_outputs(lm, n, calib)) for n in layers}
        top = {n: torch.argsort(w, descending=True)[:3] for n, w in wd.items()}
        sets.append({n: set(t.tolist()) for n, t in top.items()})
        assert row.wd_mean == pytest.approx(torch.cat(list(wd.values())).mean().item(), rel=1e-9)
        assert row.wd_top_mean == pytest.approx(torch.cat([wd[n][t] for n, t in top.items()]).mean().item(), rel=1e-9)
        assert row.n_neurons == 3 * len(layers)
        dense, ablated = _ppl(lm.model, held_out), _ppl(lm.model, held_out, top)
        assert row.perplexity == pytest.approx(dense, rel=1e-5)
        assert row.delta_perplexity == pytest.approx(ablated - dense, abs=2e-5 * dense)  # float32 logits
        assert row.delta_ppl_low <= row.delta_perplexity <= row.delta_ppl_high
        right = wnb.minimal_pair_scores(lm, pairs, progress=False)["correct"].to_numpy()
        with wnb.sign_ablated(lm, top):
            wrong = wnb.minimal_pair_scores(lm, pairs, progress=False)["correct"].to_numpy()
        b, c = int((right & ~wrong).sum()), int((~right & wrong).sum())
        assert row.mcnemar_p == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)
        assert row.delta_accuracy == pytest.approx(wrong.mean() - right.mean())
    for s, row in zip(sets, table.itertuples()):
        expected = sum(len(s[n] & sets[-1][n]) for n in s) / sum(len(v) for v in sets[-1].values())
        assert row.overlap_final == pytest.approx(expected)
    assert table["overlap_final"].iloc[-2:].tolist() == [1.0, 1.0]   # the last set, and a copy of its checkpoint
    assert isinstance(checkpoint_plot(table, title="checkpoints"), Figure)
    assert isinstance(checkpoint_plot(table.drop(columns=["step", "delta_accuracy"])), Figure)


def test_revisions_of_a_model(folders, windows, monkeypatch):
    calib, held_out = windows
    asked = []

    def fake(name, device="auto", dtype=None, revision=None):
        asked.append((name, revision))
        return wnb.load_model(str(folders[0 if revision == "step10" else 2]), device="cpu")

    monkeypatch.setattr(checkpoints, "load_model", fake)
    table = checkpoint_study(["step10", "step3000"], calib, held_out, model="org/tiny", fraction=FRACTION,
                             progress=False)
    assert asked == [("org/tiny", "step10"), ("org/tiny", "step3000")]
    assert list(table["step"]) == [10, 3000] and "accuracy" not in table and table["overlap_final"].iloc[-1] == 1


def test_bad_input(folders, windows):
    calib, held_out = windows
    with pytest.raises(WnbError, match="neither a folder"):
        checkpoint_study(["step10"], calib, held_out, progress=False)
    with pytest.raises(WnbError, match="empty"):
        checkpoint_study([], calib, held_out, progress=False)
    with pytest.raises(WnbError, match="unknown side"):
        checkpoint_study(folders, calib, held_out, side="neg", progress=False)
    with pytest.raises(WnbError, match="no rows or lacks"):
        checkpoint_plot(checkpoint_study(folders[:1], calib, held_out, progress=False).drop(columns="overlap_final"))
    assert [step_of(s) for s in ("step143000", "checkpoint-500", "runs/step_20", "main")] == [143000, 500, 20, None]
