"""Sign-specific ablation: the clamp against a plain PyTorch hook, hook removal, the study's controls,
the matched control's bisection, the depth profile, and bad input refused before any work."""
from __future__ import annotations

import math
import os
import signal
import statistics
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers.sign import scores, windows  # noqa: F401 (fixtures)
from scipy import stats

import wnb
import wnb.core
import wnb.core.inference
from wnb.compression import clamp
from wnb.experiments import sign_ablation as sa
from wnb.experiments import sign_controls, sign_statistics


def _picks(lm, per_layer=5, seed=0):
    """A few neurons of every first-FFN layer of ``lm``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in wnb.first_ffn_layers(lm):
        n = wnb.layer_weight(lm, name).shape[0]
        out[name] = torch.randperm(n, generator=gen)[:per_layer]
    return out


def _reference_hooks(lm, neurons, side):
    """The same intervention written as plain PyTorch forward hooks that return a modified copy."""
    def make(idx):
        def hook(mod, args, out):
            out = out.clone()
            if side == "negative":
                out[..., idx] = out[..., idx].clamp(min=0)
            elif side == "positive":
                out[..., idx] = out[..., idx].clamp(max=0)
            else:
                out[..., idx] = 0
            return out
        return hook
    return [lm.model.get_submodule(n).register_forward_hook(make(torch.as_tensor(i))) for n, i in neurons.items()]


def _hook_count(lm) -> int:
    return sum(len(m._forward_hooks) for m in lm.model.modules())


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(ids).logits


# ---------------------------------------------------------------- the clamp

@pytest.mark.parametrize("side", clamp.SIDES)
def test_clamp_equals_a_plain_forward_hook(tiny, tiny_windows, side):
    neurons = _picks(tiny, per_layer=8)
    dense = _logits(tiny, tiny_windows)
    weights = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    hooks_before = _hook_count(tiny)
    with wnb.sign_ablated(tiny, neurons, side=side) as plan:
        assert _hook_count(tiny) == hooks_before + len(neurons)
        assert set(plan) == set(neurons)
        ours = _logits(tiny, tiny_windows)
    handles = _reference_hooks(tiny, neurons, side)
    try:
        reference = _logits(tiny, tiny_windows)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert not torch.equal(ours, dense)  # the intervention does something
    assert _hook_count(tiny) == hooks_before
    torch.testing.assert_close(_logits(tiny, tiny_windows), dense, rtol=0, atol=0)
    for k, v in tiny.model.state_dict().items():
        assert torch.equal(v, weights[k]), k


@pytest.mark.parametrize("side", clamp.SIDES)
def test_only_the_chosen_outputs_change(tiny, tiny_windows, side):
    layer = wnb.first_ffn_layers(tiny)[1]
    chosen = torch.tensor([0, 5, 9, 31])
    seen = []
    mod = tiny.model.get_submodule(layer)
    with wnb.sign_ablated(tiny, {layer: chosen}, side=side):
        spy = mod.register_forward_hook(lambda m, a, o: seen.append(o.reshape(-1, o.shape[-1]).clone()))
        try:
            # the layer's own output in a capture is the one before the clamp, whether or not the trace
            # stops at this layer
            own = wnb.capture(tiny, [layer], tiny_windows, inputs=False, progress=False)[layer].outputs
            later = wnb.linear_layers(tiny)[wnb.linear_layers(tiny).index(layer) + 1]
            both = wnb.capture(tiny, [layer, later], tiny_windows, inputs=False, progress=False)[layer].outputs
            _logits(tiny, tiny_windows)
        finally:
            spy.remove()
    dense = wnb.capture(tiny, [layer], tiny_windows, inputs=False, progress=False)[layer].outputs
    torch.testing.assert_close(own, dense, rtol=0, atol=0)
    torch.testing.assert_close(both, dense, rtol=0, atol=0)
    ablated = seen[-1]  # what the rest of the model got (a hook after the clamp's sees its result)
    rest = torch.ones(dense.shape[1], dtype=torch.bool)
    rest[chosen] = False
    torch.testing.assert_close(ablated[:, rest], dense[:, rest], rtol=0, atol=0)
    expect = {"negative": dense[:, chosen].clamp(min=0), "positive": dense[:, chosen].clamp(max=0),
              "both": torch.zeros_like(dense[:, chosen])}[side]
    torch.testing.assert_close(ablated[:, chosen], expect, rtol=0, atol=0)
    assert (dense[:, chosen] < 0).any() and (dense[:, chosen] > 0).any()


def test_applies_inside_nnsight_traces_perplexity_and_capture(tiny_llama, tiny_windows):
    neurons = _picks(tiny_llama, per_layer=10)
    later = "model.layers.2.mlp.down_proj"
    handles = _reference_hooks(tiny_llama, neurons, "negative")
    try:
        ref_logits = _logits(tiny_llama, tiny_windows)
        ref_ppl = wnb.perplexity(tiny_llama, tiny_windows, progress=False)
        ref_later = wnb.capture(tiny_llama, [later], tiny_windows, progress=False)[later]
    finally:
        for h in handles:
            h.remove()
    dense_ppl = wnb.perplexity(tiny_llama, tiny_windows, progress=False)
    with wnb.sign_ablated(tiny_llama, neurons):
        with torch.no_grad(), tiny_llama.nnsight.trace(tiny_windows):
            saved = tiny_llama.nnsight.output.save()
        traced = saved.value if hasattr(saved, "value") else saved
        traced = traced.logits if hasattr(traced, "logits") else traced[0]
        ppl = wnb.perplexity(tiny_llama, tiny_windows, progress=False)
        later_acts = wnb.capture(tiny_llama, [later], tiny_windows, progress=False)[later]
    torch.testing.assert_close(traced, ref_logits, rtol=0, atol=1e-6)
    assert ppl == pytest.approx(ref_ppl, rel=1e-12) and ppl != dense_ppl
    torch.testing.assert_close(later_acts.inputs, ref_later.inputs, rtol=0, atol=1e-6)
    torch.testing.assert_close(later_acts.outputs, ref_later.outputs, rtol=0, atol=1e-6)


def test_applies_during_generation(tiny_llama):
    neurons = _picks(tiny_llama, per_layer=20)
    prompt = torch.tensor([[3, 14, 15, 92, 65]])
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    handles = _reference_hooks(tiny_llama, neurons, "both")
    try:
        reference = tiny_llama.model.generate(prompt, **kw)
    finally:
        for h in handles:
            h.remove()
    calls = []
    layer = next(iter(neurons))
    with wnb.sign_ablated(tiny_llama, neurons, side="both"):
        # registered after the clamp, so it sees the clamp's result
        spy = tiny_llama.model.get_submodule(layer).register_forward_hook(lambda m, a, o: calls.append(o.clone()))
        try:
            ours = tiny_llama.model.generate(prompt, **kw)
        finally:
            spy.remove()
    assert torch.equal(ours, reference)
    assert len(calls) == 6  # one forward per new token, every one clamped
    assert all((c[..., neurons[layer]] == 0).all() for c in calls)


def test_hooks_removed_after_an_exception(tiny_llama, tiny_windows):
    before, dense = _hook_count(tiny_llama), _logits(tiny_llama, tiny_windows)
    with pytest.raises(RuntimeError, match="boom"):
        with wnb.sign_ablated(tiny_llama, _picks(tiny_llama)):
            _logits(tiny_llama, tiny_windows)
            raise RuntimeError("boom")
    assert _hook_count(tiny_llama) == before
    torch.testing.assert_close(_logits(tiny_llama, tiny_windows), dense, rtol=0, atol=0)


def test_hooks_removed_after_keyboard_interrupt(tiny_llama, tiny_windows):
    before = _hook_count(tiny_llama)
    with pytest.raises(KeyboardInterrupt):
        with wnb.sign_ablated(tiny_llama, _picks(tiny_llama)):
            raise KeyboardInterrupt
    assert _hook_count(tiny_llama) == before


def test_hooks_removed_after_sigint(tiny_llama, tiny_windows):
    """A real Ctrl-C: SIGINT sent to this process while the ablated model runs."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT does not raise KeyboardInterrupt in this process")
    before, dense = _hook_count(tiny_llama), _logits(tiny_llama, tiny_windows)
    with pytest.raises(KeyboardInterrupt):
        with wnb.sign_ablated(tiny_llama, _picks(tiny_llama)):
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the handler runs between bytecodes
                _logits(tiny_llama, tiny_windows)
    assert _hook_count(tiny_llama) == before
    torch.testing.assert_close(_logits(tiny_llama, tiny_windows), dense, rtol=0, atol=0)


