"""Budgets and rate limits without sockets: periods, pools, reservations, token buckets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from proxy.errors import BudgetExhausted, RateLimited
from proxy.settings import Settings
from proxy.usage.budgets import Limits, MemoryLedger, period_bounds, used_by
from proxy.usage.rules import Budget, RateLimit
from proxy.usage.store import Row


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_periods_are_utc_days_and_months_including_year_end() -> None:
    start, end = period_bounds("day", ts("2026-12-31T23:59:59"))
    assert (start.isoformat(), end.isoformat()) == (
        "2026-12-31T00:00:00+00:00",
        "2027-01-01T00:00:00+00:00",
    )
    start, end = period_bounds("month", ts("2026-12-31T23:59:59"))
    assert (start.isoformat(), end.isoformat()) == (
        "2026-12-01T00:00:00+00:00",
        "2027-01-01T00:00:00+00:00",
    )
    assert period_bounds("month", ts("2028-02-29T12:00:00"))[1].isoformat().startswith("2028-03-01")


def test_wildcards_make_one_pool() -> None:
    rows = [Row("ci", "words", "api", 3, 0), Row("web", "cells", "storage", 4, 1)]
    assert used_by(Budget(client="*", product="*", calls=10), rows) == 7
    assert used_by(Budget(client="ci", product="*", calls=10), rows) == 3
    assert used_by(Budget(client="*", product="cells", calls=10), rows) == 4
    assert used_by(Budget(client="web", product="words", calls=10), rows) == 0


async def test_exhausted_budget_says_seconds_until_the_period_resets() -> None:
    clock = Clock(ts("2026-11-30T23:00:00"))
    limits = Limits([Budget(client="ci", period="day", calls=1)], [], None, clock=clock)
    await limits.reserve("ci", "words")
    with pytest.raises(BudgetExhausted) as refused:
        await limits.reserve("ci", "pdf")
    assert refused.value.retry_after == 3600
    assert refused.value.status == 429
    assert refused.value.code == "budget_exhausted"
    clock.now = ts("2026-12-01T00:00:01")  # a new day: a new pool
    await limits.reserve("ci", "words")


async def test_a_call_is_reserved_in_every_pool_or_in_none() -> None:
    budgets = [Budget(client="ci", calls=5), Budget(client="*", product="words", calls=1)]
    ledger = MemoryLedger()
    limits = Limits(budgets, [], ledger)
    await limits.reserve("ci", "words")
    with pytest.raises(BudgetExhausted):
        await limits.reserve("ci", "words")
    await limits.reserve("ci", "cells")  # the words pool is full, ci's own is not
    ci_key = limits.key(budgets[0], limits._clock())[0]
    assert ledger._values[ci_key] == 2  # the refused call took nothing from ci's pool


async def test_no_budget_no_reservation() -> None:
    limits = Limits([Budget(client="ci", calls=0)], [], None)
    assert await limits.reserve("web", "words") == ()
    assert not Limits([], [], None).active


async def test_warning_once_when_a_budget_passes_80_percent() -> None:
    limits = Limits([Budget(client="*", product="*", period="day", calls=10)], [], None)
    with capture_logs() as logs:
        for _ in range(10):
            await limits.reserve("ci", "words")
    warnings = [e for e in logs if e["event"] == "budget passed 80%"]
    assert len(warnings) == 1
    assert warnings[0]["used"] == 8
    assert warnings[0]["log_level"] == "warning"


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    clock = Clock(100.0)
    limits = Limits([], [RateLimit(client="ci", per_second=2, burst=3)], None, monotonic=clock)
    for _ in range(3):
        limits.check_rate("ci")
    with pytest.raises(RateLimited) as refused:
        limits.check_rate("ci")
    assert refused.value.retry_after == pytest.approx(0.5)
    limits.check_rate("web")  # another client has no rule
    clock.now += 0.5
    limits.check_rate("ci")


def test_wildcard_rate_limit_is_one_shared_bucket() -> None:
    clock = Clock(0.0)
    limits = Limits([], [RateLimit(client="*", per_second=1, burst=2)], None, monotonic=clock)
    limits.check_rate("a")
    limits.check_rate("b")
    with pytest.raises(RateLimited):
        limits.check_rate("c")


def test_a_refused_request_takes_no_token_from_the_other_bucket() -> None:
    clock = Clock(0.0)
    rules = [
        RateLimit(client="ci", per_second=1, burst=5),
        RateLimit(client="*", per_second=1, burst=1),
    ]
    limits = Limits([], rules, None, monotonic=clock)
    limits.check_rate("ci")
    with pytest.raises(RateLimited):
        limits.check_rate("ci")
    assert limits._rule_buckets[rules[0]].tokens == 4


def test_budget_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="unknown product 'wrods'"):
        Budget(client="ci", product="wrods", calls=1)
    with pytest.raises(ValidationError):
        Budget(client="ci", period="week", calls=1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Budget(client="ci", calls=-1)
    assert RateLimit(client="ci", per_second=2.5).burst == 3


def test_store_urls_are_validated_and_a_password_stays_out_of_them() -> None:
    assert Settings(usage_store="OFF").usage_store == "off"
    assert Settings(usage_store="redis://cache:6379/2").usage_store == "redis://cache:6379/2"
    with pytest.raises(ValidationError, match="usage_store_password"):
        Settings(usage_store="redis://:hunter2@cache:6379/0")
    with pytest.raises(ValidationError, match="absolute"):
        Settings(usage_store="sqlite://relative.db")
    with pytest.raises(ValidationError, match="must be off"):
        Settings(usage_store="postgres://db")


def test_default_store_is_under_the_users_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert Settings().usage_store == "sqlite:///srv/state/aspose-proxy/usage.db"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/ana")
    assert Settings().usage_store == "sqlite:///home/ana/.local/state/aspose-proxy/usage.db"


def test_budgets_come_as_json_from_env_and_flags() -> None:
    settings = Settings(budgets='[{"client": "*", "product": "pdf", "period": "day", "calls": 9}]')
    assert settings.budgets == [Budget(client="*", product="pdf", period="day", calls=9)]
