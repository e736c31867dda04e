"""Downstream tasks: lm-evaluation-harness on the in-memory model.

    with wnb.pruned(lm, method="sparsegpt", sparsity=0.5, calib=calib):
        scores = wnb.evaluate_tasks(lm, ["arc_easy", "hellaswag"], limit=200)   # a tidy DataFrame

lm-eval's ``HFLM`` is given the model object itself, so a pruned, expanded or sign-ablated model is
scored as it is inside its ``with`` block. Install with ``pip install 'wnb[eval]'``. The standard tasks
download their data from the Hugging Face hub (a clear WnbError says so when there is no network);
``include_path`` adds a folder of your own task YAMLs (e.g. ``dataset_path: json`` with local
``data_files``). A task YAML may name Python functions (``!function``) that lm-eval then runs: point
``include_path`` only at folders you trust.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import json
import logging
import math
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wnb.compression.expansion import expanded
from wnb.compression.pruned import pruned
from wnb.core.checks import check_float, check_int
from wnb.errors import WnbError
from wnb.experiments.knowledge import knowledge_pairs
from wnb.experiments.minimal_pairs import minimal_pairs
from wnb.experiments.sweeps import run_counter
from wnb.model.lm import require_local
from wnb.model.state import holding

INSTALL_EVAL = "pip install 'wnb[eval]'  (or: pip install lm-eval)"
COLUMNS = ["task", "metric", "value", "stderr", "filter", "n"]
_managers: dict = {}


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval import evaluator  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as exc:
        raise WnbError(f"downstream tasks need lm-evaluation-harness, which is not installed ({exc}); "
                       f"install it with {INSTALL_EVAL}") from None
    return lm_eval


def _manager(include_path, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    key = (include_path, include_defaults)
    if key not in _managers:
        _managers[key] = TaskManager(include_path=include_path, include_defaults=include_defaults)
    return _managers[key]


def task_manager(tasks: list[str], include_path=None):
    """An lm-eval TaskManager that knows every name in ``tasks`` (your folder alone when it has them all,
    which skips indexing lm-eval's thousands of built-in tasks); unknown names raise WnbError."""
    require_lm_eval()
    if include_path is not None:
        if not isinstance(include_path, (str, Path)) or not Path(include_path).is_dir():
            raise WnbError(f"include_path must be a folder of lm-eval task YAMLs (got {include_path!r})")
        include_path = str(Path(include_path).resolve())
        local = _manager(include_path, False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = _manager(include_path, True)
    for name in tasks:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            raise WnbError(f"unknown lm-eval task {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                           "; see `lm-eval ls tasks` for the names") +
                           ("" if include_path else " (your own tasks: pass include_path=<folder of task YAMLs>)"))
    return manager


def _network_failure(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is a failed download."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = {c.__name__ for c in type(exc).__mro__}
        if names & {"ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError",
                    "ConnectTimeout", "Timeout", "TimeoutException", "NameResolutionError", "MaxRetryError"}:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _kept_state(model):
    """lm-eval seeds Python's, NumPy's and torch's global generators, logs a lot, and switches the model to
    eval mode: put the generators, the log level and the mode back afterwards."""

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval")]
    levels = [lg.level for lg in loggers]
    training = model.training
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        model.train(training)


def evaluate_tasks(lm, tasks, limit=None, batch_size: int = 8, include_path=None, num_fewshot: int | None = None,
                   bootstrap_iters: int = 1000, seed: int = 0, max_length: int | None = None):
    """Score the model as it is now on lm-evaluation-harness tasks; a tidy DataFrame.

    ``tasks`` is a task (or group) name or a list of them; ``limit`` caps the documents per task (an
    integer, or a fraction below 1); ``batch_size`` documents per forward. ``include_path`` is a folder
    of your own task YAMLs (lm-eval's ``TaskManager(include_path=...)``); without one, ``wnb_agreement``
    is :func:`agreement_task` and ``wnb_knowledge`` :func:`knowledge_task`, with ``seed``, written into a
    fresh temporary folder for this run. ``num_fewshot`` overrides the
    tasks' own; ``bootstrap_iters`` sizes the bootstrap of metrics whose standard error has no closed
    form (means have one); ``seed`` seeds lm-eval's sampling (the global generators are put back
    afterwards). Runs under the model's own dtype and device; call it inside ``with wnb.pruned(...)``,
    ``wnb.expanded(...)`` or ``wnb.sign_ablated(...)`` to score that model.

    Returns one row per task (and group) and metric: ``task, metric, value, stderr, filter, n``
    (``stderr`` NaN where lm-eval gives none; ``n`` the documents scored).
    """

    require_lm_eval()
    require_local(lm, "evaluating downstream tasks")
    if lm.tokenizer is None:
        raise WnbError(f"{lm.name} has no tokenizer; lm-eval needs one to turn the tasks' text into tokens")
    names = [tasks] if isinstance(tasks, str) else tasks
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(t, str) and t.strip() for t in names):
        raise WnbError(f"tasks must be a task name or a non-empty list of names (got {tasks!r})")
    names = list(dict.fromkeys(t.strip() for t in names))
    if limit is not None:
        if isinstance(limit, float) and not limit.is_integer():
            limit = check_float(limit, "limit", 0, 1, low_open=True, high_open=True)
        else:
            limit = check_int(int(limit) if isinstance(limit, float) else limit, "limit")
    batch_size = check_int(batch_size, "batch_size")
    bootstrap_iters = check_int(bootstrap_iters, "bootstrap_iters", 0)
    seed = check_int(seed, "seed", 0)
    if num_fewshot is not None:
        num_fewshot = check_int(num_fewshot, "num_fewshot", 0)
    if max_length is not None:
        max_length = check_int(max_length, "max_length")
    with contextlib.ExitStack() as stack:
        own = [t for t in names if t in OWN_TASKS]
        if include_path is None and own:  # wnb's own tasks, written afresh for this run
            include_path = stack.enter_context(_fresh_folder())
            for name in own:
                OWN_TASKS[name](seed=seed, folder=include_path)
            stack.callback(_managers.pop, (str(Path(include_path).resolve()), False), None)
            stack.callback(_managers.pop, (str(Path(include_path).resolve()), True), None)
        return _evaluate(lm, names, limit, batch_size, include_path, num_fewshot, bootstrap_iters, seed, max_length)


@contextlib.contextmanager
def _fresh_folder():

    folder = Path(tempfile.mkdtemp(prefix="wnb-task-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _evaluate(lm, names, limit, batch_size, include_path, num_fewshot, bootstrap_iters, seed, max_length):
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(names, include_path)

    tokenizer = copy.deepcopy(lm.tokenizer)  # lm-eval may give it a pad token; keep the user's as it is
    with holding(lm, "lm-eval tasks"), _kept_state(lm.model):
        try:
            model = HFLM(pretrained=lm.model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
            results = evaluator.simple_evaluate(
                model=model, tasks=names, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                bootstrap_iters=bootstrap_iters, log_samples=False, random_seed=seed, numpy_random_seed=seed,
                torch_random_seed=seed, fewshot_random_seed=seed)
        except WnbError:
            raise
        except Exception as exc:
            if _network_failure(exc):
                raise WnbError(f"the task(s) {', '.join(names)} download their data from the Hugging Face hub, "
                               f"which cannot be reached here ({str(exc).splitlines()[0] if str(exc) else exc}); "
                               "run where there is a network (or with the datasets cached), or define a local "
                               "task in a folder passed as include_path") from exc
            raise
    return results_table(results)


def results_table(results: dict):
    """lm-eval's results dict as rows ``task, metric, value, stderr, filter, n``."""

    rows = []
    samples = results.get("n-samples", {}) or {}
    for section in ("results", "groups"):
        for task, metrics in (results.get(section) or {}).items():
            if section == "groups" and task in (results.get("results") or {}):
                continue
            for key, value in metrics.items():
                if key == "alias" or "," not in key or "_stderr," in key:
                    continue
                metric, _, filt = key.partition(",")
                stderr = metrics.get(f"{metric}_stderr,{filt}")
                n = samples.get(task, {}).get("effective") if isinstance(samples.get(task), dict) else None
                rows.append({"task": task, "metric": metric, "value": _number(value), "stderr": _number(stderr),
                             "filter": filt, "n": n})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["n"] = frame["n"].astype("Int64")
    return frame


def _number(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


# ---------------------------------------------------------------- a task that needs no network

AGREEMENT_TASK = "wnb_agreement"


def agreement_task(n: int = 20, seed: int = 0, folder=None) -> Path:
    """A folder holding an lm-eval task ``wnb_agreement``: wnb's subject–verb agreement minimal pairs
    (:func:`wnb.experiments.minimal_pairs`, ``n`` per construction, ``seed``; shuffled with ``seed``, so that a
    ``limit`` takes every construction) as two-choice items, the grammatical
    sentence first, each scored by its total log-probability after the tokenizer's start token (lm-eval's
    empty context), so ``acc`` is the minimal-pair accuracy. Needs no network, which the standard tasks do.

    Written into ``folder`` (made if missing; it must not hold this task already), by default a fresh
    temporary folder that the caller removes. :func:`evaluate_tasks` writes it afresh for every run and
    removes it afterwards: lm-eval runs Python that a task YAML names (``!function``), so it is never read
    from a place others can write, such as the shared cache."""


    n, seed = check_int(n, "n"), check_int(seed, "seed", 0)
    return pairs_task(AGREEMENT_TASK, minimal_pairs("agreement", n=n, seed=seed), seed, folder,
                      f"wnb's agreement minimal pairs ({n} per construction, seed {seed}); written by wnb.agreement_task")


KNOWLEDGE_TASK = "wnb_knowledge"


def knowledge_task(n: int = 20, seed: int = 0, folder=None) -> Path:
    """A folder holding an lm-eval task ``wnb_knowledge``: wnb's knowledge items (facts, sums, counts:
    :func:`wnb.knowledge_pairs`, ``n`` per phenomenon, ``seed``), both sentences grammatical, as two-choice
    items written and scored as :func:`agreement_task`'s. The non-grammatical side of the follow-up's double
    dissociation, offline (:func:`wnb.experiments.dissociation.double_dissociation`)."""
    n, seed = check_int(n, "n"), check_int(seed, "seed", 0)
    return pairs_task(KNOWLEDGE_TASK, knowledge_pairs(n=n, seed=seed), seed, folder,
                      f"wnb's knowledge items ({n} per phenomenon, seed {seed}); written by wnb.experiments.tasks.knowledge_task")


def pairs_task(name: str, pairs: list[dict], seed: int, folder, comment: str) -> Path:
    """Write pairs (``{"good", "bad", "phenomenon"}``) as the lm-eval task ``name`` into ``folder`` (made if
    missing; a fresh temporary folder by default), shuffled with ``seed``; refuses a folder that already
    holds a task of that name. See :func:`agreement_task`."""
    folder = Path(tempfile.mkdtemp(prefix="wnb-task-")) if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any((folder / f"{name}{suffix}").exists() for suffix in (".jsonl", ".yaml")):
        raise WnbError(f"{folder} already holds a task {name}; write it into a new folder")
    order = random.Random(seed).sample(range(len(pairs)), len(pairs))  # so that a limit takes every phenomenon
    docs = [{"query": "", "choices": [pairs[i]["good"], pairs[i]["bad"]], "label": 0,
             "phenomenon": pairs[i]["phenomenon"]} for i in order]
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    data = json.dumps(str(folder / f"{name}.jsonl"))  # a JSON string is a YAML string
    (folder / f"{name}.yaml").write_text(
        f"# {comment}\n"
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{query}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{label}}\"\ntarget_delimiter: \"\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return folder


OWN_TASKS = {AGREEMENT_TASK: agreement_task, KNOWLEDGE_TASK: knowledge_task}


def compare_tasks(lm, calib, tasks, layers=None, n_experts: int = 16, sparsity=0.5, bits: int | None = None,
                  limit=None, include_path=None, seed: int = 0, batch_size: int = 8, progress: bool = True,
                  on_run=None, max_bytes: int | None = None):
    """:func:`evaluate_tasks` of the dense model, of SparseGPT at ``sparsity`` on ``layers`` (default: the
    FFN layers) and of Sparse Expansion with ``n_experts`` experts (skipped for ``n_experts=1``), each
    calibrated on ``calib``; ``bits`` quantizes both. One table with a ``model`` column first
    (``dense``, ``sparsegpt``, ``expansion``). ``on_run(index, total, label)`` before each model."""


    models = ["dense", "sparsegpt"] + (["expansion"] if int(n_experts) > 1 else [])
    report = run_counter(on_run, len(models))
    kw = dict(limit=limit, include_path=include_path, seed=seed, batch_size=batch_size)
    frames = []
    for model in models:
        report(model)
        if model == "dense":
            scores = evaluate_tasks(lm, tasks, **kw)
        elif model == "sparsegpt":
            with pruned(lm, "sparsegpt", sparsity, calib=calib, layers=layers, seed=seed, progress=progress, bits=bits):
                scores = evaluate_tasks(lm, tasks, **kw)
        else:
            with expanded(lm, int(n_experts), sparsity, calib=calib, layers=layers, seed=seed, progress=progress,
                          max_bytes=max_bytes, bits=bits):
                scores = evaluate_tasks(lm, tasks, **kw)
        frames.append(scores.assign(model=model))
    table = pd.concat(frames, ignore_index=True)
    return table[["model"] + [c for c in table.columns if c != "model"]]
