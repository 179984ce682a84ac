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


# A lease (proxy/usage/lease.py) takes at most this share of what is left in the tightest pool
# or bucket, so near the end of a budget every process takes one call at a time (exact), and
# a process never holds more than 1 % of what the others could still use. Redis's scripts
# repeat this rule in Lua.
LEASE_SHARE = 100


def app_key(application: str, key: str) -> str:
    """``key`` of one application's ledger (issue 17): two applications sharing a store never
    share a budget or a rate bucket. ``application`` is ``token_fingerprints.client_digest``
    of its client_id ('' for none: the key as it was named before, the "legacy" key that a
    missing counter starts from once, so an upgrade mid-period does not refill a budget)."""
    return f"app:{application}:{key}" if application else key


# The application of a store opened for a report of every application's counts (the ``usage``
# command with no client_id set); never a fingerprint (those are hex), never for a ledger.
EVERY_APPLICATION = "*"


def lease_size(room: float, most: int) -> int:
    """How many of ``room`` (>= 1) calls or tokens one lease takes: 1 to ``most``."""
    return max(1, min(most, int(room // LEASE_SHARE)))


def lease_of(values: Sequence[int], limits: Sequence[int], most: int) -> int:
    """How many calls a reservation adds to pools now at ``values`` of ``limits``; or
    ``-1 - index`` of the first pool that is full."""
    for index, (value, limit) in enumerate(zip(values, limits, strict=True)):
        if value + 1 > limit:
            return -1 - index
    return lease_size(min(lim - v for v, lim in zip(values, limits, strict=True)), most)


def taken(buckets: Sequence[Bucket], levels: Sequence[float], most: int) -> tuple[int, float]:
    """What a take gets from buckets at ``levels``: ``(n, 0.0)``, or ``(0, seconds until the
    short bucket has a token)``."""
    short = [b.wait(lv) for b, lv in zip(buckets, levels, strict=True) if lv < 1]
    if short:
        return 0, min(short)
    return lease_size(min(levels), most), 0.0


class Ledger(Protocol):
    """Budget counters: one per budget and period, reserved before a call, given back after."""

    async def reserve(
        self, keys: Sequence[str], limits: Sequence[int], ttl: int, most: int = 1
    ) -> list[int]:
        """Add n to every key if each stays within its limit, atomically: n is 1, or with
        ``most`` > 1 up to ``most`` (``lease_size`` of the tightest pool's room: a lease).

        Returns ``[n, *new values]``; or, when a key is at its limit, ``[-1 - index]`` of that
        key (nothing is added then).
        """
        ...

    async def release(self, keys: Sequence[str], count: int = 1) -> None:
        """Give back ``count`` reserved calls whose requests never left the proxy."""
        ...

    async def seed(self, key: str, value: int, ttl: int) -> None:
        """Start a counter at ``value`` (calls already counted) unless it exists."""
        ...

    async def peek(self, keys: Sequence[str]) -> list[int]:
        """The counters' values (0 for a missing one), changing nothing."""
        ...

    async def take(self, buckets: Sequence[Bucket], most: int = 1) -> tuple[int, float]:
        """Take n tokens from every bucket, atomically (n as for ``reserve``): ``(n, 0.0)``;
        or, when one is short, nothing is taken: ``(0, seconds until it has a token)``."""
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
