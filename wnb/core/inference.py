"""Statistics that can decide: paired differences with bootstrap intervals, McNemar's test, accuracy
intervals, spread over seeds, and the rule that words a result by what its interval says.

DESIGN.md, "Conventions": every number with its uncertainty; a comparison (ablated vs dense, WD vs a
control) as a *paired* difference with its interval; a claim worded by what its interval says. The rule
(:func:`verdict`) is fixed here, before any data is seen:

- ``"holds"``: the interval lies on the claimed side of 0;
- ``"reversed"``: it lies on the other side;
- ``"not observed"``: it includes 0 and excludes an effect of the paper's size (``effect``), or of a
  ``minimum`` declared in advance where the paper gives no size;
- ``"inconclusive"``: it includes 0 and that effect alike (or no effect size was given): too wide to tell.

References:

- Percentile bootstrap: Efron & Tibshirani, *An Introduction to the Bootstrap* (1993), ch. 13; paired
  (resampling the same windows or items for both conditions), ch. 6–7 on the bootstrap of a difference
  from matched data. Windows are the resampled unit; the perplexity intervals of
  :mod:`wnb.tracing.nll` come from :func:`perplexity_of` here.
- McNemar, "Note on the sampling error of the difference between correlated proportions or percentages",
  Psychometrika 12 (1947); Edwards' continuity correction (1948); the exact conditional (binomial) test on
  the discordant pairs, and the rule of thumb b + c < 25 for it: Fagerland, Lydersen & Laake, "The McNemar
  test for binary matched-pairs data", BMC Med. Res. Methodol. 13:91 (2013).
- Wilson score interval: Wilson, JASA 22 (1927); recommended over the Wald interval by Brown, Cai &
  DasGupta, "Interval estimation for a binomial proportion", Statist. Sci. 16 (2001).
- Paired difference of two accuracies: Bonett & Price, "Adjusted Wald confidence interval for a difference
  of binomial proportions based on paired data", J. Educ. Behav. Stat. 37 (2012). A bootstrap of right/wrong
  flags collapses to the point 0 when no item changes, which no sample size justifies; this interval does not.

Pure numpy/scipy: nothing here imports the rest of wnb but :class:`wnb.errors.WnbError`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _st

from wnb.errors import WnbError

LEVEL = 0.95
N_BOOT = 2000
EXACT_BELOW = 25  # McNemar: exact binomial test when the discordant pairs b + c are fewer than this
DIRECTIONS = ("greater", "less")
VERDICTS = ("holds", "reversed", "not observed", "inconclusive")
_CELLS = 1 << 22  # resampled values held at once (n_boot rows are drawn in chunks of this size)


@dataclass(frozen=True)
class Difference:
    """A paired difference ``b − a`` and its percentile bootstrap interval over ``n`` pairs."""
    delta: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class McNemar:
    """McNemar's test of two classifiers on the same ``n`` items: ``b`` items right under a and wrong
    under b, ``c`` the reverse; ``statistic`` is the corrected chi-square (NaN when ``method="exact"``)."""
    b: int
    c: int
    n: int
    statistic: float
    p: float
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Accuracy:
    """Share right of ``n`` items and its interval (``method``: ``"wilson"`` or ``"bootstrap"``)."""
    accuracy: float
    low: float
    high: float
    n: int
    method: str = "wilson"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Spread:
    """A quantity over seeds: ``mean``, ``sd`` (sample standard deviation, NaN for one seed), ``min``,
    ``max`` and the number of seeds ``n``."""
    mean: float
    sd: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- checks

def _values(x, name: str, per_window: bool = False) -> np.ndarray:
    """1-D float64 finite values; with ``per_window`` a 2-D ``[windows, tokens]`` array is averaged per row."""
    try:
        arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    except (TypeError, ValueError):
        raise WnbError(f"{name} must be numbers (got {type(x).__name__})") from None
    if per_window and arr.ndim == 2:
        arr = arr.mean(1)
    if arr.ndim != 1 or arr.size == 0:
        allowed = "[n_windows] or [n_windows, tokens]" if per_window else "one value per item, [n]"
        raise WnbError(f"{name} must be non-empty, {allowed} (got shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise WnbError(f"{name} holds NaN or infinite values")
    return arr


def _pair(a, b, per_window: bool = False) -> tuple[np.ndarray, np.ndarray]:
    a, b = _values(a, "a", per_window), _values(b, "b", per_window)
    if a.shape != b.shape:
        raise WnbError(f"paired values must be of the same windows or items: a has {a.size}, b has {b.size}")
    return a, b


def _check_level(level: float, n_boot: int | None = None) -> None:
    if not isinstance(level, (int, float)) or not 0 < level < 1:
        raise WnbError(f"level must be in (0, 1), e.g. 0.95 (got {level!r})")
    if n_boot is not None and (isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1):
        raise WnbError(f"n_boot must be a positive whole number of resamples (got {n_boot!r})")


def bootstrap_interval(stat, columns, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile interval of ``stat(*resampled)`` over ``n_boot`` resamples: every resample draws n
    indices with replacement (``numpy.random.default_rng(seed).integers(0, n, n)``, one resample after
    the other) and takes those rows of every column, so paired columns stay paired."""
    _check_level(level, n_boot)
    n = columns[0].shape[0]
    rng = np.random.default_rng(int(seed))
    per_chunk = max(1, _CELLS // n)
    out = np.empty(int(n_boot), dtype=np.float64)
    for start in range(0, int(n_boot), per_chunk):
        picks = rng.integers(0, n, size=(min(per_chunk, int(n_boot) - start), n))
        out[start:start + picks.shape[0]] = stat(*(c[picks] for c in columns))
    tail = (1 - level) / 2
    low, high = np.quantile(out, [tail, 1 - tail])
    return float(low), float(high)


# ---------------------------------------------------------------- paired differences

def bootstrap(stat, *columns, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of any statistic of paired rows: ``stat(*resampled)`` gets each column
    resampled as ``[n_boot, n, ...]`` (the same row indices for every column, so paired columns stay
    paired) and returns ``[n_boot]`` values. ``columns``: arrays with the same first dimension ``n``
    (windows, neurons, items)."""
    arrays = [np.asarray(c, dtype=np.float64) for c in columns]
    if not arrays or arrays[0].ndim == 0 or arrays[0].shape[0] == 0:
        raise WnbError("bootstrap needs at least one non-empty column of rows")
    if any(a.shape[0] != arrays[0].shape[0] for a in arrays):
        raise WnbError(f"bootstrap columns must have the same rows (got {[a.shape[0] for a in arrays]})")
    return bootstrap_interval(stat, arrays, n_boot, level, seed)


def paired_difference(a, b, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Difference:
    """Mean paired difference ``mean(b − a)`` over windows or items and its percentile bootstrap
    interval, resampling the SAME windows for both (Efron & Tibshirani 1993). ``a``, ``b``: one value
    per window or item, ``[n]``, in the same order. With one pair the interval is a point."""
    a, b = _pair(a, b)
    d = b - a
    low, high = bootstrap_interval(lambda x: x.mean(1), [d], n_boot, level, seed)
    return Difference(float(d.mean()), low, high, int(d.size), float(level))


def nll_difference(nll_a, nll_b, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Difference:
    """Δ NLL per token, ``b − a`` (nats): :func:`paired_difference` of the per-window mean NLLs (``[n_windows]``
    or per token ``[n_windows, tokens]``, averaged per window first; windows of equal length, so the mean
    over windows is the mean over tokens)."""
    a, b = _pair(nll_a, nll_b, per_window=True)
    return paired_difference(a, b, n_boot, level, seed)


def perplexity_difference(nll_a, nll_b, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Difference:
    """Δ perplexity ``exp(mean NLL_b) − exp(mean NLL_a)`` from per-window NLLs (as :func:`nll_difference`),
    with its paired percentile bootstrap interval: each resample takes the same windows for a and b."""
    a, b = _pair(nll_a, nll_b, per_window=True)
    low, high = bootstrap_interval(lambda x, y: np.exp(y.mean(1)) - np.exp(x.mean(1)), [a, b], n_boot, level, seed)
    return Difference(math.exp(b.mean()) - math.exp(a.mean()), low, high, int(a.size), float(level))


def perplexity_of(nll, n_boot: int = 1000, level: float = LEVEL, seed: int = 0) -> dict:
    """``{"perplexity", "ppl_low", "ppl_high"}`` from NLLs per window ``[n_windows]`` or per token
    ``[n_windows, tokens]`` (averaged per window first): exp of the mean and the percentile bootstrap
    interval over windows (:func:`bootstrap_interval`). With one window the interval is a point."""
    x = _values(nll, "nll", per_window=True)
    low, high = bootstrap_interval(lambda w: np.exp(w.mean(1)), [x], n_boot, level, seed)
    return {"perplexity": math.exp(x.mean()), "ppl_low": low, "ppl_high": high}


# ---------------------------------------------------------------- classifiers on the same items

def _flags(x, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if arr.ndim != 1 or arr.size == 0:
        raise WnbError(f"{name} must be one right/wrong flag per item, [n] (got shape {arr.shape})")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise WnbError(f"{name} must hold booleans or 0/1 (right/wrong per item)")
        arr = arr.astype(bool)
    return arr


def mcnemar(correct_a, correct_b, exact: bool | None = None) -> McNemar:
    """McNemar's test that classifiers a and b (e.g. dense and ablated) are right equally often on the same items.

    Only discordant items count: ``b`` right under a only, ``c`` right under b only. ``exact=None`` (default)
    uses the exact two-sided binomial test of ``b`` out of ``b + c`` at 1/2 when ``b + c < 25``
    (:data:`EXACT_BELOW`; p = min(1, 2·P(X ≤ min(b, c)))), and otherwise the chi-square test with Edwards'
    continuity correction, ``max(0, |b − c| − 1)² / (b + c)`` on 1 degree of freedom; ``True`` / ``False``
    force one. No discordant items: p = 1.
    """
    a, bb = _flags(correct_a, "correct_a"), _flags(correct_b, "correct_b")
    if a.shape != bb.shape:
        raise WnbError(f"both classifiers must be scored on the same items: {a.size} and {bb.size} flags")
    b, c = int((a & ~bb).sum()), int((~a & bb).sum())
    use_exact = (b + c < EXACT_BELOW) if exact is None else bool(exact)
    if b + c == 0:
        return McNemar(b, c, int(a.size), float("nan") if use_exact else 0.0, 1.0, "exact" if use_exact else "chi2")
    if use_exact:
        p = min(1.0, 2 * float(_st.binom.cdf(min(b, c), b + c, 0.5)))
        return McNemar(b, c, int(a.size), float("nan"), p, "exact")
    statistic = max(0, abs(b - c) - 1) ** 2 / (b + c)
    return McNemar(b, c, int(a.size), float(statistic), float(_st.chi2.sf(statistic, 1)), "chi2")


def accuracy_difference(correct_a, correct_b, level: float = LEVEL) -> Difference:
    """Paired difference of two accuracies on the same items, ``acc_b − acc_a``, with the Bonett–Price
    adjusted Wald interval: with ``n12`` items right under a only and ``n21`` right under b only, ``p12 =
    (n12 + 1)/(n + 2)``, ``p21 = (n21 + 1)/(n + 2)``, interval ``p21 − p12 ± z·√((p12 + p21 − (p21 −
    p12)²)/(n + 2))`` (clipped to [−1, 1]); ``delta`` is the observed ``(n21 − n12)/n``."""
    a, b = _flags(correct_a, "correct_a"), _flags(correct_b, "correct_b")
    if a.shape != b.shape:
        raise WnbError(f"both classifiers must be scored on the same items: {a.size} and {b.size} flags")
    _check_level(level)
    n, n12, n21 = a.size, int((a & ~b).sum()), int((~a & b).sum())
    p12, p21 = (n12 + 1) / (n + 2), (n21 + 1) / (n + 2)
    z = float(_st.norm.ppf(1 - (1 - level) / 2))
    half = z * math.sqrt((p12 + p21 - (p21 - p12) ** 2) / (n + 2))
    return Difference((n21 - n12) / n, max(-1.0, p21 - p12 - half), min(1.0, p21 - p12 + half), n, float(level))


def _wilson(k: int, n: int, level: float) -> tuple[float, float]:
    z = float(_st.norm.ppf(1 - (1 - level) / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(correct, groups=None, level: float = LEVEL, method: str = "wilson", n_boot: int = N_BOOT,
                      seed: int = 0):
    """Accuracy (share of ``correct`` items) with its interval; with ``groups`` (one label per item, e.g.
    the phenomenon) a dict ``{group: Accuracy}`` in first-seen order instead.

    ``method="wilson"`` (default): the Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001),
    closed form and sensible at 0%, 100% and for a few items, where a bootstrap collapses to a point.
    ``"bootstrap"``: the percentile bootstrap over items (seeded).
    """
    flags = _flags(correct, "correct")
    if method not in ("wilson", "bootstrap"):
        raise WnbError(f"unknown interval method {method!r}; choose wilson or bootstrap")
    _check_level(level, n_boot)

    def one(part: np.ndarray) -> Accuracy:
        if method == "wilson":
            low, high = _wilson(int(part.sum()), part.size, level)
        else:
            low, high = bootstrap_interval(lambda x: x.mean(1), [part.astype(np.float64)], n_boot, level, seed)
        return Accuracy(float(part.mean()), low, high, int(part.size), method)

    if groups is None:
        return one(flags)
    labels = list(groups)
    if len(labels) != flags.size:
        raise WnbError(f"groups must give one label per item ({flags.size}), got {len(labels)}")
    order = list(dict.fromkeys(labels))
    labels = np.asarray(labels, dtype=object)
    return {g: one(flags[labels == g]) for g in order}


def across_seeds(values) -> Spread:
    """Mean and spread of one quantity (e.g. a random control's perplexity) over seeds: ``mean``, ``sd``
    (sample standard deviation, ``ddof=1``; NaN for one seed), ``min``, ``max``, ``n``."""
    v = _values(values, "values")
    sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return Spread(float(v.mean()), sd, float(v.min()), float(v.max()), int(v.size))


# ---------------------------------------------------------------- the verdict rule

def verdict(low: float, high: float, direction: str, effect: float | None = None,
            minimum: float | None = None) -> str:
    """What an interval ``[low, high]`` of a difference says about a claim that it is ``direction``
    (``"greater"``: above 0, ``"less"``: below 0): one of :data:`VERDICTS` (module docstring).

    ``effect``: the paper's effect size (same units, its magnitude in the claimed direction); without one,
    a ``minimum`` effect declared in advance; with neither, an interval that includes 0 is ``"inconclusive"``.
    """
    if direction not in DIRECTIONS:
        raise WnbError(f"unknown direction {direction!r}; choose greater (the difference is above 0) or less")
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise WnbError(f"the interval must be two finite numbers, low <= high (got [{low}, {high}])")
    if direction == "less":
        low, high = -high, -low
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    size = effect if effect is not None else minimum
    if size is None:
        return "inconclusive"
    if not math.isfinite(float(size)) or float(size) == 0:
        raise WnbError(f"the effect size to compare with must be a finite non-zero number (got {size!r})")
    return "not observed" if high < abs(float(size)) else "inconclusive"


def wording(result: str, low: float, high: float, effect: float | None = None, minimum: float | None = None,
            digits: int = 3) -> str:
    """A :func:`verdict` in words for a table or a notebook: ``"holds"``, ``"reversed"``, ``"not observed at
    this sample size"``, or ``"inconclusive: the interval [l, h] includes both 0 and the paper's effect (e)"``
    (``the declared minimum effect (m)`` when ``minimum`` was the yardstick; ``includes 0`` when neither)."""
    if result not in VERDICTS:
        raise WnbError(f"unknown verdict {result!r}; one of {', '.join(VERDICTS)}")
    if result in ("holds", "reversed"):
        return result
    if result == "not observed":
        return "not observed at this sample size"
    span = f"[{low:.{digits}g}, {high:.{digits}g}]"
    if effect is not None:
        return f"inconclusive: the interval {span} includes both 0 and the paper's effect ({abs(effect):.{digits}g})"
    if minimum is not None:
        return (f"inconclusive: the interval {span} includes both 0 and the declared minimum effect "
                f"({abs(minimum):.{digits}g})")
    return f"inconclusive: the interval {span} includes 0 (no effect size to compare with)"
