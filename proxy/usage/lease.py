"""Calls and tokens leased from a shared ledger in chunks: one round trip for many calls.

Measured (bench/shared_store.py, docs/benchmarks.md): a budget reservation and a rate-limit
take cost a covered call about 190 µs of proxy CPU with Redis (two scripts, each a round trip
through redis-py) and 140 µs with SQLite (two transactions on the store's thread), against
about 125 µs for the whole small request: far over the 5 % issue 17 allows. So a process
takes several calls (or tokens) at once and spends them from memory:

- a lease takes at most 1/``LEASE_SHARE`` of what is left in the tightest pool or bucket, and
  at most ``MOST``: near the end of a budget (under 200 calls left) every lease is one call,
  so budgets stay exact where it matters ("3 of 8 calls pass" with 3 left), and no process
  ever holds more than 1 % of what the others could still use;
- calls of a budget lease not used within ``IDLE`` seconds go back to the shared counter (the
  usage flush task sweeps every interval), and all of them at shutdown, so an idle replica
  keeps nothing from the others for long; a crash loses at most its lease (never overspends);
- rate tokens are usable for ``TOKEN_TTL`` seconds after their lease, then dropped (a rate
  is about time: an old token is not given back). So that a quiet process does not drop most
  of each lease, a token lease is sized by what this process used of its last one: doubled
  when it was used up, cut to what was used when it expired (a process making one call a
  second leases one or two tokens at a time).

Reservations are never more than the shared counters allow: a lease is counted there when it
is taken. What a lease changes is when another process is refused: while one holds unused
calls of the last 1 %, at most ``IDLE`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.usage.store import Bucket, Ledger

MOST = 64  # calls or tokens one lease may hold
IDLE = 1.0  # seconds an unused budget lease is kept
TOKEN_TTL = 1.0  # seconds leased rate tokens stay usable


@dataclass(slots=True)
class _Lease:
    left: int  # leased, not yet handed out
    values: list[int]  # the pools' counters once this lease was taken
    at: float  # when it was last used


class Leases:
    """A shared ``Ledger`` whose calls and tokens this process takes in chunks (a Ledger too)."""

    def __init__(self, ledger: Ledger, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ledger = ledger
        self._clock = clock
        self._calls: dict[tuple[str, ...], _Lease] = {}
        # keys -> (left, taken at, size of that lease)
        self._tokens: dict[tuple[str, ...], tuple[int, float, int]] = {}

    async def reserve(
        self, keys: Sequence[str], limits: Sequence[int], ttl: int, most: int = MOST
    ) -> list[int]:
        key = tuple(keys)
        lease = self._calls.get(key)
        if lease is None or lease.left == 0:
            answer = await self.ledger.reserve(keys, limits, ttl, most)
            if answer[0] < 0:
                return answer
            lease = self._add(key, answer[0], answer[1:])  # another call may have leased too
        lease.left -= 1
        lease.at = self._clock()
        return [1, *(value - lease.left for value in lease.values)]

    async def release(self, keys: Sequence[str], count: int = 1) -> None:
        lease = self._calls.get(tuple(keys))
        if lease is not None:
            lease.left += count  # back into this process's lease, given back with it
        else:
            await self.ledger.release(keys, count)

    async def seed(self, key: str, value: int, ttl: int) -> None:
        await self.ledger.seed(key, value, ttl)

    async def peek(self, keys: Sequence[str]) -> list[int]:
        return await self.ledger.peek(keys)

    async def take(self, buckets: Sequence[Bucket], most: int = MOST) -> tuple[int, float]:
        key = tuple(bucket.key for bucket in buckets)
        now = self._clock()
        left, at, size = self._tokens.get(key, (0, 0.0, 0))
        if left == 0 or now - at > TOKEN_TTL:
            size = token_lease_size(size, left, most)
            left, wait = await self.ledger.take(buckets, size)
            if left == 0:
                return 0, wait
            at = now
        self._tokens[key] = (left - 1, at, size)
        return 1, 0.0

    async def give_back(self, idle: float = IDLE) -> None:
        """Return the calls of budget leases unused for ``idle`` seconds (0: all of them); a
        failed return (the store is down) keeps them for the next try."""
        now = self._clock()
        for key, lease in list(self._calls.items()):
            if now - lease.at < idle:
                continue
            del self._calls[key]  # detached first: no call can spend what is being returned
            if not lease.left:
                continue
            try:
                await self.ledger.release(key, lease.left)
            except Exception:
                self._add(key, lease.left, lease.values)
                raise

    def _add(self, key: tuple[str, ...], count: int, values: list[int]) -> _Lease:
        """``count`` more leased calls for ``key``, into the lease it has or a new one."""
        lease = self._calls.get(key)
        if lease is None:
            lease = self._calls[key] = _Lease(0, values, self._clock())
        lease.left += count
        lease.values = max(lease.values, values)
        return lease


def token_lease_size(last: int, unused: int, most: int) -> int:
    """The next token lease's size after one of ``last`` tokens that ended with ``unused``
    (expired): what was used then; doubled after one used up; 1 to begin with."""
    if last == 0:
        return 1
    if unused:
        return max(1, last - unused)
    return min(most, 2 * last)
