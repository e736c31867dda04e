"""Cutting work into groups that fit: the greedy grouping by bytes that capture and the one-pass reader share."""
from __future__ import annotations

import random

import pytest

import wnb
from wnb.core.memory import group_by_bytes
from wnb.tracing.capture import estimate_bytes, split_by_memory


def _check(groups, items, size, limit):
    assert [i for g in groups for i in g] == list(items)  # every item once, in order
    for g in groups:
        assert g and (sum(map(size, g)) <= limit or len(g) == 1)  # fits, or one item too large alone
    for before, after in zip(groups, groups[1:]):
        assert sum(map(size, before)) + size(after[0]) > limit  # greedy: the next item did not fit


@pytest.mark.parametrize("seed", range(20))
def test_groups_fit_in_order_and_greedily(seed):
    rng = random.Random(seed)
    items = [rng.randint(1, 60) for _ in range(rng.randint(0, 30))]
    limit = rng.randint(10, 100)
    groups = group_by_bytes(items, lambda x: x, limit)
    if not items:
        assert groups == [[]]
    else:
        _check(groups, items, lambda x: x, limit)


def test_split_by_memory_groups_layers_by_their_capture(tiny_llama):
    layers = wnb.ffn_layers(tiny_llama)
    size = lambda name: estimate_bytes(tiny_llama, [name], 1000, False, True)  # noqa: E731
    for limit in (1, size(layers[0]) * 2, size(layers[0]) * 4, 10**12):
        _check(split_by_memory(tiny_llama, layers, 1000, limit), layers, size, limit)
    assert split_by_memory(tiny_llama, layers, 1000, 10**12) == [layers]
