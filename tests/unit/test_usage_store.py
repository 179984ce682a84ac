"""The usage stores: SQLite and Redis pass the SAME test cases (one parametrised fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from proxy.errors import BudgetExhausted
from proxy.usage.budgets import Budgets
from proxy.usage.counter import UsageCounter
from proxy.usage.factory import open_store
from proxy.usage.rules import Budget
from proxy.usage.store import EVERY_APPLICATION, Row, UsageStore, current_hour

StoreFactory = Callable[..., UsageStore]  # (application: str = "")


@pytest.fixture(params=["sqlite", "redis"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores on one backing file or server: each is a separate process's view."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'state' / 'usage.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    opened: list[UsageStore] = []

    def factory(application: str = "") -> UsageStore:
        store = open_store(url, application=application)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


async def test_batches_add_up_per_client_product_kind(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    hour = current_hour()
    await store.add({(hour, "ci", "words", "api"): (3, 1), (hour, "ci", "cells", "api"): (1, 0)})
    await store.add(
        {(hour, "ci", "words", "api"): (2, 2), (hour - 1, "ci", "words", "api"): (5, 0)}
    )
    assert await store.rows(hour) == [
        Row("ci", "cells", "api", 1, 0),
        Row("ci", "words", "api", 5, 3),
    ]
    assert await store.rows(hour - 1) == [
        Row("ci", "cells", "api", 1, 0),
        Row("ci", "words", "api", 10, 3),
    ]
    assert await store.rows(hour + 1) == []


async def test_two_processes_add_to_the_same_counts(new_store: StoreFactory) -> None:
    first, second = new_store(), new_store()
    await first.open()
    await second.open()
    hour = current_hour()
    await asyncio.gather(
        *(store.add({(hour, "a", "pdf", "storage"): (1, 0)}) for store in [first, second] * 10)
    )
    assert await first.rows(hour) == [Row("a", "pdf", "storage", 20, 0)]


async def test_counts_persist_across_a_reopen(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    counter = UsageCounter(store, flush_interval=3600)
    for status in (200, 200, 404, 503):
        counter.record("ci", "words", "api", status)
    await counter.close()  # the final flush, then the store is closed
    again = new_store()
    await again.open()
    assert await again.rows(current_hour()) == [Row("ci", "words", "api", 4, 2)]


async def test_counter_rows_include_unwritten_calls_exactly_once(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    counter = UsageCounter(store, flush_interval=3600)
    counter.record("ci", "words", "api", 200)
    assert await counter.rows(current_hour()) == [Row("ci", "words", "api", 1, 0)]
    await counter.flush()
    counter.record("ci", "words", "api", 500)
    assert await counter.rows(current_hour()) == [Row("ci", "words", "api", 2, 1)]
    await counter.flush()
    await counter.flush()  # nothing new: nothing written twice
    assert await store.rows(current_hour()) == [Row("ci", "words", "api", 2, 1)]


async def test_budget_is_seeded_from_the_store_after_a_restart(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    await store.add({(current_hour(), "ci", "words", "api"): (2, 0)})
    budget = Budget(client="ci", product="words", period="day", calls=3)
    budgets = Budgets([budget], store.ledger)
    await budgets.seed(store.rows)
    assert await budgets.reserve("ci", "words")
    with pytest.raises(BudgetExhausted):
        await budgets.reserve("ci", "words")


async def test_budget_reservations_never_overspend_under_concurrency(
    new_store: StoreFactory,
) -> None:
    store = new_store()
    await store.open()
    budget = Budget(client="*", product="*", period="month", calls=7)
    budgets = Budgets([budget], store.ledger)

    async def try_once() -> bool:
        try:
            await budgets.reserve("ci", "words")
        except BudgetExhausted:
            return False
        return True

    results = await asyncio.gather(*(try_once() for _ in range(20)))
    assert sum(results) == 7


async def test_a_given_back_reservation_can_be_spent_again(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    budgets = Budgets([Budget(client="ci", calls=1)], store.ledger)
    keys = await budgets.reserve("ci", "words")
    budgets.release(keys)
    await asyncio.sleep(0.05)  # the give-back runs in the background
    assert await budgets.reserve("ci", "words") == keys


async def test_a_spent_budget_is_seen_without_spending_anything(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    budgets = Budgets([Budget(client="ci", product="words", calls=2)], store.ledger)
    assert not await budgets.spent("ci", "words")
    await budgets.reserve("ci", "words")
    assert not await budgets.spent("ci", "words")
    await budgets.reserve("ci", "words")
    assert await budgets.spent("ci", "words")
    assert not await budgets.spent("ci", "cells")  # no budget for it


def old_usage_file(path: Path, *, cached: bool) -> Path:
    """A usage file as older versions wrote it (with the ``cached`` column of issue 19 or
    without it; never with the ``application`` of issue 17), holding 5 calls, 1 error."""
    import sqlite3

    column = "cached INTEGER NOT NULL DEFAULT 0, " if cached else ""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE usage (hour INTEGER NOT NULL, client TEXT NOT NULL, product TEXT NOT "
            "NULL, kind TEXT NOT NULL, calls INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL "
            f"DEFAULT 0, {column}PRIMARY KEY (hour, client, product, kind)) WITHOUT ROWID"
        )
        db.execute(
            "INSERT INTO usage (hour, client, product, kind, calls, errors) "
            "VALUES (?, 'ci', 'words', 'api', 5, 1)",
            (current_hour(),),
        )
    db.close()
    return path


async def test_a_usage_file_from_before_the_cache_gains_the_cached_column(tmp_path: Path) -> None:
    path = old_usage_file(tmp_path / "old.db", cached=False)
    store = open_store(f"sqlite://{path}")
    await store.open()
    try:
        await store.add({(current_hour(), "ci", "words", "api"): (1, 0, 2)})
        assert await store.rows(0) == [Row("ci", "words", "api", 6, 1, 2)]
    finally:
        await store.close()


async def test_each_application_reads_its_own_counts_and_those_from_before_the_upgrade(
    new_store: StoreFactory,
) -> None:
    """Budgets are seeded from these counts at start: another application's must not count."""
    hour = current_hour()
    before, first, second = new_store(), new_store("a" * 32), new_store("b" * 32)
    everyone = new_store(EVERY_APPLICATION)  # the usage command with no client_id set
    for store in (before, first, second, everyone):
        await store.open()
    await before.add({(hour, "ci", "words", "api"): (1, 0)})  # counted before the upgrade
    await first.add({(hour, "ci", "words", "api"): (2, 0)})
    await second.add({(hour, "ci", "words", "api"): (4, 1)})
    assert await first.rows(hour) == [Row("ci", "words", "api", 3, 0)]
    assert await second.rows(hour) == [Row("ci", "words", "api", 5, 1)]
    assert await everyone.rows(hour) == [Row("ci", "words", "api", 7, 1)]


async def test_a_usage_file_from_before_applications_keeps_its_counts_for_every_one(
    tmp_path: Path,
) -> None:
    path = old_usage_file(tmp_path / "old.db", cached=True)
    first, second = (open_store(f"sqlite://{path}", application=app) for app in ("a1", "b2"))
    await first.open()
    await second.open()
    try:
        await first.add({(current_hour(), "ci", "words", "api"): (1, 0, 2)})
        assert await first.rows(0) == [Row("ci", "words", "api", 6, 1, 2)]
        assert await second.rows(0) == [Row("ci", "words", "api", 5, 1, 0)]
    finally:
        await first.close()
        await second.close()
