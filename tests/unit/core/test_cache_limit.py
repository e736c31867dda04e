"""The cache's size limit ($WNB_CACHE_MAX_BYTES): least recently used entries go first, reads count as use,
entries in use, the one just written, temporaries, models/ and tasks/ are never removed, and a result
larger than the limit is returned without being stored."""
import os
import time

import pytest
import torch

from wnb.core import cache, codec, eviction, files
from wnb.errors import WnbError

HOUR_NS = 3600 * 10**9


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WNB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def value(name: str) -> torch.Tensor:
    return torch.full((256,), float(ord(name)))  # every entry the same size


def use(name: str, computed: list) -> torch.Tensor:
    """Read entry ``name`` (or compute and write it): one use."""
    time.sleep(0.002)  # distinct modification times even on coarse clocks
    return cache.cached("blob", cache.key(name=name), lambda: computed.append(name) or value(name))


def stored(root) -> set[str]:
    names = set()
    for path in (root / "blob").glob(f"*{codec.SUFFIX}"):
        back = codec.read_entry(path, "blob", path.name[:-len(codec.SUFFIX)])
        names.add(chr(int(back[0])))
    return names


def entry_size(root, monkeypatch) -> int:
    monkeypatch.setenv(eviction.MAX_BYTES_ENV, "0")
    cache.cached("probe", cache.key(name="p"), lambda: value("p"))
    path = cache.entry_path("probe", cache.key(name="p"))
    size = path.stat().st_size
    path.unlink()
    return size


def test_least_recently_used_entries_go_first(fresh_cache, monkeypatch):
    size = entry_size(fresh_cache, monkeypatch)
    capacity = 3
    monkeypatch.setenv(eviction.MAX_BYTES_ENV, str(int((capacity + 0.5) * size)))
    monkeypatch.setattr(eviction, "IN_USE_SECONDS", 0)  # every entry evictable at once: order alone decides
    # the expectation, kept independently: a list of names from least to most recently used
    order: list[str] = []
    computed: list[str] = []
    for name in "abcadcebfad":
        use(name, computed)
        if name in order:
            order.remove(name)
        order.append(name)
        while len(order) > capacity:
            order.pop(0)
        assert stored(fresh_cache) == set(order), f"after using {name}"
    # a, b, c written; a read; d written (b out); c read; e written (a out); b again (computed anew, d out),
    # f written (c out), a again (computed anew, e out), d again (computed anew, b out)
    assert computed == list("abcdebfad")
    assert stored(fresh_cache) == {"f", "a", "d"}


def test_an_entry_in_use_is_never_evicted(fresh_cache, monkeypatch):
    size = entry_size(fresh_cache, monkeypatch)
    monkeypatch.setenv(eviction.MAX_BYTES_ENV, str(int(1.5 * size)))
    computed: list[str] = []
    for name in "abc":
        use(name, computed)
    # all three were used within IN_USE_SECONDS: the cache stays above its limit rather than remove one
    assert stored(fresh_cache) == {"a", "b", "c"}
    for path in (fresh_cache / "blob").iterdir():  # an hour ago
        old = path.stat().st_mtime_ns - HOUR_NS
        os.utime(path, ns=(old, old))
    use("a", computed)  # a read: in use again
    use("d", computed)  # over the limit: b and c go, a (read just now) and d (just written) stay
    assert computed == list("abcd")
    assert stored(fresh_cache) == {"a", "d"}


def test_models_tasks_and_temporaries_are_neither_counted_nor_evicted(fresh_cache, monkeypatch):
    size = entry_size(fresh_cache, monkeypatch)
    monkeypatch.setenv(eviction.MAX_BYTES_ENV, str(int(2.5 * size)))
    monkeypatch.setattr(eviction, "IN_USE_SECONDS", 0)
    big = b"\0" * (10 * size)
    others = [fresh_cache / "models" / "SmolLM2-float32" / f"model{codec.SUFFIX}",
              fresh_cache / "tasks" / "agreement-n10-seed0" / f"data{codec.SUFFIX}",
              fresh_cache / "blob" / f"{files.TMP_PREFIX}123.k{codec.SUFFIX}.x" / f"k{codec.SUFFIX}"]
    for path in others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(big)
        os.utime(path, ns=(0, 0))  # older than any entry
    computed: list[str] = []
    for name in "abc":
        use(name, computed)
    assert stored(fresh_cache) == {"b", "c"}  # only a went: the big files are not counted
    assert all(path.read_bytes() == big for path in others)


def test_a_result_larger_than_the_limit_is_returned_not_stored(fresh_cache, monkeypatch):
    monkeypatch.setenv(eviction.MAX_BYTES_ENV, "4K")
    k = cache.key(name="big")
    with pytest.warns(cache.CacheWarning, match=r"larger than the cache's limit \(4\.0 KiB"):
        back = cache.cached("blob", k, lambda: torch.ones(2048))
    assert torch.equal(back, torch.ones(2048))
    assert not cache.entry_path("blob", k).exists()
    small = cache.cached("blob", cache.key(name="small"), lambda: torch.ones(16))  # still stored
    assert cache.entry_path("blob", cache.key(name="small")).exists() and small.sum() == 16


def test_entries_removed_by_another_process_meanwhile_are_tolerated(fresh_cache, monkeypatch):
    size = entry_size(fresh_cache, monkeypatch)
    monkeypatch.setenv(eviction.MAX_BYTES_ENV, str(int(2.5 * size)))
    monkeypatch.setattr(eviction, "IN_USE_SECONDS", 0)
    computed: list[str] = []
    for name in "ab":
        use(name, computed)
    scan = eviction._entries

    def scan_then_vanish(root):
        found = scan(root)
        cache.entry_path("blob", cache.key(name="a")).unlink()  # another kernel evicts a first
        return found

    monkeypatch.setattr(eviction, "_entries", scan_then_vanish)
    use("c", computed)
    assert stored(fresh_cache) == {"b", "c"}  # a's size counted as freed: b is kept


@pytest.mark.parametrize("text, expected", [("10G", 10 << 30), ("500MiB", 500 << 20), ("2147483648", 2 << 30),
                                            ("1.5 GB", 3 << 29), ("0", None), ("", eviction.DEFAULT_MAX_BYTES)])
def test_limit_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv(eviction.MAX_BYTES_ENV, text)
    assert eviction.max_bytes() == expected


def test_a_bad_limit_is_refused_before_the_work(fresh_cache, monkeypatch):
    monkeypatch.setenv(eviction.MAX_BYTES_ENV, "ten gigabytes")
    with pytest.raises(WnbError, match="WNB_CACHE_MAX_BYTES must be a size such as 10G"):
        cache.cached("blob", cache.key(name="x"), lambda: pytest.fail("computed despite a bad limit"))
