"""Whole-model runs compared by held-out perplexity: every pruning method at every sparsity (paper
Fig. 9), and the paper's Fig. 3 ablation (a few neurons of every layer sparsified, chosen by WD, at
random, by mean, variance or weight norm)."""
from __future__ import annotations

import time

from wnb.data.windows import check_windows
from wnb.tracing.nll import perplexity_interval


def sweep(lm, calib, held_out, methods=("magnitude", "wanda", "sparsegpt"), sparsities=(0.5, 0.7, "2:4"),
          layers=None, dense: bool = True, batch_size: int = 8, progress: bool = True, on_run=None, **prune_kw):
    """Perplexity on ``held_out`` after whole-model pruning with every method at every sparsity.

    Returns a tidy DataFrame: ``method, sparsity, perplexity, ppl_low, ppl_high, prune_seconds,
    eval_seconds`` (plus a ``dense`` row first unless ``dense=False``). The model is dense again
    afterwards. ``on_run(index, total, label)`` is called before each run (e.g. :meth:`wnb.core.jobs.Job.begin`).
    Other keywords go to :func:`wnb.pruned`; with ``bits=`` (joint quantization) the pruned rows get a
    ``bits`` column (and ``group_size`` with groups).
    """
    import pandas as pd

    from wnb.compression.sparsity import check_method, sparsity_label
    from wnb.compression.quantize import check_quant, key_parts

    for method in methods:
        check_method(method)
    quant = key_parts(*check_quant(prune_kw.get("bits"), prune_kw.get("group_size")))
    labels = [sparsity_label(s) for s in sparsities]
    held_out = check_windows(held_out, lm, min_len=2)
    rows = []
    report = _runs(on_run, int(dense) + len(methods) * len(labels))
    if dense:
        report("dense")
        start = time.perf_counter()
        ppl = perplexity_interval(lm, held_out, batch_size=batch_size, progress=progress)
        rows.append({"method": "dense", "sparsity": "0%", **ppl, "prune_seconds": 0.0,
                     "eval_seconds": time.perf_counter() - start})
    for method in methods:
        for sparsity, label in zip(sparsities, labels):
            report(f"{method} {label}")
            rows.append(_pruned_perplexity(lm, calib, held_out, batch_size, progress,
                                           {"method": method, "sparsity": label, **quant},
                                           method=method, sparsity=sparsity, layers=layers, **prune_kw))
    return pd.DataFrame(rows)


def ablation(lm, calib, held_out, criteria=("wd", "random", "mean", "variance", "weight_norm"),
             fraction: float = 0.03, sparsity=0.9, method: str = "sparsegpt", layers=None, seed: int = 0,
             dense: bool = True, batch_size: int = 8, progress: bool = True, on_run=None, **prune_kw):
    """The paper's Fig. 3: prune ``fraction`` of the neurons of every FFN layer (or ``layers``) at
    ``sparsity``, choosing them by each criterion, and measure perplexity on ``held_out``.

    Returns a DataFrame ``criterion, fraction, sparsity, perplexity, prune_seconds, eval_seconds``.
    """
    import pandas as pd

    from wnb.errors import WnbError
    from wnb.scoring.selection import CRITERIA
    from wnb.compression.sparsity import sparsity_label

    for criterion in criteria:
        if criterion not in CRITERIA:
            raise WnbError(f"unknown neuron selection {criterion!r}; choose from {', '.join(CRITERIA)}")
    label = sparsity_label(sparsity)
    held_out = check_windows(held_out, lm, min_len=2)
    rows = []
    report = _runs(on_run, int(dense) + len(criteria))
    if dense:
        report("dense")
        start = time.perf_counter()
        ppl = perplexity_interval(lm, held_out, batch_size=batch_size, progress=progress)
        rows.append({"criterion": "dense", "fraction": 0.0, "sparsity": "0%", **ppl,
                     "prune_seconds": 0.0, "eval_seconds": time.perf_counter() - start})
    for criterion in criteria:
        report(f"{fraction:.0%} of the neurons by {criterion}, {label}")
        rows.append(_pruned_perplexity(lm, calib, held_out, batch_size, progress,
                                       {"criterion": criterion, "fraction": fraction, "sparsity": label},
                                       method=method, sparsity=sparsity, layers=layers, neurons=criterion,
                                       fraction=fraction, seed=seed, **prune_kw))
    return pd.DataFrame(rows)


def _runs(on_run, total: int):
    """A function ``report(label)`` that calls ``on_run(index, total, label)`` with the next index."""
    count = iter(range(total))
    return (lambda label: on_run(next(count), total, label)) if on_run is not None else (lambda label: None)


def _pruned_perplexity(lm, calib, held_out, batch_size, progress, row: dict, **prune_kw) -> dict:
    from wnb.compression.pruned import pruned

    start = time.perf_counter()
    with pruned(lm, calib=calib, batch_size=batch_size, progress=progress, **prune_kw):
        middle = time.perf_counter()
        ppl = perplexity_interval(lm, held_out, batch_size=batch_size, progress=progress)
    return {**row, **ppl, "prune_seconds": middle - start, "eval_seconds": time.perf_counter() - middle}
