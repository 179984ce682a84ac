"""The interface of the usage stores: the ``UsageStore`` and ``Ledger`` Protocols and the values
they exchange. Every engine (memory.py, sqlite.py, redis.py) imports this module and nothing
else of the package; ``factory.open_store(url)`` picks one.

A store keeps call counts per UTC hour per (client, product, kind): enough for day and month
views and small forever. A store whose counters several processes share (SQLite, Redis) also
offers a ``ledger`` for atomic budget reservations; without one, budgets are counted in process
memory.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

# (calls, errors) or (calls, errors, cached): ``cached`` counts the requests the conversion
# cache answered (issue 19), which are not calls.
Counts = tuple[int, int] | tuple[int, int, int]
# (hour since the epoch, client, product, kind) -> counts
Batch = Mapping[tuple[int, str, str, str], Counts]


def three(counts: Counts) -> tuple[int, int, int]:
    """(calls, errors, cached) of either shape."""
    return (counts[0], counts[1], counts[2] if len(counts) > 2 else 0)


def current_hour(now: float | None = None) -> int:
    """Hours since the epoch (UTC): the store's time bucket."""
    return int((time.time() if now is None else now) // 3600)


@dataclass(frozen=True, order=True)
class Row:
    """Calls and errors of one (client, product, kind) over some hours."""

    client: str
    product: str
    kind: str
    calls: int
    errors: int
    cached: int = 0  # answered by the conversion cache: not calls


@dataclass(frozen=True, slots=True)
class Bucket:
    """One rate limit's token bucket: ``rate`` calls a second on average, ``burst`` at once.

    ``key`` names the rule (one bucket per rule for every process sharing the ledger); the
    arithmetic is here once for the memory and SQLite ledgers (Redis runs it in Lua).
    """

    key: str
    rate: float
    burst: float

    @property
    def ttl(self) -> float:
        """Seconds after which an untouched bucket is full again (and may be forgotten)."""
        return self.burst / self.rate + 60

    def level(self, state: tuple[float, float] | None, now: float) -> float:
        """Tokens in the bucket at ``now``, from its stored ``(tokens, stamp)`` (None: full)."""
        if state is None:
            return self.burst
        tokens, stamp = state
        return min(self.burst, tokens + max(0.0, now - stamp) * self.rate)

    def wait(self, level: float) -> float:
        """Seconds until a bucket at ``level`` (< 1) holds a whole token."""
        return (1 - level) / self.rate


class Ledger(Protocol):
    """Budget counters: one per budget and period, reserved before a call, given back after."""

    async def reserve(self, keys: Sequence[str], limits: Sequence[int], ttl: int) -> list[int]:
        """Add one to every key if each stays within its limit, atomically.

        Returns the new values; or, when a key is at its limit, ``[-1 - index]`` of that key
        (nothing is added then).
        """
        ...

    async def release(self, keys: Sequence[str]) -> None:
        """Give back a reservation whose request never left the proxy."""
        ...

    async def seed(self, key: str, value: int, ttl: int) -> None:
        """Start a counter at ``value`` (calls already counted) unless it exists."""
        ...

    async def peek(self, keys: Sequence[str]) -> list[int]:
        """The counters' values (0 for a missing one), changing nothing."""
        ...

    async def take(self, buckets: Sequence[Bucket]) -> float:
        """Take a token from every bucket, atomically: 0.0; or, when one is short, nothing is
        taken and the answer is the seconds until that bucket has a token again."""
        ...


class UsageStore(Protocol):
    """Where the counts live; ``add`` is called off the request path, in batches."""

    description: str  # for logs and the status page: never holds a password

    @property
    def ledger(self) -> Ledger | None: ...

    async def open(self) -> None: ...

    async def add(self, batch: Batch) -> None: ...

    async def rows(self, since_hour: int) -> list[Row]:
        """Calls and errors per (client, product, kind) from ``since_hour`` on."""
        ...

    async def close(self) -> None: ...


def _add(one: tuple[int, int, int], two: tuple[int, int, int]) -> tuple[int, int, int]:
    return (one[0] + two[0], one[1] + two[1], one[2] + two[2])


def merge(rows: Sequence[Row], extra: Mapping[tuple[str, str, str], Counts]) -> list[Row]:
    """``rows`` plus counts not yet written, one row per (client, product, kind), sorted."""
    sums: dict[tuple[str, str, str], tuple[int, int, int]] = {}
    for row in rows:
        key = (row.client, row.product, row.kind)
        sums[key] = _add(sums.get(key, (0, 0, 0)), (row.calls, row.errors, row.cached))
    for key, counts in extra.items():
        sums[key] = _add(sums.get(key, (0, 0, 0)), three(counts))
    return sorted(Row(*key, *value) for key, value in sums.items() if any(value))
