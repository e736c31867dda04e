"""evaluate_tasks: lm-evaluation-harness on the in-memory model, checked against the same multiple-choice
log-likelihoods computed by hand with plain transformers, on a local six-item task (tests/lm_eval_tasks)."""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, tiny_word_llama

import wnb
import wnb.app
import wnb.experiments

pytest.importorskip("lm_eval")

TASKS = ROOT / "tests" / "lm_eval_tasks"
TASK = "wnb_tiny_mc"


@pytest.fixture
def in_tasks(monkeypatch):
    """The task's data_files path is relative: run from its folder."""
    monkeypatch.chdir(TASKS)


def _items() -> list[dict]:
    return [json.loads(line) for line in (TASKS / f"{TASK}.jsonl").read_text().splitlines() if line.strip()]


def _loglikelihood(lm, context: str, choice: str) -> float:
    """log p(" " + choice | context) as lm-eval scores it: the whole text is tokenized and the context's
    tokens split off its front."""
    tok = lm.tokenizer
    whole = tok(context + " " + choice).input_ids
    ctx = tok(context).input_ids
    cont = whole[len(ctx):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(ids[:, :-1]).logits.float(), -1)[0]
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def _by_hand(lm) -> dict[str, tuple[float, float]]:
    acc, acc_norm = [], []
    for item in _items():
        lls = np.array([_loglikelihood(lm, item["query"], c) for c in item["choices"]])
        lengths = np.array([float(len(c)) for c in item["choices"]])
        acc.append(float(np.argmax(lls) == item["label"]))
        acc_norm.append(float(np.argmax(lls / lengths) == item["label"]))

    def with_stderr(values):  # lm-eval's mean and its standard error (sample deviation / sqrt n)
        n = len(values)
        mean = sum(values) / n
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)

    return {"acc": with_stderr(acc), "acc_norm": with_stderr(acc_norm)}


def _check(table, expected, n=6):
    assert list(table.columns) == ["task", "metric", "value", "stderr", "filter", "n"]
    assert set(table["task"]) == {TASK}
    got = table.set_index("metric")
    for metric, (value, stderr) in expected.items():
        assert got.loc[metric, "value"] == pytest.approx(value, abs=1e-12)
        assert got.loc[metric, "stderr"] == pytest.approx(stderr, abs=1e-12)
        assert got.loc[metric, "n"] == n


def test_local_task_equals_a_hand_computation(in_tasks):
    lm = tiny_word_llama()
    expected = _by_hand(lm)
    pad = lm.tokenizer.pad_token
    rng = (random.getstate(), torch.get_rng_state())
    table = wnb.evaluate_tasks(lm, TASK, include_path=TASKS, batch_size=4)
    _check(table, expected)
    assert lm.tokenizer.pad_token == pad  # lm-eval's pad token went to a copy of the tokenizer
    assert random.getstate() == rng[0] and torch.equal(torch.get_rng_state(), rng[1])  # generators put back


def test_pruned_model_is_scored_as_it_is_inside_the_block(in_tasks):
    lm = tiny_word_llama(seed=3)
    with torch.no_grad():  # sharper predictions, so that pruning changes the model's choices
        for p in lm.model.parameters():
            if p.dim() == 2:
                p.mul_(20)
    calib = torch.randint(0, lm.model.config.vocab_size, (6, 16), generator=torch.Generator().manual_seed(1))
    dense = _by_hand(lm)
    with wnb.pruned(lm, method="magnitude", sparsity=0.9, progress=False):
        expected = _by_hand(lm)
        table = wnb.evaluate_tasks(lm, [TASK], include_path=TASKS, batch_size=2)
    _check(table, expected)
    assert expected != dense  # so the table is the pruned model's, not the dense one's
    with wnb.expanded(lm, n_experts=2, calib=calib, pca_factor=4, progress=False):
        expected_expanded = _by_hand(lm)
        _check(wnb.evaluate_tasks(lm, [TASK], include_path=TASKS, batch_size=3), expected_expanded)
    limited = wnb.evaluate_tasks(lm, TASK, include_path=TASKS, limit=3)
    assert set(limited["n"]) == {3}