def test_neurons_accept_lists_masks_and_empty(tiny_llama, tiny_windows):
    layer = wnb.first_ffn_layers(tiny_llama)[0]
    mask = torch.zeros(64, dtype=torch.bool)
    mask[[1, 2, 3]] = True
    with wnb.sign_ablated(tiny_llama, {layer: mask}) as plan:
        assert plan[layer].tolist() == [1, 2, 3]
        a = _logits(tiny_llama, tiny_windows)
    with wnb.sign_ablated(tiny_llama, {layer: [3, 2, 1, 1]}):
        torch.testing.assert_close(_logits(tiny_llama, tiny_windows), a, rtol=0, atol=0)
    before = _hook_count(tiny_llama)
    with wnb.sign_ablated(tiny_llama, {}), wnb.sign_ablated(tiny_llama, {layer: []}):
        assert _hook_count(tiny_llama) == before


@pytest.mark.parametrize("neurons, side, match", [
    ({"model.layers.0.mlp.gate_proj": [1]}, "negativ", "unknown side"),
    ({"model.layers.0.mlp.gate_prj": [1]}, "negative", "not a linear layer.*closest valid names"),
    ({"model.layers.0.mlp.gate_proj": [64]}, "negative", r"64 neurons.*\[0, 64\)"),
    ({"model.layers.0.mlp.gate_proj": [-1]}, "negative", r"\[0, 64\)"),
    ({"model.layers.0.mlp.gate_proj": [0.5]}, "negative", "integer"),
    ({"model.layers.0.mlp.gate_proj": None}, "negative", "no neuron indices"),
    ([1, 2], "negative", "map layer names"),
])
def test_bad_input_is_refused_before_any_hook(tiny_llama, neurons, side, match):
    before = _hook_count(tiny_llama)
    with pytest.raises(wnb.WnbError, match=match):
        with wnb.sign_ablated(tiny_llama, neurons, side=side):
            pytest.fail("the block must not run")
    assert _hook_count(tiny_llama) == before


