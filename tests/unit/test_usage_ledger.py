"""The shared ledgers (issue 17): SQLite and Redis pass the SAME cases, each opened twice as two
processes would open it; budget counters and rate-limit buckets are one for both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.token_fingerprints import client_digest
from proxy.usage.store import Bucket, Ledger, UsageStore
from tests.unit.test_usage_store import new_store

__all__ = ["new_store"]  # the fixture: one SQLite file or one Redis, opened per "process"
Opener = Callable[..., UsageStore]  # (application: str = "")
SLOW = Bucket("rate:0.001:3:*", rate=0.001, burst=3)  # 3 at once, then one per 1000 s


async def ledgers(opener: Opener, count: int = 2, *applications: str) -> list[Ledger]:
    found = []
    for index in range(count):
        store = opener(applications[index] if applications else "")
        await store.open()
        assert store.ledger is not None, "a shared store must offer a shared ledger"
        found.append(store.ledger)
    return found


async def test_two_processes_reserving_at_once_spend_a_budget_exactly(new_store: Opener) -> None:
    first, second = await ledgers(new_store)
    answers = await asyncio.gather(
        *(ledger.reserve(["budget:k"], [5], 3600) for ledger in [first, second] * 6)
    )
    assert sorted(a[-1] for a in answers) == [-1] * 7 + [1, 2, 3, 4, 5]
    assert await first.peek(["budget:k"]) == [5] == await second.peek(["budget:k"])


async def test_a_refused_reservation_takes_from_no_pool(new_store: Opener) -> None:
    first, second = await ledgers(new_store)
    assert await first.reserve(["a", "b"], [10, 1], 3600) == [1, 1, 1]  # 1 added: 1, 1
    assert await second.reserve(["a", "b"], [10, 1], 3600) == [-2]  # b is spent
    assert await first.peek(["a", "b"]) == [1, 1]
    await second.release(["a", "b"])
    assert await first.reserve(["a", "b"], [10, 1], 3600) == [1, 1, 1]


async def test_a_seed_never_overwrites_a_counter_another_process_holds(new_store: Opener) -> None:
    first, second = await ledgers(new_store)
    await first.seed("budget:s", 4, 3600)
    await second.seed("budget:s", 0, 3600)
    assert await second.peek(["budget:s"]) == [4]


async def test_one_rate_limit_bucket_for_both_processes(new_store: Opener) -> None:
    first, second = await ledgers(new_store)
    takes = [await ledger.take([SLOW]) for ledger in [first, second] * 3]
    assert takes[:3] == [(1, 0.0)] * 3
    assert all(n == 0 and 900 < wait <= 1000 for n, wait in takes[3:]), takes


async def test_a_short_bucket_takes_nothing_from_the_others(new_store: Opener) -> None:
    first, second = await ledgers(new_store)
    five = Bucket("rate:0.001:5:ci", rate=0.001, burst=5)
    for _ in range(3):
        assert await first.take([five, SLOW]) == (1, 0.0)
    assert (await second.take([five, SLOW]))[0] == 0  # SLOW is empty: five keeps its token
    assert [(await second.take([five]))[0] for _ in range(3)] == [1, 1, 0]


async def test_a_bucket_refills_at_its_rate(new_store: Opener) -> None:
    first, second = await ledgers(new_store)
    fast = Bucket("rate:20:1:ci", rate=20, burst=1)
    assert await first.take([fast]) == (1, 0.0)
    n, wait = await second.take([fast])
    assert n == 0 and 0 < wait <= 0.05
    await asyncio.sleep(wait + 0.02)
    assert await second.take([fast]) == (1, 0.0)


async def test_a_lease_takes_a_hundredth_of_the_room_and_one_call_near_the_end(
    new_store: Opener,
) -> None:
    first, second = await ledgers(new_store)
    assert (await first.reserve(["big"], [10_000], 3600, most=64))[:2] == [64, 64]
    assert (await second.reserve(["big"], [10_000], 3600, most=64))[:2] == [64, 128]
    assert (await first.reserve(["small"], [150], 3600, most=64))[:2] == [1, 1]
    await first.release(["big"], 60)
    assert await second.peek(["big"]) == [68]
    wide = Bucket("rate:1000:1000:*", rate=1000, burst=1000)
    assert await first.take([wide], most=64) == (10, 0.0)
    assert await second.take([wide, SLOW], most=64) == (1, 0.0)  # SLOW holds 3: one


APP_A, APP_B = client_digest("app-a"), client_digest("app-b")


async def test_two_applications_never_share_a_budget_or_a_rate_bucket(new_store: Opener) -> None:
    first, second = await ledgers(new_store, 2, APP_A, APP_B)
    assert [(await first.reserve(["budget:k"], [3], 3600))[0] for _ in range(4)] == [1, 1, 1, -1]
    assert [(await second.reserve(["budget:k"], [3], 3600))[0] for _ in range(4)] == [1, 1, 1, -1]
    assert [(await first.take([SLOW]))[0] for _ in range(4)] == [1, 1, 1, 0]
    assert [(await second.take([SLOW]))[0] for _ in range(4)] == [1, 1, 1, 0]


async def test_an_upgraded_proxy_starts_from_the_count_of_the_key_without_application(
    new_store: Opener,
) -> None:
    """Mid-period, the counter kept before budgets were keyed per application is not lost."""
    before, after, other = await ledgers(new_store, 3, "", APP_A, APP_B)
    assert (await before.reserve(["budget:k"], [3], 3600))[:2] == [1, 1]
    assert (await before.reserve(["budget:k"], [3], 3600))[:2] == [1, 2]
    assert await after.peek(["budget:k"]) == [2]
    assert await after.reserve(["budget:k"], [3], 3600) == [1, 3]
    assert await after.reserve(["budget:k"], [3], 3600) == [-1]
    await after.release(["budget:k"])
    assert await after.peek(["budget:k"]) == [2] == await before.peek(["budget:k"])
    await other.seed("budget:k", 0, 3600)  # a seed starts from the older count too
    assert await other.peek(["budget:k"]) == [2]
    assert await other.reserve(["budget:k"], [3], 3600) == [1, 3]
