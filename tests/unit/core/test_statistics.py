"""wnb.core.inference against independent references: plain bootstrap loops, scipy's binomial and chi-square
tests, the Wilson interval solved numerically, the stdlib's statistics, and verdicts on planted effects."""
from __future__ import annotations

import math
import statistics as stdlib

import numpy as np
import pytest
import torch
from scipy import optimize, stats

import wnb
import wnb.core
from wnb.core import inference as st


def _loop_interval(stat, n, n_boot, seed, level=0.95):
    """A plain bootstrap loop: one resample of n window indices at a time, the statistic, percentiles."""
    rng = np.random.default_rng(seed)
    values = [stat(rng.integers(0, n, n)) for _ in range(n_boot)]
    tail = 100 * (1 - level) / 2
    return np.percentile(values, [tail, 100 - tail])


def _windows(n, seed=0, shift=0.1, noise=0.02):
    """Per-window NLLs of two conditions: windows differ a lot, the paired shift is small and steady."""
    rng = np.random.default_rng(seed)
    a = rng.normal(3.0, 0.4, n)
    return a, a + shift + rng.normal(0, noise, n)


# ---------------------------------------------------------------- paired differences

def test_paired_difference_equals_a_plain_loop():
    a, b = _windows(37)
    got = st.paired_difference(a, b, n_boot=500, level=0.9, seed=4)
    low, high = _loop_interval(lambda i: np.mean(b[i] - a[i]), 37, 500, seed=4, level=0.9)
    assert got.delta == pytest.approx(float(np.mean(b) - np.mean(a)), rel=1e-12)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)
    assert got.n == 37 and got.level == 0.9 and got.low < got.delta < got.high


def test_pairing_narrows_the_interval():
    """Resampling the same windows for both cancels the windows' own spread; resampling them apart would not."""
    a, b = _windows(50)
    paired = st.paired_difference(a, b, seed=0)
    rng = np.random.default_rng(1)
    apart = [b[rng.integers(0, 50, 50)].mean() - a[rng.integers(0, 50, 50)].mean() for _ in range(2000)]
    wide = np.percentile(apart, 97.5) - np.percentile(apart, 2.5)
    assert paired.high - paired.low < wide / 5
    assert paired.low > 0.09 and paired.high < 0.11


def test_perplexity_and_nll_differences_against_plain_loops(monkeypatch):
    rng = np.random.default_rng(2)
    tokens_a = rng.gamma(3.0, 1.0, (30, 11))
    tokens_b = tokens_a + rng.normal(0.05, 0.2, (30, 11))
    a, b = tokens_a.mean(1), tokens_b.mean(1)
    monkeypatch.setattr(st, "_CELLS", 64)  # resamples drawn in many small chunks: the same stream
    ppl = st.perplexity_difference(torch.from_numpy(tokens_a), torch.from_numpy(tokens_b), n_boot=300, seed=7)
    low, high = _loop_interval(lambda i: math.exp(b[i].mean()) - math.exp(a[i].mean()), 30, 300, seed=7)
    assert ppl.delta == pytest.approx(math.exp(tokens_b.mean()) - math.exp(tokens_a.mean()), rel=1e-12)
    assert (ppl.low, ppl.high) == pytest.approx((low, high), rel=1e-12)
    nll = st.nll_difference(tokens_a, tokens_b, n_boot=300, seed=7)
    low, high = _loop_interval(lambda i: np.mean(b[i] - a[i]), 30, 300, seed=7)
    assert nll.delta == pytest.approx(float((tokens_b - tokens_a).mean()), rel=1e-12)  # per token
    assert (nll.low, nll.high) == pytest.approx((low, high), rel=1e-12)
    # the same windows for dense and ablated: the dense perplexity interval of wnb.evaluate sits on them
    one = st.paired_difference([2.0], [2.5])
    assert (one.delta, one.low, one.high, one.n) == (0.5, 0.5, 0.5, 1)


@pytest.mark.parametrize("a, b, match", [
    ([1.0, 2.0], [1.0], "same windows"), ([], [], "non-empty"), ([1.0, np.nan], [1.0, 2.0], "NaN"),
    ([[1.0]], [[1.0]], r"\[n\]"), ("ab", "cd", "numbers"),
])
def test_paired_difference_refuses_bad_input(a, b, match):
    with pytest.raises(wnb.WnbError, match=match):
        st.paired_difference(a, b)


@pytest.mark.parametrize("kw, match", [(dict(level=1.0), "level"), (dict(level=0), "level"),
                                       (dict(n_boot=0), "n_boot"), (dict(n_boot=2.5), "n_boot")])
def test_bad_level_and_resamples(kw, match):
    with pytest.raises(wnb.WnbError, match=match):
        st.paired_difference([1.0, 2.0], [2.0, 3.0], **kw)


# ---------------------------------------------------------------- McNemar