def test_standard_task_offline_says_it_needs_a_network(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as with no network, without the retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    lm = tiny_word_llama()
    with pytest.raises(wnb.WnbError, match="Hugging Face hub, which cannot be reached"):
        wnb.evaluate_tasks(lm, ["arc_easy"], limit=2)


def test_bad_requests(in_tasks, monkeypatch):
    lm = tiny_word_llama()
    with pytest.raises(wnb.WnbError, match="unknown lm-eval task 'wnb_tiny_mcq'; did you mean wnb_tiny_mc"):
        wnb.evaluate_tasks(lm, "wnb_tiny_mcq", include_path=TASKS)
    with pytest.raises(wnb.WnbError, match="non-empty list"):
        wnb.evaluate_tasks(lm, [], include_path=TASKS)
    with pytest.raises(wnb.WnbError, match="batch_size"):
        wnb.evaluate_tasks(lm, TASK, include_path=TASKS, batch_size=0)
    with pytest.raises(wnb.WnbError, match="limit"):
        wnb.evaluate_tasks(lm, TASK, include_path=TASKS, limit=-1)
    with pytest.raises(wnb.WnbError, match="include_path"):
        wnb.evaluate_tasks(lm, TASK, include_path=TASKS / "nowhere")
    with pytest.raises(wnb.WnbError, match="no tokenizer"):
        wnb.evaluate_tasks(wnb.wrap_model(lm.model), TASK, include_path=TASKS)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    with pytest.raises(wnb.WnbError, match=r"pip install 'wnb\[eval\]'"):
        wnb.evaluate_tasks(lm, TASK, include_path=TASKS)


def test_the_agreement_task_is_the_minimal_pair_accuracy(tmp_path, monkeypatch):
    """wnb_agreement through lm-eval (empty context: the tokenizer's start token, then the sentence)
    gives the accuracy wnb.minimal_pair_accuracy computes on the same pairs, dense and pruned."""
    import wnb.experiments.tasks as tasks

    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    lm = tiny_word_llama()
    folder = tasks.agreement_task(n=4, seed=1, folder=tmp_path / "task")
    assert sorted(p.name for p in folder.iterdir()) == [f"{tasks.AGREEMENT_TASK}.jsonl", f"{tasks.AGREEMENT_TASK}.yaml"]
    assert not (tmp_path / "cache").exists()  # nothing of it in wnb's shared cache
    docs = [json.loads(line) for line in (folder / f"{tasks.AGREEMENT_TASK}.jsonl").read_text().splitlines()]
    pairs = wnb.minimal_pairs(n=4, seed=1)
    assert sorted(d["choices"][0] for d in docs) == sorted(p["good"] for p in pairs) and len(docs) == 24
    assert len({d["phenomenon"] for d in docs[:6]}) > 2  # shuffled: a limit takes several constructions
    mine = [{"good": d["choices"][0], "bad": d["choices"][1], "phenomenon": d["phenomenon"]} for d in docs]
    calib = torch.tensor(lm.tokenizer(" ".join(p["good"] for p in pairs), add_special_tokens=False).input_ids
                         [:8 * 12]).view(8, 12)
    table = tasks.compare_tasks(lm, calib, [tasks.AGREEMENT_TASK], layers=["model.layers.1.mlp.gate_proj"],
                                n_experts=1, include_path=folder, progress=False)
    assert list(table["model"]) == ["dense", "sparsegpt"]
    acc = table.set_index("model")["value"]
    expected = wnb.minimal_pair_scores(lm, mine, progress=False)["correct"].mean()
    assert acc["dense"] == pytest.approx(expected)
    with wnb.pruned(lm, "sparsegpt", 0.5, calib=calib, layers=["model.layers.1.mlp.gate_proj"], progress=False):
        expected = wnb.minimal_pair_scores(lm, mine, progress=False)["correct"].mean()
    assert acc["sparsegpt"] == pytest.approx(expected)


def test_the_expansion_tab_scores_tasks(tmp_path, monkeypatch):
    """Score tasks in the Sparse Expansion tab: the table is compare_tasks with the tab's settings, the
    bars are its acc values, and the CSV downloads."""
    import wnb.experiments.tasks as tasks
    import wnb.widgets as ww
    from wnb.app.session import Session

    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WNB_STRICT", raising=False)
    lm = tiny_word_llama()
    ids = lm.tokenizer(" ".join(p["good"] for p in wnb.minimal_pairs(n=8)), add_special_tokens=False).input_ids
    windows = torch.tensor(ids[:16 * 12]).view(12, 16)
    app = ww.App(session=Session(lm=lm, calib=windows[:8], held_out=windows[8:], budget="small"))
    app.tabs.selected_index = 3
    view = app.expansion
    view.k.value = 2
    view.tasks.limit.value = 30
    view.tasks.run.click()
    assert view.last_error is None, view.last_error
    shown = view.tasks.table
    ref = tasks.compare_tasks(lm, windows[:8], [tasks.AGREEMENT_TASK], layers=[view.layer.value], n_experts=2,
                              limit=30, include_path=tasks.agreement_task(folder=tmp_path / "task"), progress=False)
    assert list(shown["model"]) == ["dense", "sparsegpt", "expansion"] and (shown["n"] == 30).all()
    np.testing.assert_allclose(shown["value"], ref["value"])
    bars = [b.get_height() for b in view.figs["tasks"].axes[0].patches]
    np.testing.assert_allclose(bars, shown["value"])
    assert "tasks_wnb_agreement_" in view.tasks.links.value and ".csv" in view.tasks.links.value


def test_a_task_planted_in_the_cache_never_runs(tmp_path, monkeypatch):
    """A copied cache folder must not run code: a wnb_agreement.yaml planted where earlier versions kept
    the task (the cache's tasks/ folder), with a ``!function`` that would write a marker, is never read;
    the task lm-eval runs is the one wnb writes afresh, and it is gone afterwards."""
    import tempfile

    import wnb.experiments.tasks as tasks

    cache_root = tmp_path / "cache"
    monkeypatch.setenv("WNB_CACHE", str(cache_root))
    marker = tmp_path / "ran"
    for folder in [cache_root / "tasks" / "agreement-n20-seed0"]:
        folder.mkdir(parents=True)
        (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef f(x):\n    return x\n")
        (folder / f"{tasks.AGREEMENT_TASK}.yaml").write_text(
            f"task: {tasks.AGREEMENT_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
            f"{json.dumps(str(folder / 'x.jsonl'))}\ntest_split: test\noutput_type: multiple_choice\n"
            "process_docs: !function evil.f\ndoc_to_text: \"\"\ndoc_to_choice: \"{{choices}}\"\n"
            "doc_to_target: 0\n")
    before = set(Path(tempfile.gettempdir()).glob("wnb-task-*"))
    lm = tiny_word_llama()
    table = wnb.evaluate_tasks(lm, tasks.AGREEMENT_TASK, limit=6)
    assert not marker.exists()
    assert list(table["n"]) == [6] and table["value"].between(0, 1).all()
    assert set(Path(tempfile.gettempdir()).glob("wnb-task-*")) == before  # the run's folder is removed
