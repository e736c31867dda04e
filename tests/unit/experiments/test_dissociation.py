"""The double dissociation: grammar pairs and knowledge items scored per item under each selection's ablation,
paired statistics checked against scipy (McNemar: the exact binomial test on the discordant items) and closed
forms, lm-eval tasks (wnb_knowledge, written by wnb, offline) against the per-item scoring of the same items."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from scipy import stats

import wnb
from wnb.errors import WnbError
from wnb.experiments import tasks
from wnb.experiments.dissociation import dissociation_summary, double_dissociation


def _vocabulary_lm(seed: int = 0):
    """A tiny random Llama with a word-level tokenizer that knows every word of the agreement pairs and of the
    knowledge items, so no item is two [UNK]s that tie."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    sentences = [s for p in wnb.minimal_pairs("agreement", n=None) + wnb.knowledge_pairs() for s in (p["good"], p["bad"])]
    words = ["[UNK]", "<s>", "</s>"] + sorted({w for s in sentences for w in re.findall(r"\w+|[^\w\s]", s)})
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=64)).eval()
    with torch.no_grad():  # sharper preferences, so that ablations change some choices
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6)
    return wnb.wrap_model(model, tok, name="tiny-vocabulary-llama")


@pytest.fixture(scope="module")
def lm():
    return _vocabulary_lm()


def _selections(lm):
    gen = torch.Generator().manual_seed(0)
    layers = wnb.first_ffn_layers(lm)
    perms = {n: torch.randperm(64, generator=gen) for n in layers}
    return {("wasserstein", None): {n: p[:16] for n, p in perms.items()},
            ("matched", 0): {n: p[16:48] for n, p in perms.items()}}


def test_pairs_are_scored_per_item_and_compared_paired(lm):
    selections = _selections(lm)
    knowledge = wnb.knowledge_pairs(n=6)
    table = double_dissociation(lm, selections, grammar="agreement", knowledge=knowledge, n=5, progress=False)
    assert list(table["selection"].unique()) == ["dense", "wasserstein", "matched"]
    assert set(table["kind"]) == {"grammar", "knowledge"} and set(table["set"]) == {"agreement", "knowledge"}
    grammar = wnb.minimal_pairs("agreement", n=5)
    flags = {}
    for (name, seed), neurons in [(("dense", None), {})] + list(selections.items()):
        with wnb.sign_ablated(lm, neurons, "negative"):
            flags[name] = {s: wnb.minimal_pair_scores(lm, pairs, progress=False)["correct"].to_numpy()
                           for s, pairs in (("agreement", grammar), ("knowledge", knowledge))}
    rows = table.set_index(["selection", "set"])
    for name in ("dense", "wasserstein", "matched"):
        for s in ("agreement", "knowledge"):
            row = rows.loc[(name, s)]
            right = flags[name][s]
            assert row["n"] == right.size and row["accuracy"] == pytest.approx(right.mean())
            if name == "dense":
                continue
            dense = flags["dense"][s]
            n12, n21 = int((dense & ~right).sum()), int((~dense & right).sum())
            assert row["delta_accuracy"] == pytest.approx((n21 - n12) / right.size)
            exact = stats.binomtest(n12, n12 + n21, 0.5).pvalue if n12 + n21 else 1.0
            assert row["mcnemar_p"] == pytest.approx(exact)
    m = rows.loc[("matched", "knowledge")]
    w, c = flags["wasserstein"]["knowledge"], flags["matched"]["knowledge"]
    assert m["w_delta_accuracy"] == pytest.approx(w.mean() - c.mean())
    assert m["w_delta_acc_low"] <= m["w_delta_accuracy"] <= m["w_delta_acc_high"]
    assert m["w_verdict"] in ("holds", "reversed", "not observed", "inconclusive")
    assert rows.loc[("wasserstein", "knowledge")][["w_delta_accuracy", "w_verdict"]].isna().all()
    summary = dissociation_summary(table)
    assert list(summary["selection"]) == ["matched"]
    assert summary["dissociation"].iloc[0] in ("holds", "reversed somewhere", "not shown at this sample size")
    assert table.attrs["intervention"] == "negative"


def test_the_knowledge_task_is_the_per_item_accuracy(lm, tmp_path):
    pytest.importorskip("lm_eval")
    folder = tasks.knowledge_task(n=3, seed=2, folder=tmp_path / "task")
    docs = [json.loads(line) for line in (folder / f"{tasks.KNOWLEDGE_TASK}.jsonl").read_text().splitlines()]
    assert len(docs) == 3 * 7 and all(d["label"] == 0 for d in docs)
    items = [{"good": d["choices"][0], "bad": d["choices"][1], "phenomenon": d["phenomenon"]} for d in docs]
    assert sorted(i["good"] for i in items) == sorted(p["good"] for p in wnb.knowledge_pairs(n=3, seed=2))
    table = wnb.evaluate_tasks(lm, tasks.KNOWLEDGE_TASK, include_path=folder)
    acc = table.set_index("metric").loc["acc", "value"]
    assert acc == pytest.approx(wnb.minimal_pair_scores(lm, items, progress=False)["correct"].mean())
    with pytest.raises(WnbError, match="already holds"):
        tasks.knowledge_task(folder=folder)


def test_tasks_through_lm_eval(lm):
    pytest.importorskip("lm_eval")
    selections = _selections(lm)
    table = double_dissociation(lm, selections, grammar=None, knowledge=None, tasks=["wnb_knowledge"], limit=14,
                                seed=1, progress=False)
    assert list(table["kind"].unique()) == ["task"] and list(table["set"].unique()) == ["wnb_knowledge"]
    rows = table.set_index("selection")
    values = {}
    for name, neurons in [("dense", {})] + [(k[0], v) for k, v in selections.items()]:
        with wnb.sign_ablated(lm, neurons, "negative"):
            got = wnb.evaluate_tasks(lm, "wnb_knowledge", limit=14, seed=1).set_index("metric").loc["acc"]
        values[name] = (got["value"], got["stderr"])
        assert rows.loc[name, "accuracy"] == pytest.approx(got["value"])
    z = stats.norm.ppf(0.975)
    (d, sd), (w, sw), (m, sm) = values["dense"], values["wasserstein"], values["matched"]
    assert rows.loc["matched", "delta_accuracy"] == pytest.approx(m - d)
    assert rows.loc["matched", "w_delta_acc_high"] == pytest.approx(w - m + z * math.sqrt(sw ** 2 + sm ** 2))
    assert rows.loc["wasserstein", "delta_acc_low"] == pytest.approx(w - d - z * math.sqrt(sw ** 2 + sd ** 2))
    assert "mcnemar_p" not in table  # lm-eval gives no items to pair


def test_bad_input(lm):
    with pytest.raises(WnbError, match="wasserstein"):
        double_dissociation(lm, {("matched", 0): {}}, progress=False)
    with pytest.raises(WnbError, match="selections must map"):
        double_dissociation(lm, {}, progress=False)
    with pytest.raises(WnbError, match="nothing to score"):
        double_dissociation(lm, _selections(lm), grammar=None, knowledge=None, progress=False)
    with pytest.raises(WnbError, match="unknown intervention"):
        double_dissociation(lm, _selections(lm), intervention="mirror", progress=False)