def _flags_with(b, c, same_right=7, same_wrong=5, seed=0):
    """Right/wrong flags of two classifiers with b items right under a only and c right under b only."""
    a = [True] * b + [False] * c + [True] * same_right + [False] * same_wrong
    bb = [False] * b + [True] * c + [True] * same_right + [False] * same_wrong
    order = np.random.default_rng(seed).permutation(len(a))
    return np.array(a)[order], np.array(bb)[order]


@pytest.mark.parametrize("b, c", [(0, 0), (0, 1), (3, 0), (5, 9), (12, 12), (1, 23), (20, 4)])
def test_mcnemar_exact_for_few_discordant_pairs(b, c):
    a, bb = _flags_with(b, c)
    got = st.mcnemar(a, bb)
    assert (got.b, got.c, got.n, got.method) == (b, c, b + c + 12, "exact")
    want = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
    assert got.p == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("b, c", [(30, 10), (10, 30), (14, 11), (60, 40), (200, 150)])
def test_mcnemar_chi_square_with_continuity_correction(b, c):
    a, bb = _flags_with(b, c, seed=3)
    got = st.mcnemar(torch.tensor(a), bb.astype(int))
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    assert got.method == "chi2" and got.statistic == pytest.approx(statistic)
    assert got.p == pytest.approx(stats.chi2.sf(statistic, df=1), rel=1e-12)
    assert got.p == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, abs=0.01)  # the approximation is close
    forced = st.mcnemar(a, bb, exact=True)
    assert forced.method == "exact" and forced.p == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def test_mcnemar_equal_discordant_counts_and_bad_input():
    a, bb = _flags_with(30, 30)
    assert st.mcnemar(a, bb).p == 1.0
    with pytest.raises(wnb.WnbError, match="same items"):
        st.mcnemar([True, False], [True])
    with pytest.raises(wnb.WnbError, match="0/1"):
        st.mcnemar([0, 2], [1, 1])


# ---------------------------------------------------------------- accuracy, seeds

def test_accuracy_difference_covers_and_does_not_collapse():
    """Bonett–Price interval of a paired accuracy difference: about 95% coverage on simulated pairs, close to
    a plain bootstrap loop when there are many discordant items, and not a point when none changes."""
    rng = np.random.default_rng(11)
    probs = [0.80, 0.06, 0.02, 0.12]  # both right, only a right, only b right, both wrong: true Δ = −0.04
    hits = 0
    for _ in range(2000):
        cell = rng.choice(4, size=60, p=probs)
        got = st.accuracy_difference(np.isin(cell, (0, 1)), np.isin(cell, (0, 2)))
        hits += got.low <= -0.04 <= got.high
    assert 0.93 <= hits / 2000 <= 0.975
    cell = rng.choice(4, size=3000, p=[0.5, 0.2, 0.15, 0.15])
    a, b = np.isin(cell, (0, 1)), np.isin(cell, (0, 2))
    got = st.accuracy_difference(a, b)
    assert got.delta == pytest.approx(b.mean() - a.mean()) and got.n == 3000
    loop = _loop_interval(lambda i: b[i].mean() - a[i].mean(), 3000, 1000, seed=0)
    assert (got.low, got.high) == pytest.approx(tuple(loop), abs=0.004)
    same = st.accuracy_difference([True] * 25 + [False] * 5, [True] * 25 + [False] * 5)
    assert same.delta == 0 and same.low < -0.05 and same.high > 0.05  # 30 unchanged items prove no "no effect"
    with pytest.raises(wnb.WnbError, match="same items"):
        st.accuracy_difference([True], [True, False])



def _wilson_by_root(k, n, level=0.95):
    """The Wilson interval as the two roots of (k/n − p)² = z² p (1 − p) / n."""
    z = stats.norm.ppf(1 - (1 - level) / 2)
    f = lambda p: (k / n - p) ** 2 - z * z * p * (1 - p) / n
    low = 0.0 if k == 0 else optimize.brentq(f, 0.0, min(k / n, 1 - 1e-12))  # p = 0 is a root when k = 0
    high = 1.0 if k == n else optimize.brentq(f, max(k / n, 1e-12), 1.0)
    return low, high


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (57, 80), (999, 1000)])
def test_wilson_interval_against_its_defining_equation(k, n):
    got = st.accuracy_interval([True] * k + [False] * (n - k))
    assert got.accuracy == k / n and got.n == n and got.method == "wilson"
    assert (got.low, got.high) == pytest.approx(_wilson_by_root(k, n), abs=1e-9)


def test_accuracy_per_group_and_bootstrap():
    rng = np.random.default_rng(5)
    correct = rng.random(90) < 0.7
    groups = ["simple"] * 40 + ["across_pp"] * 50
    by = st.accuracy_interval(correct, groups=groups, level=0.9)
    assert list(by) == ["simple", "across_pp"]
    for g, part in (("simple", correct[:40]), ("across_pp", correct[40:])):
        assert by[g].n == part.size and by[g].accuracy == part.mean()
        assert (by[g].low, by[g].high) == pytest.approx(_wilson_by_root(int(part.sum()), part.size, 0.9), abs=1e-9)
    boot = st.accuracy_interval(correct, method="bootstrap", n_boot=400, seed=2)
    assert (boot.low, boot.high) == pytest.approx(
        tuple(_loop_interval(lambda i: correct[i].mean(), 90, 400, seed=2)), rel=1e-12)
    with pytest.raises(wnb.WnbError, match="one label per item"):
        st.accuracy_interval(correct, groups=groups[:3])
    with pytest.raises(wnb.WnbError, match="method"):
        st.accuracy_interval(correct, method="wald")