# ---------------------------------------------------------------- selections and the study





def test_wasserstein_scores_match_layer_wd(tiny_llama, windows, scores):
    layers = wnb.first_ffn_layers(tiny_llama)
    assert list(scores) == layers
    acts = wnb.capture(tiny_llama, layers, windows[0], inputs=False, progress=False)
    for name in layers:
        torch.testing.assert_close(scores[name], wnb.wasserstein_to_gaussian(acts[name].outputs))
    # capture split over several passes by the memory cap gives the same numbers
    small = wnb.wasserstein_scores(tiny_llama, windows[0], max_bytes=1, progress=False)
    for name in layers:
        torch.testing.assert_close(small[name], scores[name])
    streamed = wnb.wasserstein_scores(tiny_llama, windows[0], streaming=True, progress=False)
    for name in layers:
        torch.testing.assert_close(streamed[name], scores[name], atol=5e-3, rtol=0)


def test_selections(scores):
    top = wnb.select_wasserstein(scores, fraction=0.05)
    for name, wd in scores.items():
        k = round(0.05 * wd.numel())
        assert top[name].numel() == k
        assert set(top[name].tolist()) == set(torch.argsort(wd, descending=True)[:k].tolist())
    counts = {n: i.numel() for n, i in top.items()}
    a, b = wnb.select_random(scores, counts, seed=1), wnb.select_random(scores, counts, seed=1)
    assert all(torch.equal(a[n], b[n]) and a[n].numel() == counts[n] for n in scores)
    assert any(not torch.equal(a[n], c) for n, c in wnb.select_random(scores, counts, seed=2).items())
    cands = wnb.matched_candidates(scores, exclude=0.10, seed=0)
    for name, wd in scores.items():
        excluded = set(torch.argsort(wd, descending=True)[:round(0.10 * wd.numel())].tolist())
        assert not excluded & set(cands[name].tolist())
        assert len(excluded) + cands[name].numel() == wd.numel()
    sel = wnb.select_matched(cands, 7)
    assert all(torch.equal(sel[n], cands[n][:7]) for n in cands)


def test_bisection_finds_the_count_within_tolerance():
    calls = []

    def ppl(count):
        calls.append(count)
        return 10.0 + 0.5 * count

    count, reached = sign_controls.bisect_count(ppl, widest=1000, target=60.0, tolerance=0.02)
    assert reached and abs((10 + 0.5 * count) / 60 - 1) <= 0.02
    assert len(calls) <= 12
    count, reached = sign_controls.bisect_count(ppl, widest=50, target=60.0, tolerance=0.02)  # 35 at most: unreachable
    assert (count, reached) == (50, False)
    step = lambda c: 10.0 if c < 300 else 100.0  # jumps over the band: the closest
    count, reached = sign_controls.bisect_count(step, widest=1000, target=60.0, tolerance=0.02)
    assert reached and count in (299, 300)


def _study(lm, windows, scores, **kw):
    return wnb.sign_ablation_study(lm, None, windows[1], fraction=0.05, scores=scores, progress=False, **kw)


