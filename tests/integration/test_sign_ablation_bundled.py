"""Sign-specific ablation: the clamp against a plain PyTorch hook, hook removal, the study's controls,
the matched control's bisection, the depth profile, and bad input refused before any work."""
from __future__ import annotations

import pytest
from helpers.sign import scores, windows  # noqa: F401 (fixtures)

import wnb
import wnb.core
import wnb.core.inference

# ---------------------------------------------------------------- the clamp






@pytest.mark.integration
def test_bundled_model_study_and_surprisal(bundled, bundled_windows):
    """The whole path on SmolLM2 (a SiLU Llama): three gate_proj layers, a few short windows."""
    calib, held_out = bundled_windows[0][:4, :64], bundled_windows[1][:4, :64]
    layers = wnb.first_ffn_layers(bundled)[:3]
    scores = wnb.wasserstein_scores(bundled, calib, layers, progress=False)
    table = wnb.sign_ablation_study(bundled, None, held_out, scores=scores, seeds=(0,), progress=False)
    assert list(table["selection"]) == ["dense", "wasserstein", "mirror", "random", "matched"]
    assert table.iloc[1]["n_neurons"] == table.iloc[2]["n_neurons"] == table.iloc[3]["n_neurons"] == 3 * 15  # 1% of 1,536
    assert list(table["side"][1:3]) == ["negative", "positive"]
    m = table.iloc[-1]
    assert m["within_tolerance"] or "candidates" in m["note"]
    matched = wnb.select_matched(wnb.matched_candidates(scores, seed=0), m["per_layer"])
    top = wnb.select_wasserstein(scores, 0.01)
    assert all(not set(matched[n].tolist()) & set(top[n].tolist()) for n in layers)
    surprisal = wnb.token_surprisal(bundled, held_out, top, progress=False)
    classes = set(surprisal["token_class"])
    assert {"determiner", "preposition", "content", "punctuation"} <= classes
    assert surprisal.loc[surprisal.token.str.strip().str.lower() == "the", "token_class"].eq("determiner").all()
