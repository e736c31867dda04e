"""intervention_study: the mirror and the patches against their random controls. Perplexities against a plain
PyTorch computation (a forward hook written here for the clamps; the activation swapped for a reference module
for the patches), and a closed form: on a ReLU model (tiny OPT) both patches are the identity."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_opt, tiny_word_llama

import wnb
from wnb.errors import WnbError
from wnb.experiments.interventions import intervention_study
from wnb.model.architectures import activation_module


def _scores(lm):
    gen = torch.Generator().manual_seed(3)
    return {name: torch.rand(wnb.layer_weight(lm, name).shape[0], generator=gen, dtype=torch.float64)
            for name in wnb.first_ffn_layers(lm)}


def _ppl(model, windows):
    with torch.no_grad():
        logits = model(windows).logits
    return math.exp(F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), windows[:, 1:]).item())


def _clamped_ppl(lm, selection, side, windows):
    def hook(mod, args, out, idx):
        part = out[..., idx]
        out = out.clone()
        out[..., idx] = part.clamp(min=0) if side == "negative" else part.clamp(max=0)
        return out

    handles = [lm.model.get_submodule(n).register_forward_hook(lambda m, a, o, i=i: hook(m, a, o, i))
               for n, i in selection.items()]
    try:
        return _ppl(lm.model, windows)
    finally:
        for h in handles:
            h.remove()


class SignFlip(torch.nn.Module):
    def __init__(self, index, width):
        super().__init__()
        self.mask = torch.zeros(width, dtype=torch.bool)
        self.mask[index] = True

    def forward(self, x):
        y = F.silu(x)
        return torch.where(self.mask, y.abs(), y)


@pytest.fixture(scope="module")
def word_lm():
    return tiny_word_llama()


@pytest.fixture(scope="module")
def windows(word_lm):
    text = " ".join(p["good"] for p in wnb.minimal_pairs(n=6))
    return torch.tensor(word_lm.tokenizer(text, add_special_tokens=False).input_ids[:6 * 16]).view(6, 16)


def test_rows_and_perplexities(word_lm, windows):
    scores = _scores(word_lm)
    pairs = wnb.minimal_pairs(n=3)
    table = intervention_study(word_lm, windows, scores, fraction=0.1, seeds=(0, 1), pairs=pairs, progress=False)
    assert len(table) == 1 + 4 * 3
    assert list(table["intervention"]) == ["none"] + [i for i in ("negative", "positive", "posrelu", "signflip")
                                                      for _ in range(3)]
    assert list(table["selection"][:4]) == ["dense", "wasserstein", "random", "random"]
    dense = table.iloc[0]
    assert dense["perplexity"] == pytest.approx(_ppl(word_lm.model, windows), rel=1e-5)
    top = wnb.select_wasserstein(scores, 0.1)
    assert (table["n_neurons"][table["selection"] != "dense"] == sum(i.numel() for i in top.values())).all()
    rows = table.set_index(["intervention", "selection"])
    for side in ("negative", "positive"):
        w = rows.loc[(side, "wasserstein")]
        assert w["perplexity"] == pytest.approx(_clamped_ppl(word_lm, top, side, windows), rel=1e-5)
        assert w["delta_perplexity"] == pytest.approx(w["perplexity"] - dense["perplexity"], rel=1e-6)
    model = copy.deepcopy(word_lm.model)
    for name, idx in top.items():
        parent, _, attr = activation_module(word_lm, name).rpartition(".")
        setattr(model.get_submodule(parent), attr, SignFlip(idx, wnb.layer_weight(word_lm, name).shape[0]))
    assert rows.loc[("signflip", "wasserstein")]["perplexity"] == pytest.approx(_ppl(model, windows), rel=1e-5)
    randoms = table[table["selection"] == "random"]
    assert randoms["w_delta_perplexity"].notna().all() and randoms["n_seeds"].eq(2).all()
    assert {"accuracy", "delta_accuracy", "mcnemar_p", "w_mcnemar_p", "acc_seeds_mean"} <= set(table.columns)
    assert _ppl(word_lm.model, windows) == pytest.approx(dense["perplexity"], rel=1e-5)   # the model is dense again


def test_relu_patches_are_the_identity():
    opt = tiny_opt()
    windows = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    table = intervention_study(opt, windows, _scores(opt), fraction=0.1, seeds=(0,),
                               interventions=("posrelu", "signflip", "positive"), progress=False)
    patched = table[table["intervention"].isin(["posrelu", "signflip"])]
    assert (patched["delta_perplexity"] == 0).all() and (patched["delta_nll"] == 0).all()
    assert (table.loc[table["intervention"] == "positive", "delta_perplexity"] != 0).all()  # the mirror is not


def test_bad_input(word_lm, windows):
    scores = _scores(word_lm)
    with pytest.raises(WnbError, match="unknown intervention"):
        intervention_study(word_lm, windows, scores, interventions=("mirror",), progress=False)
    with pytest.raises(WnbError, match="not the first projection"):
        up = {"model.layers.0.mlp.up_proj": torch.rand(64, dtype=torch.float64)}
        intervention_study(word_lm, windows, up, interventions=("posrelu",), progress=False)
    with pytest.raises(WnbError, match="seeds"):
        intervention_study(word_lm, windows, scores, seeds=(), progress=False)
    with pytest.raises(WnbError, match="fraction"):
        intervention_study(word_lm, windows, scores, fraction=2, progress=False)
