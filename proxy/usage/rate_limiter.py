"""Rate limits (``rate_limits``): a token bucket per rule, a call takes one from each that applies.

Built once from the rules (a SIGHUP builds a new one). The buckets live in the store's ledger
when it is shared, one bucket per rule for every process using it (issue 17): SQLite, one
transaction per check (every process on the host); Redis, one Lua script (every replica).
Without a shared ledger (``usage_store = "off"``) they live in this process. A store that
cannot be reached fails closed, as for budgets: 503 ``usage_store_unavailable``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from proxy.errors import RateLimited
from proxy.usage.memory import MemoryLedger
from proxy.usage.outage import Outage
from proxy.usage.rules import RateLimit, applies
from proxy.usage.store import Bucket, Ledger


def bucket_of(rule: RateLimit) -> Bucket:
    """The one bucket of ``rule``, named by it (client last: it may hold any character)."""
    return Bucket(
        f"rate:{rule.per_second!r}:{rule.burst}:{rule.client}", rule.per_second, rule.burst
    )


class RateLimiter:
    """The rate-limit rules in force and the check made before forwarding."""

    def __init__(
        self,
        rules: Sequence[RateLimit],
        ledger: Ledger | None = None,
        *,
        outage: Outage | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rules = tuple(dict.fromkeys(rules))
        self.active = bool(self.rules)
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger(monotonic)
        self.outage = outage or Outage()
        self._buckets: dict[str, tuple[tuple[Bucket, ...], str]] = {}

    def _for(self, client: str) -> tuple[tuple[Bucket, ...], str]:
        """The buckets ``client`` takes from, and how its limits read in a refusal."""
        found = self._buckets.get(client)
        if found is None:
            rules = [rule for rule in self.rules if applies(rule, client)]
            described = "; ".join(
                f"{rule.per_second:g} calls per second, bursts of {rule.burst}" for rule in rules
            )
            found = self._buckets[client] = (tuple(map(bucket_of, rules)), described)
        return found

    async def check(self, client: str) -> None:
        """Take a token from each bucket that applies to ``client``, or raise ``RateLimited``."""
        buckets, described = self._for(client)
        if not buckets:
            return
        try:
            _, wait = await self.ledger.take(buckets)
        except Exception as exc:
            raise self.outage.failed(exc) from None
        if self.outage.down:
            self.outage.answered()
        if wait:
            raise RateLimited(
                f"Client '{client}' is over its rate limit ({described}).", retry_after=wait
            )
