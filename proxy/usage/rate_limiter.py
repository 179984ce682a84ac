"""Rate limits (``rate_limits``): a token bucket per rule, a call takes one from each that applies.

Built once from the rules (a SIGHUP builds a new one). The buckets live in this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from proxy.errors import RateLimited
from proxy.usage.rules import RateLimit, applies


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; a call takes one (per process)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rule: RateLimit, now: float) -> None:
        self.rate = rule.per_second
        self.burst = float(rule.burst)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1:
            self.tokens = tokens - 1
            return 0.0
        self.tokens = tokens
        return (1 - tokens) / self.rate


class RateLimiter:
    """The rate-limit rules in force and the check made before forwarding."""

    def __init__(
        self, rules: Sequence[RateLimit], *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.active = bool(rules)
        self._monotonic = monotonic
        now = monotonic()
        self._rule_buckets = {rule: TokenBucket(rule, now) for rule in dict.fromkeys(rules)}
        self._buckets: dict[str, tuple[TokenBucket, ...]] = {}

    def check(self, client: str) -> None:
        """Take a token from each bucket that applies to ``client``, or raise ``RateLimited``."""
        buckets = self._buckets.get(client)
        if buckets is None:
            buckets = self._buckets[client] = tuple(
                bucket for rule, bucket in self._rule_buckets.items() if applies(rule, client)
            )
        if not buckets:
            return
        now = self._monotonic()
        for index, bucket in enumerate(buckets):
            wait = bucket.take(now)
            if wait:
                for taken in buckets[:index]:
                    taken.tokens += 1  # refused: give back what this request took
                raise RateLimited(
                    f"Client '{client}' is over its rate limit "
                    f"({bucket.rate:g} calls per second, bursts of {bucket.burst:g}).",
                    retry_after=wait,
                )
