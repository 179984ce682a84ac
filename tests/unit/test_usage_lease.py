"""Leases (proxy/usage/lease.py): calls and tokens taken from a shared ledger in chunks, spent
from memory, exact near the end of a budget, given back when idle."""

from __future__ import annotations

import pytest

from proxy.usage.lease import IDLE, MOST, TOKEN_TTL, Leases, token_lease_size
from proxy.usage.memory import MemoryLedger
from proxy.usage.store import Bucket
from tests.fake_clock import FakeClock


async def test_a_big_budget_is_leased_in_chunks_and_idle_calls_go_back() -> None:
    shared, clock = MemoryLedger(), FakeClock(0.0)
    leases = Leases(shared, clock=clock)
    answers = [await leases.reserve(["b"], [1_000_000], 3600) for _ in range(3)]
    assert [a[0] for a in answers] == [1, 1, 1] and [a[1] for a in answers] == [1, 2, 3]
    assert await shared.peek(["b"]) == [MOST]  # one round trip for the first MOST calls
    clock.now += IDLE
    await leases.give_back()
    assert await shared.peek(["b"]) == [3]  # the unused calls went back


async def test_two_processes_with_leases_spend_a_small_budget_exactly() -> None:
    shared = MemoryLedger()
    first, second = Leases(shared), Leases(shared)
    answers = [await (first, second)[i % 2].reserve(["b"], [3], 3600) for i in range(8)]
    assert [a[0] > 0 for a in answers] == [True] * 3 + [False] * 5


async def test_a_call_given_back_returns_to_the_lease() -> None:
    shared = MemoryLedger()
    leases = Leases(shared)
    await leases.reserve(["b"], [1_000_000], 3600)
    await leases.release(["b"])
    await leases.give_back(idle=0)
    assert await shared.peek(["b"]) == [0]


async def test_token_leases_grow_while_used_up_and_shrink_to_what_a_quiet_process_uses() -> None:
    clock = FakeClock(0.0)
    shared = MemoryLedger(monotonic=clock)
    leases = Leases(shared, clock=clock)
    wide = Bucket("rate:1:10000:*", rate=1, burst=10_000)
    assert [await leases.take([wide]) for _ in range(127)] == [(1, 0.0)] * 127
    # Leases of 1, 2, 4, ... 64: 127 tokens in 7 round trips, none left over.
    assert shared._buckets[wide.key][0] == 10_000 - 127
    for _ in range(3):  # then one call a second: each lease expires with 63 unused
        clock.now += TOKEN_TTL + 0.1
        assert await leases.take([wide]) == (1, 0.0)
    level = shared._buckets[wide.key][0]
    clock.now += TOKEN_TTL + 0.1
    await leases.take([wide])  # the lease is now one token: nothing dropped
    assert shared._buckets[wide.key][0] == pytest.approx(level + TOKEN_TTL + 0.1 - 1)


def test_token_lease_size() -> None:
    assert token_lease_size(0, 0, MOST) == 1
    assert token_lease_size(8, 0, MOST) == 16
    assert token_lease_size(64, 0, MOST) == MOST
    assert token_lease_size(64, 63, MOST) == 1
    assert token_lease_size(16, 6, MOST) == 10


async def test_an_empty_bucket_refuses_with_its_wait() -> None:
    leases = Leases(MemoryLedger(monotonic=FakeClock(0.0)))
    narrow = Bucket("rate:2:1:ci", rate=2, burst=1)
    assert await leases.take([narrow]) == (1, 0.0)
    assert await leases.take([narrow]) == (0, 0.5)