def test_study_table_and_controls(tiny_llama, windows, scores):
    table = _study(tiny_llama, windows, scores, seeds=(0, 1))
    assert list(table["selection"]) == ["dense", "wasserstein", "mirror", "random", "random", "matched"]
    assert table["seed"].tolist()[3:] == [0, 1, 0]
    top = wnb.select_wasserstein(scores, 0.05)
    counts = {n: i.numel() for n, i in top.items()}
    w = table.iloc[1]
    assert w["n_neurons"] == sum(counts.values())
    assert (table.loc[table.selection == "random", "n_neurons"] == w["n_neurons"]).all()
    for seed in (0, 1):
        assert {n: i.numel() for n, i in wnb.select_random(scores, counts, seed).items()} == counts
    dense = wnb.perplexity(tiny_llama, windows[1], progress=False)
    assert table.iloc[0]["perplexity"] == pytest.approx(dense, rel=1e-6)
    with wnb.sign_ablated(tiny_llama, top):
        assert w["perplexity"] == pytest.approx(wnb.perplexity(tiny_llama, windows[1], progress=False), rel=1e-6)
    mirror = table.iloc[2]  # the same neurons, their positive outputs zeroed: plain hooks as the reference
    assert mirror["side"] == "positive" and w["side"] == "negative" and mirror["n_neurons"] == w["n_neurons"]
    assert (mirror["wd_rank_min"], mirror["wd_rank_max"]) == (w["wd_rank_min"], w["wd_rank_max"])
    handles = _reference_hooks(tiny_llama, top, "positive")
    try:
        reference = wnb.perplexity(tiny_llama, windows[1], progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert mirror["perplexity"] == pytest.approx(reference, rel=1e-6) and mirror["perplexity"] != w["perplexity"]
    assert (table["ppl_low"] <= table["perplexity"]).all() and (table["perplexity"] <= table["ppl_high"]).all()

    m = table.iloc[-1]
    assert m["target_perplexity"] == w["perplexity"] and m["within_tolerance"]
    assert abs(m["perplexity"] / m["target_perplexity"] - 1) <= 0.02
    matched = wnb.select_matched(wnb.matched_candidates(scores, 0.10, seed=0), m["per_layer"])
    assert sum(i.numel() for i in matched.values()) == m["n_neurons"]
    for name in scores:
        assert not set(matched[name].tolist()) & set(top[name].tolist())  # disjoint from the Wasserstein set
    with wnb.sign_ablated(tiny_llama, matched):
        assert m["perplexity"] == pytest.approx(wnb.perplexity(tiny_llama, windows[1], progress=False), rel=1e-6)

    again = _study(tiny_llama, windows, scores, seeds=(0, 1))
    cols = ["selection", "seed", "n_neurons", "perplexity", "ppl_low", "ppl_high", "delta_perplexity",
            "delta_ppl_low", "w_delta_nll_high", "perplexity_seeds_sd"]
    assert again[cols].equals(table[cols])  # deterministic


def _window_nll(lm, windows, neurons=None, side="negative"):
    """Mean NLL per window by hand: logits of one plain forward, cross-entropy of every next token."""
    with wnb.sign_ablated(lm, neurons or {}, side), torch.no_grad():
        logits = lm.model(windows).logits
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), windows[:, 1:], reduction="none")
    return nll.double().mean(1).numpy()


def _loop(stat, n, n_boot=2000, seed=0):
    """A plain percentile bootstrap loop over windows (one resample at a time, numpy's default_rng)."""
    rng = np.random.default_rng(seed)
    values = [stat(rng.integers(0, n, n)) for _ in range(n_boot)]
    return np.percentile(values, [2.5, 97.5])


