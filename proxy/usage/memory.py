"""The in-process engine: ``usage_store = "off"`` keeps counts here, and a store without a
shared ledger counts its budgets and rate limits here (per process, seeded at start)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from proxy.usage.store import Batch, Bucket, Ledger, Row, lease_of, merge, taken, three


class MemoryStore:
    """``usage_store = "off"``: counts live in this process only and are gone at exit."""

    description = "off (this process's memory only)"

    def __init__(self) -> None:
        self._hours: dict[tuple[int, str, str, str], tuple[int, int, int]] = {}

    @property
    def ledger(self) -> Ledger | None:
        return None

    async def open(self) -> None:
        pass

    async def add(self, batch: Batch) -> None:
        for key, counts in batch.items():
            calls, errors, cached = three(counts)
            before = self._hours.get(key, (0, 0, 0))
            self._hours[key] = (before[0] + calls, before[1] + errors, before[2] + cached)

    async def rows(self, since_hour: int) -> list[Row]:
        rows = [Row(k[1], k[2], k[3], *v) for k, v in self._hours.items() if k[0] >= since_hour]
        return merge(rows, {})

    async def close(self) -> None:
        pass


class MemoryLedger:
    """Budget counters of this process (stores without a shared ledger)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._values: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, stamp)
        self._monotonic = monotonic

    async def reserve(
        self, keys: Sequence[str], limits: Sequence[int], ttl: int, most: int = 1
    ) -> list[int]:
        values = [self._values.get(key, 0) for key in keys]
        n = lease_of(values, limits, most)
        if n < 0:
            return [n]
        for key, value in zip(keys, values, strict=True):
            self._values[key] = value + n
        return [n, *(value + n for value in values)]

    async def release(self, keys: Sequence[str], count: int = 1) -> None:
        for key in keys:
            self._values[key] = max(0, self._values.get(key, 0) - count)

    async def seed(self, key: str, value: int, ttl: int) -> None:
        self._values.setdefault(key, value)

    async def peek(self, keys: Sequence[str]) -> list[int]:
        return [self._values.get(key, 0) for key in keys]

    async def take(self, buckets: Sequence[Bucket], most: int = 1) -> tuple[int, float]:
        now = self._monotonic()
        levels = [bucket.level(self._buckets.get(bucket.key), now) for bucket in buckets]
        n, wait = taken(buckets, levels, most)
        if n == 0:
            return 0, wait
        for bucket, level in zip(buckets, levels, strict=True):
            self._buckets[bucket.key] = (level - n, now)
        return n, 0.0