def test_across_seeds_against_the_stdlib():
    values = [10.2, 11.5, 9.8, 10.9]
    got = st.across_seeds(values)
    assert got.mean == pytest.approx(stdlib.mean(values)) and got.sd == pytest.approx(stdlib.stdev(values))
    assert (got.min, got.max, got.n) == (9.8, 11.5, 4)
    one = st.across_seeds([3.0])
    assert one.mean == 3.0 and math.isnan(one.sd) and one.n == 1
    with pytest.raises(wnb.WnbError, match="non-empty"):
        st.across_seeds([])


# ---------------------------------------------------------------- verdicts on planted effects

def _planted(effect, noise, n, seed):
    """Per-window values of a and b = a + effect + noise; the windows' own spread is large. The noise is
    centred, so the sample's mean difference is exactly the planted effect."""
    rng = np.random.default_rng(seed)
    a = rng.normal(3.0, 1.0, n)
    e = rng.normal(0.0, noise, n)
    return a, a + effect + (e - e.mean())


@pytest.mark.parametrize("seed", range(5))
def test_verdicts_on_planted_paired_effects(seed):
    def decide(effect, noise, n, direction="greater", paper=0.3):
        d = st.paired_difference(*_planted(effect, noise, n, seed), seed=seed)
        return st.verdict(d.low, d.high, direction, effect=paper)

    assert decide(0.5, 0.1, 40) == "holds"                         # a large effect, small noise
    assert decide(-0.5, 0.1, 40) == "reversed"                     # the effect runs the other way
    assert decide(0.0, 0.5, 4000) == "not observed"                # none, many samples, a large paper effect
    assert decide(0.0, 3.0, 5) == "inconclusive"                   # none, few noisy samples
    assert decide(-0.5, 0.1, 40, direction="less") == "holds"      # a claimed decrease
    assert decide(0.5, 0.1, 40, direction="less") == "reversed"
    assert decide(0.0, 0.5, 4000, direction="less") == "not observed"


def test_no_effect_is_rarely_called_an_effect():
    """With no true effect (uncentred noise) the 95% paired interval excludes 0 in about 5% of samples."""
    calls = []
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        a = rng.normal(3.0, 1.0, 60)
        d = st.paired_difference(a, a + rng.normal(0.0, 0.5, 60), n_boot=1000, seed=seed)
        calls.append(st.verdict(d.low, d.high, "greater", effect=0.3))
    wrong = sum(c in ("holds", "reversed") for c in calls) / len(calls)
    assert 0.01 <= wrong <= 0.12
    assert calls.count("not observed") > 150


def test_verdict_rule_at_its_edges():
    assert st.verdict(0.0, 1.0, "greater", effect=0.5) == "inconclusive"  # 0 itself is not "above 0"
    assert st.verdict(1e-9, 1.0, "greater") == "holds"
    assert st.verdict(-0.1, 0.2, "greater", minimum=0.25) == "not observed"  # a declared minimum instead
    assert st.verdict(-0.1, 0.2, "greater", effect=0.1, minimum=0.25) == "inconclusive"  # the paper's wins
    assert st.verdict(-0.1, 0.2, "greater") == "inconclusive"  # no yardstick: cannot say "not observed"
    assert st.verdict(-0.2, 0.1, "less", effect=-0.25) == "not observed"
    for bad, match in (((0.0, 1.0, "up"), "direction"), ((1.0, 0.0, "greater"), "low <= high"),
                       ((np.nan, 1.0, "greater"), "finite")):
        with pytest.raises(wnb.WnbError, match=match):
            st.verdict(*bad)
    with pytest.raises(wnb.WnbError, match="non-zero"):
        st.verdict(-1.0, 1.0, "greater", effect=0)


def test_wording():
    assert st.wording("holds", 0.1, 0.2) == "holds"
    assert st.wording("reversed", -0.2, -0.1) == "reversed"
    assert st.wording("not observed", -0.01, 0.02, effect=0.3) == "not observed at this sample size"
    assert st.wording("inconclusive", -0.5, 0.9, effect=0.3) == \
        "inconclusive: the interval [-0.5, 0.9] includes both 0 and the paper's effect (0.3)"
    assert "declared minimum effect (0.25)" in st.wording("inconclusive", -0.5, 0.9, minimum=0.25)
    assert st.wording("inconclusive", -0.5, 0.9).endswith("includes 0 (no effect size to compare with)")
    with pytest.raises(wnb.WnbError, match="unknown verdict"):
        st.wording("maybe", 0, 1)