def test_study_paired_differences_against_a_plain_loop(tiny_llama, windows, scores):
    """Δ vs dense and Wasserstein − control, from per-window NLLs computed by hand and bootstrapped by a loop
    that resamples the same windows for both."""
    table = _study(tiny_llama, windows, scores, seeds=(0, 1)).set_index(["selection", "seed"])
    chosen = wnb.study_selections(table.reset_index(), scores)
    held = windows[1]
    sides = {key: table.loc[(key[0], pd.NA if key[1] is None else key[1]), "side"] for key in chosen}
    nll = {key: _window_nll(tiny_llama, held, neurons, sides[key]) for key, neurons in chosen.items()}
    n = held.shape[0]
    dense, w = nll[("dense", None)], nll[("wasserstein", None)]
    for (selection, seed), value in nll.items():
        if selection == "dense":
            assert pd.isna(table.loc[(selection, pd.NA), "delta_perplexity"])
            continue
        row = table.loc[(selection, pd.NA if seed is None else seed)]
        ppl = lambda i, a=dense, b=value: math.exp(b[i].mean()) - math.exp(a[i].mean())
        assert row["delta_perplexity"] == pytest.approx(ppl(np.arange(n)), rel=1e-5)
        assert (row["delta_ppl_low"], row["delta_ppl_high"]) == pytest.approx(tuple(_loop(ppl, n)), rel=1e-5, abs=1e-9)
        per_token = lambda i, a=dense, b=value: np.mean(b[i] - a[i])
        assert (row["delta_nll_low"], row["delta_nll_high"]) == pytest.approx(tuple(_loop(per_token, n)), abs=1e-7)
        if selection in ("random", "matched", "mirror"):  # the mirror: this side's effect − the other side's
            versus = lambda i, c=value: math.exp(w[i].mean()) - math.exp(c[i].mean())
            assert row["w_delta_perplexity"] == pytest.approx(versus(np.arange(n)), rel=1e-5, abs=1e-9)
            assert (row["w_delta_ppl_low"], row["w_delta_ppl_high"]) == pytest.approx(tuple(_loop(versus, n)),
                                                                                   rel=1e-5, abs=1e-9)
            assert row["w_nll_verdict"] == wnb.core.inference.verdict(row["w_delta_nll_low"], row["w_delta_nll_high"],
                                                                  "greater", minimum=sign_statistics.MINIMUM_DELTA_NLL)
        else:
            assert pd.isna(row["w_delta_perplexity"])
        assert row["nll_verdict"] in wnb.core.inference.VERDICTS
    random = table.loc["random"]  # the per-seed rows stay; the spread over seeds beside them
    assert len(random) == 2 and (random["n_seeds"] == 2).all()
    assert random["perplexity_seeds_mean"].iloc[0] == pytest.approx(statistics.mean(random["perplexity"]))
    assert random["perplexity_seeds_sd"].iloc[0] == pytest.approx(statistics.stdev(random["perplexity"]))
    assert random["w_delta_perplexity_seeds_max"].iloc[1] == random["w_delta_perplexity"].max()
    assert table.loc["matched", "n_seeds"].item() == 1 and pd.isna(table.loc["matched", "perplexity_seeds_sd"].item())


def test_study_reuses_its_held_out_passes(tiny_llama, windows, scores):
    calls = []

    def counting(*args, **kw):
        calls.append(1)
        return sa.ablated_nll(*args, **kw)

    _study(tiny_llama, windows, scores, seeds=(0, 1), controls=("random",), nll_fn=counting)
    assert len(calls) == 4  # dense, wasserstein, two random seeds: the paired statistics need no more


def test_the_summary_words_each_comparison_by_its_interval():
    """A hand-made study table: the line gives each paired difference with its interval and words its verdict."""
    nan = float("nan")
    base = {"n_neurons": 45, "perplexity": 20.0, "ppl_low": 19.0, "ppl_high": 21.0, "accuracy": 0.9, "acc_low": 0.8,
            "acc_high": 0.95}
    w = {**base, "selection": "wasserstein", "perplexity": 22.5, "delta_perplexity": 2.5, "delta_ppl_low": 1.5,
         "delta_ppl_high": 3.25, "delta_nll": 0.118, "delta_nll_low": 0.07, "delta_nll_high": 0.151,
         "nll_verdict": "holds", "accuracy": 0.7, "delta_accuracy": -0.2, "delta_acc_low": -0.3,
         "delta_acc_high": -0.1, "mcnemar_p": 0.0012, "acc_verdict": "holds"}
    spread = {"n_seeds": 2, "w_delta_perplexity_seeds_mean": 2.0, "w_delta_perplexity_seeds_sd": 0.5,
              "w_delta_perplexity_seeds_min": 1.6, "w_delta_perplexity_seeds_max": 2.4}
    rand = [{**base, **spread, "selection": "random", "w_delta_nll_low": lo, "w_delta_nll_high": hi,
             "w_nll_verdict": v} for lo, hi, v in ((0.05, 0.1, "holds"), (-0.004, 0.02, "inconclusive"))]
    matched = {**base, "selection": "matched", "n_neurons": 300, "w_delta_perplexity": 0.1, "w_delta_ppl_low": -0.2,
               "w_delta_ppl_high": 0.4, "w_delta_accuracy": -0.005, "w_delta_acc_low": -0.01,
               "w_delta_acc_high": 0.004, "w_mcnemar_p": 0.75, "w_acc_verdict": "not observed"}
    mirror = {**base, "selection": "mirror", "side": "positive", "w_delta_perplexity": 1.2, "w_delta_ppl_low": 0.4,
              "w_delta_ppl_high": 2.0, "w_delta_nll_low": 0.02, "w_delta_nll_high": 0.09, "w_nll_verdict": "holds",
              "w_delta_accuracy": -0.15, "w_delta_acc_low": -0.25, "w_delta_acc_high": -0.05, "w_mcnemar_p": 0.004,
              "w_acc_verdict": "holds"}
    study = pd.DataFrame([{**base, "selection": "dense", "mcnemar_p": nan}, w, *rand, matched])
    with_mirror = sign_statistics.study_words(pd.concat([study.assign(side="negative"), pd.DataFrame([mirror])],
                                                        ignore_index=True))
    assert "negative − positive side of the same neurons (the mirror): Δ perplexity +1.20 [+0.40, +2.00] (holds)" \
        in with_mirror and "mirror twins" not in with_mirror
    assert "; negative − positive side Δ -15.0 [-25.0, -5.0] points, McNemar p 0.004 (holds)" in with_mirror
    text = sign_statistics.study_words(study.assign(side="negative"))
    assert "mirror" not in text
    assert text.startswith("perplexity 20.00 [19.00, 21.00] dense, 22.50 with the negative side of 45 Wasserstein "
                           "neurons: Δ +2.50 [+1.50, +3.25], Δ NLL/token +0.118 [+0.070, +0.151] (holds)")
    assert ("Wasserstein − random over 2 seeds: Δ perplexity mean +2.00 (sd 0.50, range +1.60 to +2.40); per "
            "seed: holds, inconclusive: the interval [-0.004, 0.02] includes both 0 and the declared minimum "
            "effect (0.01)") in text
    assert "Wasserstein − matched (300 neurons): Δ perplexity +0.10 [-0.20, +0.40]" in text
    assert ("minimal pairs 90.0% [80.0%, 95.0%] dense, 70.0% Wasserstein: Δ -20.0 [-30.0, -10.0] points, McNemar "
            "p 0.0012 (holds); Wasserstein − matched Δ -0.5 [-1.0, +0.4] points, McNemar p 0.75 (not observed at "
            "this sample size)") in text
    one = sign_statistics.study_words(study.drop(index=3).assign(side="negative", w_delta_perplexity=1.0, w_delta_ppl_low=0.5,
                                                     w_delta_ppl_high=1.5, acc_verdict="inconclusive"))
    assert "Wasserstein − random (one seed): Δ perplexity +1.00 [+0.50, +1.50]: holds;" in one
    assert ("McNemar p 0.0012 (inconclusive: the interval [-30, -10] includes both 0 and the declared minimum "
            "effect (2) points)") in one


