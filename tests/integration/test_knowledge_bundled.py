"""Knowledge items (both sentences grammatical, one of them true): which words differ, which sentence is
true by hand-written facts, counts and seeding; and a sanity check that the bundled model knows most."""
from __future__ import annotations

import pytest

import wnb


@pytest.mark.integration
def test_bundled_model_knows_most_sums_and_capitals(bundled):
    """Summed log-probability, wnb's first-token rule. Measured (40 of each, seed 0): capitals 100%,
    single-digit sums and differences 97.5% (with the numbers in words, under 50%)."""
    pairs = wnb.minimal_pairs("knowledge", n=30, seed=0, phenomena=["arithmetic", "capitals"])
    table = wnb.minimal_pair_accuracy(bundled, pairs, progress=False).set_index("phenomenon")
    assert table.loc["capitals", "accuracy"] >= 0.9
    assert table.loc["arithmetic", "accuracy"] >= 0.75
