"""Rate limits without sockets: token buckets per rule."""

from __future__ import annotations

import pytest

from proxy.errors import RateLimited
from proxy.usage.rate_limiter import RateLimiter
from proxy.usage.rules import RateLimit
from tests.fake_clock import FakeClock


async def test_token_bucket_allows_bursts_then_the_rate() -> None:
    clock = FakeClock(100.0)
    limiter = RateLimiter([RateLimit(client="ci", per_second=2, burst=3)], monotonic=clock)
    for _ in range(3):
        await limiter.check("ci")
    with pytest.raises(RateLimited) as refused:
        await limiter.check("ci")
    assert refused.value.retry_after == pytest.approx(0.5)
    await limiter.check("web")  # another client has no rule
    clock.now += 0.5
    await limiter.check("ci")


async def test_wildcard_rate_limit_is_one_shared_bucket() -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter([RateLimit(client="*", per_second=1, burst=2)], monotonic=clock)
    await limiter.check("a")
    await limiter.check("b")
    with pytest.raises(RateLimited):
        await limiter.check("c")


async def test_a_refused_request_takes_no_token_from_the_other_bucket() -> None:
    clock = FakeClock(0.0)
    ci_rule = RateLimit(client="ci", per_second=1, burst=5)
    limiter = RateLimiter([ci_rule, RateLimit(client="*", per_second=1, burst=1)], monotonic=clock)
    await limiter.check("ci")
    with pytest.raises(RateLimited):
        await limiter.check("ci")  # the shared bucket is empty
    # ci's own bucket, seen through the same ledger: 4 of 5 left, not 3.
    ci_only = RateLimiter([ci_rule], limiter.ledger)
    for _ in range(4):
        await ci_only.check("ci")
    with pytest.raises(RateLimited):
        await ci_only.check("ci")