def test_study_selections_rebuild_every_row(tiny_llama, windows, scores):
    table = _study(tiny_llama, windows, scores, seeds=(0, 1))
    chosen = wnb.study_selections(table, scores)
    assert list(chosen) == [("dense", None), ("wasserstein", None), ("mirror", None), ("random", 0), ("random", 1),
                            ("matched", 0)]
    for row in table.itertuples():
        neurons = chosen[(row.selection, None if pd.isna(row.seed) else row.seed)]
        with wnb.sign_ablated(tiny_llama, neurons, row.side):
            assert wnb.perplexity(tiny_llama, windows[1], progress=False) == pytest.approx(row.perplexity, rel=1e-6)
    long = wnb.selection_table(chosen, scores)
    assert len(long) == table["n_neurons"].sum()
    w = long[long.selection == "wasserstein"]
    assert (w["wd_rank"] <= 3).all() and set(w["layer"]) == set(scores)
    assert long[long.selection == "mirror"][["layer", "neuron"]].values.tolist() == w[["layer", "neuron"]].values.tolist()
    m = long[long.selection == "matched"]
    assert (m["wd_rank"] > round(0.10 * 64)).all()  # outside the top 10%
    one = wnb.selection_table(chosen[("wasserstein", None)])
    assert list(one.columns) == ["selection", "seed", "layer", "neuron"] and len(one) == len(w)
    with pytest.raises(wnb.WnbError, match="scores"):
        wnb.study_selections(table, dict(list(scores.items())[:2]))  # not the scores the study used


def test_matched_control_that_cannot_reach_the_target(tiny_llama, windows, scores):
    opts = dict(side="negative", batch_size=8, progress=False, nll_fn=sa.ablated_nll)
    chosen, report = sign_controls.match_perplexity(tiny_llama, windows[1], scores, target=1e9, seed=0, exclude=0.1,
                               tolerance=0.02, opts=opts)
    assert not report["within_tolerance"] and report["evaluations"] == 1
    assert "all" in report["note"] and "candidates" in report["note"]
    assert sum(i.numel() for i in chosen.values()) == report["candidates"]


def test_study_runs_on_every_family(tiny, tiny_windows):
    table = wnb.sign_ablation_study(tiny, tiny_windows[:3], tiny_windows[3:], fraction=0.05, seeds=(0,),
                                    progress=False)
    assert list(table["selection"]) == ["dense", "wasserstein", "mirror", "random", "matched"]
    assert table["perplexity"].notna().all()
    assert table.iloc[1]["n_neurons"] == len(wnb.first_ffn_layers(tiny)) * round(
        0.05 * wnb.layer_weight(tiny, wnb.first_ffn_layers(tiny)[0]).shape[0])


