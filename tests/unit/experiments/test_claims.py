"""The claims registry, the runner on a tiny model (every claim reaches a verdict or says why it did not run),
the comparable flag, and the page (escaped, self-contained)."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_word_llama

from wnb.app.claims_page import claims_page
from wnb.errors import WnbError
from wnb.experiments.claim_runner import (
    ClaimPlan,
    claims_frame,
    differences,
    run_claims,
)
from wnb.experiments.claims import (
    CLAIMS,
    IDS,
    KONG,
    SAWMYA,
    VERDICTS,
    check_only,
    claim,
)

TINY = ClaimPlan("tiny", n_boot=3, pair_seeds=2, n_pairs=200, ablation_blocks=1, experts=(2,), n_init=1,
                 random_partitions=2, control_seeds=1, pairs_per_phenomenon=2, knowledge_per_phenomenon=2,
                 depth_layers=None)


def test_the_registry_holds_both_papers_claims_with_their_rules():
    assert IDS == ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "N1", "N2", "N3", "N4", "N5", "N6")
    for entry in CLAIMS:
        assert entry.paper in (SAWMYA, KONG) and entry.direction in ("greater", "less")
        assert entry.minimum > 0 and entry.claim and entry.computation and entry.statistic and entry.paper_value
        assert ("above" if entry.direction == "greater" else "below") in entry.rule
        assert f"{entry.minimum:g}" in entry.rule
    assert "random-partition" in claim("W6").statistic  # the sample-size correction is part of the claim's rule
    assert check_only(["n2", "W3"]) == ["W3", "N2"] and check_only(None) == list(IDS)
    with pytest.raises(WnbError, match="choose from W1"):
        check_only(["W9"])


def test_differences_name_every_setting_that_is_not_the_papers():
    paper = {"model": "EleutherAI/pythia-1.4b-deduped", "corpus": "wikitext2", "seq_len": 2048,
             "calibration windows": 128, "layers": "every FFN layer", "sparsity": 0.9, "fraction": 0.03}
    assert differences(claim("W3"), paper) == []
    ours = {**paper, "model": "tiny", "seq_len": 128}
    assert differences(claim("W3"), ours) == ["model: tiny (paper: EleutherAI/pythia-1.4b-deduped)",
                                             "seq_len: 128 (paper: 2048)"]
    kong = {"model": "meta-llama/Llama-3.1-8B", "corpus": "wikitext2", "seq_len": 2048, "calibration windows": 256,
            "fraction": 0.01}
    assert differences(claim("N2"), kong) == []  # any model of the follow-up's families


@pytest.fixture(scope="module")
def rows():
    lm = tiny_word_llama(layers=3)
    gen = torch.Generator().manual_seed(0)
    calib = torch.randint(3, len(lm.tokenizer), (8, 16), generator=gen)
    held = torch.randint(3, len(lm.tokenizer), (4, 16), generator=gen)
    return run_claims(lm, calib, held, budget=TINY, progress=False, corpus="random tokens")


def test_every_claim_gets_a_verdict_or_a_reason(rows):
    assert [r["id"] for r in rows] == list(IDS)
    for row in rows:
        assert row["verdict"] in VERDICTS, row
        if row["verdict"] == "not run":
            assert row["reason"]
        else:
            assert row["low"] <= row["value"] <= row["high"] or math.isclose(row["low"], row["high"]), row
            assert set(row["detail"].columns) >= {"label", "value", "low", "high"}
        assert row["comparable"] is False and any(d.startswith("corpus: random tokens") for d in row["differs"])
        # a Llama is of the follow-up's families, not the first paper's model
        assert any(d.startswith("model: tiny-word-llama") for d in row["differs"]) == (row["paper"] == SAWMYA)
    ran = {r["id"] for r in rows if r["verdict"] != "not run"}
    assert {"W1", "W2", "W3", "W4", "N1", "N2", "N3"} <= ran


def test_the_flat_table_and_the_page(rows):
    table = claims_frame(rows)
    assert list(table["id"]) == list(IDS) and "detail" not in table and "differs" in table
    rows = [dict(rows[0], ours="<script>alert(1)</script>")] + rows[1:]
    page = claims_page(rows, "Does it hold on <tiny>?", "a & b")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;tiny&gt;" in page
    assert "http://" not in page and "https://" not in page and "src='http" not in page
    assert page.count("data:image/png;base64,") == sum(r["verdict"] != "not run" for r in rows)
    for entry in CLAIMS:
        assert f"id='{entry.id}'" in page and entry.rule in page.replace("&#x27;", "'")
