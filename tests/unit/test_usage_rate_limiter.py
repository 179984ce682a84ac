"""Rate limits without sockets: token buckets per rule."""

from __future__ import annotations

import pytest

from proxy.errors import RateLimited
from proxy.usage.rate_limiter import RateLimiter
from proxy.usage.rules import RateLimit
from tests.fake_clock import FakeClock


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    clock = FakeClock(100.0)
    limiter = RateLimiter([RateLimit(client="ci", per_second=2, burst=3)], monotonic=clock)
    for _ in range(3):
        limiter.check("ci")
    with pytest.raises(RateLimited) as refused:
        limiter.check("ci")
    assert refused.value.retry_after == pytest.approx(0.5)
    limiter.check("web")  # another client has no rule
    clock.now += 0.5
    limiter.check("ci")


def test_wildcard_rate_limit_is_one_shared_bucket() -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter([RateLimit(client="*", per_second=1, burst=2)], monotonic=clock)
    limiter.check("a")
    limiter.check("b")
    with pytest.raises(RateLimited):
        limiter.check("c")


def test_a_refused_request_takes_no_token_from_the_other_bucket() -> None:
    clock = FakeClock(0.0)
    rules = [
        RateLimit(client="ci", per_second=1, burst=5),
        RateLimit(client="*", per_second=1, burst=1),
    ]
    limiter = RateLimiter(rules, monotonic=clock)
    limiter.check("ci")
    with pytest.raises(RateLimited):
        limiter.check("ci")
    assert limiter._rule_buckets[rules[0]].tokens == 4
