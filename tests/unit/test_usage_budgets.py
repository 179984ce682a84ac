"""Budgets without sockets: periods, pools, reservations; the usage settings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from proxy.errors import BudgetExhausted
from proxy.settings import Settings
from proxy.usage.budgets import Budgets, period_bounds, used_by
from proxy.usage.memory import MemoryLedger
from proxy.usage.rules import Budget, RateLimit
from proxy.usage.store import Row
from tests.fake_clock import FakeClock


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


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
    clock = FakeClock(ts("2026-11-30T23:00:00"))
    pools = Budgets([Budget(client="ci", period="day", calls=1)], None, clock=clock)
    await pools.reserve("ci", "words")
    with pytest.raises(BudgetExhausted) as refused:
        await pools.reserve("ci", "pdf")
    assert refused.value.retry_after == 3600
    assert refused.value.status == 429
    assert refused.value.code == "budget_exhausted"
    clock.now = ts("2026-12-01T00:00:01")  # a new day: a new pool
    await pools.reserve("ci", "words")


async def test_a_call_is_reserved_in_every_pool_or_in_none() -> None:
    budgets = [Budget(client="ci", calls=5), Budget(client="*", product="words", calls=1)]
    ledger = MemoryLedger()
    pools = Budgets(budgets, ledger)
    await pools.reserve("ci", "words")
    with pytest.raises(BudgetExhausted):
        await pools.reserve("ci", "words")
    await pools.reserve("ci", "cells")  # the words pool is full, ci's own is not
    ci_key = pools.key(budgets[0], pools._clock())[0]
    assert ledger._values[ci_key] == 2  # the refused call took nothing from ci's pool


async def test_no_budget_no_reservation() -> None:
    pools = Budgets([Budget(client="ci", calls=0)], None)
    assert await pools.reserve("web", "words") == ()
    assert not Budgets([], None).active


async def test_warning_once_when_a_budget_passes_80_percent() -> None:
    pools = Budgets([Budget(client="*", product="*", period="day", calls=10)], None)
    with capture_logs() as logs:
        for _ in range(10):
            await pools.reserve("ci", "words")
    warnings = [e for e in logs if e["event"] == "budget passed 80%"]
    assert len(warnings) == 1
    assert warnings[0]["used"] == 8
    assert warnings[0]["log_level"] == "warning"


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