def test_study_with_minimal_pairs_and_computed_scores():
    from helpers import tiny_word_llama

    lm = tiny_word_llama()
    pairs = wnb.minimal_pairs(n=3, phenomena=["simple", "vp_coordination"])
    ids = lm.tokenizer(" ".join(p["good"] for p in wnb.minimal_pairs(n=8)), add_special_tokens=False).input_ids
    windows = torch.tensor(ids[:16 * 12]).view(12, 16)
    table = wnb.sign_ablation_study(lm, windows[:6], windows[6:], fraction=0.05, seeds=(0,), pairs=pairs,
                                    controls=("random",), progress=False)
    assert list(table["selection"]) == ["dense", "wasserstein", "random"]
    for col in ("accuracy", "accuracy_simple", "accuracy_vp_coordination"):
        assert table[col].between(0, 1).all()
    dense_acc = wnb.minimal_pair_accuracy(lm, pairs, progress=False)
    assert table.iloc[0]["accuracy_simple"] == dense_acc.set_index("phenomenon").loc["simple", "accuracy"]
    # intervals and tests against scipy on the right/wrong flags of the same pairs
    scores = wnb.wasserstein_scores(lm, windows[:6], progress=False)
    chosen = wnb.study_selections(table, scores)
    right = {}
    for key, neurons in chosen.items():
        with wnb.sign_ablated(lm, neurons):
            right[key] = wnb.minimal_pair_scores(lm, pairs, progress=False)["correct"].to_numpy()
    phenomena = np.array([p["phenomenon"] for p in pairs])
    for row, key in zip(table.itertuples(), chosen):
        ci = stats.binomtest(int(right[key].sum()), right[key].size).proportion_ci(method="wilson")
        assert (row.acc_low, row.acc_high) == pytest.approx((ci.low, ci.high), abs=1e-9)
        part = right[key][phenomena == "simple"]
        ci = stats.binomtest(int(part.sum()), part.size).proportion_ci(method="wilson")
        assert (row.acc_low_simple, row.acc_high_simple) == pytest.approx((ci.low, ci.high), abs=1e-9)
    dense, w, rand = right[("dense", None)], right[("wasserstein", None)], right[("random", 0)]
    for row, a, b in ((table.iloc[1], dense, w), (table.iloc[2], dense, rand)):
        lost, gained = int((a & ~b).sum()), int((~a & b).sum())  # 6 pairs: few discordant, the exact test
        want = 1.0 if lost + gained == 0 else stats.binomtest(lost, lost + gained, 0.5).pvalue
        assert row["mcnemar_p"] == pytest.approx(want)
        assert row["delta_accuracy"] == pytest.approx(b.mean() - a.mean())
        paired = wnb.core.inference.accuracy_difference(a, b)  # on flags scored here, outside the study
        assert (row["delta_acc_low"], row["delta_acc_high"]) == pytest.approx((paired.low, paired.high))
        assert row["delta_acc_low"] < row["delta_accuracy"] < row["delta_acc_high"]  # never a point
    lost, gained = int((rand & ~w).sum()), int((~rand & w).sum())
    want = 1.0 if lost + gained == 0 else stats.binomtest(lost, lost + gained, 0.5).pvalue
    assert table.iloc[2]["w_mcnemar_p"] == pytest.approx(want)
    assert pd.isna(table.iloc[0]["mcnemar_p"]) and pd.isna(table.iloc[1]["w_mcnemar_p"])
    assert table.iloc[2]["w_acc_verdict"] in wnb.core.inference.VERDICTS
    # accuracy_<phenomenon> names the phenomena (the plots read them): nothing else starts so
    phenomena_columns = sorted(c for c in table.columns if c.startswith("accuracy_"))
    assert phenomena_columns == ["accuracy_simple", "accuracy_vp_coordination"]


