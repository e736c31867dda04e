"""Token table, differentiating pairs and output effect against direct computations."""
from collections import Counter

import numpy as np
import pytest
import torch

import wnb
import wnb.scoring
from wnb.errors import WnbError
from wnb.scoring.mapping import sample_pairs


class WordTokenizer:
    def decode(self, ids, **_):
        return " ".join(f"w{i}" for i in ids)


def neuron_data(seed=0, n_windows=20, seq_len=50, vocab=30):
    gen = torch.Generator().manual_seed(seed)
    windows = torch.randint(0, vocab, (n_windows, seq_len), generator=gen)
    y = torch.randn(windows.numel(), generator=gen, dtype=torch.float64)
    y[windows.flatten() == 7] -= 4.0  # token 7 makes the lower tail
    return windows, y


# ---------------------------------------------------------------- token table

def test_token_table_counts_equal_a_counter():
    windows, y = neuron_data()
    table = wnb.token_table(windows, y, WordTokenizer())
    counter = Counter(windows.flatten().tolist())
    assert dict(zip(table["token_id"], table["count"])) == dict(counter)
    assert table["count"].sum() == windows.numel()
    assert table.loc[table["token_id"] == 7, "token"].item() == "w7"


def test_token_table_statistics_and_tails_by_hand():
    windows, y = neuron_data(1)
    ids = windows.flatten()
    table = wnb.token_table(windows, y, threshold=2.5).set_index("token_id")
    z = (y - y.mean()) / y.std(correction=0)
    lower, upper = z < -2.5, z > 2.5
    for token in (0, 7, 13):
        mine = ids == token
        row = table.loc[token]
        assert row["mean"] == pytest.approx(y[mine].mean().item())
        assert row["min"] == y[mine].min().item() and row["max"] == y[mine].max().item()
        far = y[mine][(z[mine]).abs().argmax()].item()
        assert row["extreme"] == far
        assert row["lower"] == int((lower & mine).sum()) and row["upper"] == int((upper & mine).sum())
        assert row["lower_share"] == pytest.approx((lower & mine).sum().item() / lower.sum().item())
    assert table["lower_share"].sum() == pytest.approx(1.0)
    first = wnb.token_table(windows, y)
    assert first["token_id"].iloc[0] == 7  # sorted by tail outputs


def test_token_table_skip_first_and_flat_ids():
    windows, y = neuron_data(2)
    skipped = wnb.token_table(windows, y, skip_first=3)
    kept = windows[:, 3:].flatten()
    assert dict(zip(skipped["token_id"], skipped["count"])) == dict(Counter(kept.tolist()))
    flat = wnb.token_table(windows.flatten(), y, seq_len=windows.shape[1], skip_first=3)
    assert flat.equals(skipped)
    with pytest.raises(WnbError, match="seq_len"):
        wnb.token_table(windows.flatten(), y, skip_first=1)
    with pytest.raises(WnbError, match="same tokens"):
        wnb.token_table(windows[:3], y)
    with pytest.raises(WnbError, match="one neuron"):
        wnb.token_table(windows, torch.zeros(windows.numel(), 2))
    assert wnb.token_table(windows, torch.stack([y, y], 1), neuron=1).equals(wnb.token_table(windows, y))


def test_tail_concentration():
    windows, y = neuron_data(3)
    table = wnb.token_table(windows, y, WordTokenizer())
    conc = wnb.tail_concentration(table, n_control=50, seed=1).set_index("tail")
    lower = conc.loc["lower"]
    assert lower["top_token_id"] == 7 and lower["top_token"] == "w7"
    assert lower["concentration"] == pytest.approx(table["lower"].max() / table["lower"].sum())
    assert lower["tail_outputs"] == table["lower"].sum()
    assert lower["control"] < 0.5 < lower["concentration"]  # one token makes the tail, far above chance
    again = wnb.tail_concentration(table, n_control=50, seed=1)
    assert again.equals(conc.reset_index())


def test_tail_concentration_of_a_tail_free_neuron():
    windows = torch.zeros(2, 10, dtype=torch.long)
    y = torch.linspace(-1, 1, 20, dtype=torch.float64)  # uniform: nothing beyond 2.5σ
    conc = wnb.tail_concentration(wnb.token_table(windows, y))
    assert conc["tail_outputs"].tolist() == [0, 0] and conc["concentration"].isna().all()


# ---------------------------------------------------------------- differentiating pairs

