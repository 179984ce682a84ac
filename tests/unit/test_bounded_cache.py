"""BoundedCache: remembered answers never grow past their limit."""

from __future__ import annotations

from proxy.bounded_cache import BoundedCache


def test_remember_returns_the_value_and_keeps_it() -> None:
    cache: BoundedCache[str, int] = BoundedCache(4)
    assert cache.remember("a", 1) == 1
    assert cache.get("a") == 1


def test_a_full_cache_forgets_everything_before_remembering_more() -> None:
    cache: BoundedCache[int, int] = BoundedCache(3)
    for i in range(3):
        cache.remember(i, i)
    cache.remember(99, 99)
    assert dict(cache) == {99: 99}


def test_endless_distinct_keys_never_pass_the_limit() -> None:
    cache: BoundedCache[int, bool] = BoundedCache(8)
    for i in range(1000):
        cache.remember(i, True)
        assert len(cache) <= 8