def test_depth_profile(tiny_llama, windows, scores):
    depth = wnb.sign_ablation_depth(tiny_llama, None, windows[1], fraction=0.05, scores=scores, progress=False)
    layers = list(scores)
    assert list(depth["mode"]) == ["dense"] + ["layer"] * len(layers) + ["cumulative"] * len(layers)
    assert depth.iloc[0]["delta_perplexity"] == 0
    single, cumulative = depth[depth["mode"] == "layer"], depth[depth["mode"] == "cumulative"]
    assert list(single["layer"]) == layers and list(single["block"]) == [0, 1, 2]
    assert list(cumulative["n_neurons"]) == [3, 6, 9]
    assert single.iloc[0]["perplexity"] == cumulative.iloc[0]["perplexity"]
    study = _study(tiny_llama, windows, scores, controls=())
    assert cumulative.iloc[-1]["perplexity"] == pytest.approx(study.iloc[1]["perplexity"], rel=1e-12)
    assert (depth["delta_perplexity"] == depth["perplexity"] - depth.iloc[0]["perplexity"]).all()
    first = depth[depth["mode"] == "layer"].iloc[0]  # its interval: a plain loop over the same windows
    dense_nll = _window_nll(tiny_llama, windows[1])
    ablated = _window_nll(tiny_llama, windows[1], {layers[0]: wnb.select_wasserstein(scores, 0.05)[layers[0]]})
    loop = _loop(lambda i: math.exp(ablated[i].mean()) - math.exp(dense_nll[i].mean()), windows[1].shape[0])
    assert (first["delta_ppl_low"], first["delta_ppl_high"]) == pytest.approx(tuple(loop), rel=1e-5, abs=1e-9)
    assert depth.iloc[0]["delta_ppl_low"] == depth.iloc[0]["delta_ppl_high"] == 0


@pytest.mark.parametrize("kw, match", [
    (dict(side="neg"), "unknown side"), (dict(fraction=0), r"fraction must be in \(0, 1\)"),
    (dict(fraction=1), "fraction"), (dict(fraction=1.5), "fraction"), (dict(fraction=-0.1), "fraction"),
    (dict(fraction="0.01"), "fraction"), (dict(controls=("random", "shuffled")), "unknown controls"),
    (dict(layers=["model.layers.9.mlp.gate_proj"]), "not a linear layer"), (dict(seeds=()), "seeds"),
    (dict(pairs=[]), "no minimal pairs"), (dict(pairs="no-such-pairs"), "unknown minimal pairs"),
    (dict(exclude=0.005), "exclude"), (dict(tolerance=0), "tolerance"), (dict(minimum_nll=0), "minimum_nll"),
    (dict(minimum_accuracy=float("nan")), "minimum_accuracy"),
    (dict(side="both", controls=("random", "mirror")), "no mirror"),
])
def test_study_refuses_bad_input_before_any_work(tiny_llama, windows, monkeypatch, kw, match):
    def no_work(*a, **k):
        raise AssertionError("work started before the input was checked")

    from wnb.experiments import surprisal
    monkeypatch.setattr(sa, "study_statistics", no_work)
    monkeypatch.setattr(surprisal, "token_nll", no_work)
    with pytest.raises(wnb.WnbError, match=match):
        wnb.sign_ablation_study(tiny_llama, windows[0], windows[1], progress=False, **kw)


def test_study_refuses_an_empty_pair_file_and_bad_scores(tiny_llama, windows, scores, tmp_path):
    empty = tmp_path / "pairs.jsonl"
    empty.write_text("")
    with pytest.raises(wnb.WnbError, match="no minimal pairs"):
        wnb.sign_ablation_study(tiny_llama, windows[0], windows[1], pairs=str(empty), progress=False)
    name = next(iter(scores))
    with pytest.raises(wnb.WnbError, match="64 neurons"):
        _study(tiny_llama, windows, {name: scores[name][:10]})
    with pytest.raises(wnb.WnbError, match="calib"):
        wnb.sign_ablation_study(tiny_llama, None, windows[1], progress=False)
    with pytest.raises(wnb.WnbError, match="unknown side"):
        wnb.sign_ablation_depth(tiny_llama, None, windows[1], scores=scores, side="up", progress=False)




def test_clamping_both_sides_has_no_mirror_row(tiny_llama, windows, scores):
    """``side="both"`` zeroes every output: the default controls leave the mirror out; asked for, it is refused."""
    table = _study(tiny_llama, windows, scores, seeds=(0,), side="both")
    assert list(table["selection"]) == ["dense", "wasserstein", "random", "matched"]
    with pytest.raises(wnb.WnbError, match="no mirror"):
        _study(tiny_llama, windows, scores, seeds=(0,), side="both", controls=("mirror",))
    assert clamp.mirror_side("negative") == "positive" and clamp.mirror_side("positive") == "negative"


def test_study_controls_leave_the_mirror_out_only_for_both_sides_by_default():
    from wnb.scoring.selection import DEFAULT_CONTROLS

    assert sa.study_controls(DEFAULT_CONTROLS, "negative") == DEFAULT_CONTROLS
    assert sa.study_controls(list(DEFAULT_CONTROLS), "both") == tuple(c for c in DEFAULT_CONTROLS if c != "mirror")
    assert sa.study_controls("random", "both") == ("random",)
    with pytest.raises(wnb.WnbError, match="no mirror"):
        sa.study_controls(("random", "mirror"), "both")