def test_differentiating_pairs_are_the_md_sample_ranked_by_ratio(tiny_llama, tiny_windows):
    layer = wnb.ffn_layers(tiny_llama)[0]
    acts = wnb.capture(tiny_llama, [layer], tiny_windows, progress=False)[layer]
    neuron, seq_len = 5, tiny_windows.shape[1]
    pairs = wnb.differentiating_pairs(acts.inputs, acts.outputs, neuron, tiny_windows, WordTokenizer(),
                                      n_pairs=40, seed=3, top=5, width=2)
    i, j = sample_pairs(acts.inputs.shape[0], 40, seed=3)
    x, y = acts.inputs.double(), acts.outputs[:, neuron].double()
    dx = (x[i] - x[j]).norm(dim=1)
    dx = dx / dx.max()
    dy = (y[i] - y[j]).abs()
    dy = dy / dy.median() if len(dy) % 2 else dy / dy.sort().values[len(dy) // 2 - 1:len(dy) // 2 + 1].mean()
    ratio = (dy / dx).numpy()
    order = np.argsort(-ratio, kind="stable")[:5]
    np.testing.assert_allclose(pairs["ratio"], ratio[order], rtol=1e-12)
    # the pairs' terms average to MD over the whole sample
    md = wnb.mapping_difficulty(acts.inputs, acts.outputs[:, [neuron]], n_pairs=40, seed=3)
    assert md.item() == pytest.approx(ratio.mean(), rel=1e-10)
    tok = WordTokenizer()
    for row in pairs.itertuples():
        for side in ("a", "b"):
            w, p = getattr(row, f"window_{side}"), getattr(row, f"position_{side}")
            assert getattr(row, f"value_{side}") == pytest.approx(y[w * seq_len + p].item())
            ids = tiny_windows[w].tolist()
            assert getattr(row, f"token_{side}") == tok.decode(ids[p:p + 1])
            assert getattr(row, f"left_{side}") == tok.decode(ids[max(0, p - 2):p])
            assert getattr(row, f"right_{side}") == tok.decode(ids[p + 1:p + 3])


def test_differentiating_pairs_skip_first(tiny_llama, tiny_windows):
    layer = wnb.ffn_layers(tiny_llama)[0]
    acts = wnb.capture(tiny_llama, [layer], tiny_windows, progress=False)[layer]
    pairs = wnb.differentiating_pairs(acts.inputs, acts.outputs, 2, tiny_windows, n_pairs=30, top=30, skip_first=2)
    assert (pairs["position_a"] >= 2).all() and (pairs["position_b"] >= 2).all()
    with pytest.raises(WnbError):
        wnb.differentiating_pairs(acts.inputs, acts.outputs, 64, tiny_windows)


# ---------------------------------------------------------------- output effect

def reference_effect(lm, down, neuron):
    """lm_head · column ``neuron`` of the down projection, straight from the modules' weights."""
    from transformers.pytorch_utils import Conv1D

    mod = lm.model.get_submodule(down)
    column = mod.weight[neuron, :] if isinstance(mod, Conv1D) else mod.weight[:, neuron]  # Conv1D is [in, out]
    return (lm.model.lm_head.weight.double() @ column.double()).detach()


@pytest.mark.parametrize("which", [0, 1])
def test_output_effect_equals_unembedding_times_down_column(tiny, which):
    first = [n for n in wnb.ffn_layers(tiny) if n.rsplit(".", 1)[-1] in ("gate_proj", "up_proj", "dense_h_to_4h",
                                                                         "c_fc")]
    layer = first[which]
    parent = layer.rsplit(".", 1)[0]
    down = {"gate_proj": "down_proj", "up_proj": "down_proj", "dense_h_to_4h": "dense_4h_to_h",
            "c_fc": "c_proj"}[layer.rsplit(".", 1)[-1]]
    effect = wnb.output_effect(tiny, layer, 9, k=6)
    ref = reference_effect(tiny, f"{parent}.{down}", 9)
    raises, lowers = effect[effect["side"] == "raises"], effect[effect["side"] == "lowers"]
    assert raises["token_id"].tolist() == torch.argsort(ref, descending=True, stable=True)[:6].tolist()
    assert lowers["token_id"].tolist() == torch.argsort(ref, stable=True)[:6].tolist()
    np.testing.assert_allclose(raises["effect"], ref[raises["token_id"].tolist()].numpy(), rtol=1e-5, atol=1e-7)
    assert raises["rank"].tolist() == list(range(1, 7))


def test_output_effect_with_tied_embeddings(tiny_gpt2):
    assert tiny_gpt2.model.lm_head.weight is tiny_gpt2.model.transformer.wte.weight
    effect = wnb.output_effect(tiny_gpt2, "transformer.h.1.mlp.c_fc", 0, k=3)
    column = tiny_gpt2.model.transformer.h[1].mlp.c_proj.weight[0, :].double()
    ref = tiny_gpt2.model.transformer.wte.weight.double() @ column
    assert effect["token_id"].iloc[0] == int(ref.argmax())


def test_output_effect_refuses_other_layers(tiny_llama, tiny_gpt2):
    for lm, layer in ((tiny_llama, "model.layers.0.mlp.down_proj"), (tiny_llama, "model.layers.0.self_attn.q_proj"),
                      (tiny_gpt2, "transformer.h.0.mlp.c_proj"), (tiny_gpt2, "transformer.h.0.attn.c_attn")):
        with pytest.raises(WnbError, match="FFN hidden neuron"):
            wnb.output_effect(lm, layer, 0)
    with pytest.raises(WnbError, match="between 0 and 63"):
        wnb.output_effect(tiny_llama, "model.layers.0.mlp.gate_proj", 64)
    with pytest.raises(WnbError, match="k must be"):
        wnb.output_effect(tiny_llama, "model.layers.0.mlp.gate_proj", 0, k=0)


