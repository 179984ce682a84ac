"""The token request schedule (proxy/token_schedule.py): the failed-login budget, the slow
schedule for rejected secrets, the 429 block, and one schedule shared by several processes,
driven through a TokenCache as the proxy drives it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from proxy.credentials import Credentials
from proxy.errors import TokenUnavailable
from proxy.token_client import TokenAnswer, TokenFetchError
from proxy.token_schedule import FileStore, Schedule, Store, new_state
from proxy.token_schedule_redis import RedisScheduleStore
from proxy.tokens import TokenCache
from tests.unit.token_fakes import (
    CLIENT_ID,
    SECRET,
    WINDOW,
    Endpoint,
    FakeClock,
    FakeFetch,
    cache_for,
    creds,
    hammer,
    make_cache_with,
    refresher,
    wait_until,
)


async def test_wrong_secret_under_load_at_most_4_failures_in_any_10_minutes(
    clock: FakeClock,
) -> None:
    endpoint = Endpoint(clock)
    cache = cache_for(endpoint, clock)
    results = await hammer(cache, clock, 3 * 3600, step=2.0)
    assert endpoint.most_failures_in_a_window() <= 4
    # The opening claim: 7 failed requests in the first 40 s. Now:
    assert len([t for t in endpoint.failures if t < 1000.0 + 40]) <= 2
    assert len(endpoint.failures) >= 3 * 6  # it does keep retrying, slowly
    assert all(isinstance(r, TokenUnavailable) for r in results)


async def test_rejected_schedule_is_30s_then_slow_steps(clock: FakeClock) -> None:
    endpoint = Endpoint(clock)
    cache = cache_for(endpoint, clock)
    await hammer(cache, clock, 1200, step=1.0)
    start = endpoint.failures[0]
    gaps = [b - a for a, b in zip(endpoint.failures, endpoint.failures[1:], strict=False)]
    assert endpoint.failures[1] - start == pytest.approx(30, abs=1.01)
    assert all(gap >= 150 - 1 for gap in gaps[1:])
    assert endpoint.most_failures_in_a_window() <= 3  # one slot kept for a new secret


async def test_while_rejected_requests_get_503_at_once_with_honest_retry_after(
    clock: FakeClock,
) -> None:
    endpoint = Endpoint(clock)
    cache = cache_for(endpoint, clock)
    with pytest.raises(TokenUnavailable):
        await cache.get()
    clock.now += 10
    with pytest.raises(TokenUnavailable) as caught:
        await asyncio.wait_for(cache.get(), timeout=0.5)
    assert len(endpoint.requests) == 1
    assert caught.value.retry_after == pytest.approx(20, abs=0.01)  # the 30 s step, 10 s gone
    assert "rejected the credentials" in caught.value.message
    assert CLIENT_ID in caught.value.message
    clock.now += 20  # the step is over: the next request triggers the one retry
    with pytest.raises(TokenUnavailable):
        await cache.get()
    assert len(endpoint.requests) == 2


async def test_new_secret_is_tried_at_once_whatever_the_schedule(clock: FakeClock) -> None:
    endpoint = Endpoint(clock, good={"right"})
    cache = cache_for(endpoint, clock)
    with pytest.raises(TokenUnavailable):
        await cache.get()
    clock.now += 1  # 29 s before the schedule would allow a retry
    assert cache.set_credentials(creds("right"), "SIGHUP")
    token = await cache.get()
    assert token.value == "token-for-right"
    assert [s for _, s in endpoint.requests] == ["wrong", "right"]


async def test_a_rejected_secret_gets_no_immediate_attempt_when_it_comes_back(
    clock: FakeClock,
) -> None:
    endpoint = Endpoint(clock)
    cache = cache_for(endpoint, clock, secret="bad-1")
    with pytest.raises(TokenUnavailable):
        await cache.get()
    cache.set_credentials(creds("bad-2"), "SIGHUP")
    with pytest.raises(TokenUnavailable):
        await cache.get()
    cache.set_credentials(creds("bad-1"), "SIGHUP")  # the first rejected secret again
    with pytest.raises(TokenUnavailable) as caught:
        await cache.get()
    assert [s for _, s in endpoint.requests] == ["bad-1", "bad-2"]
    assert caught.value.retry_after is not None and caught.value.retry_after > 1


async def test_rotation_counts_towards_the_budget(clock: FakeClock) -> None:
    endpoint = Endpoint(clock)
    cache = cache_for(endpoint, clock)
    await hammer(cache, clock, 200, step=1.0)  # 3 failures: 0, 30, 180 s
    assert len(endpoint.failures) == 3
    cache.set_credentials(creds("also-wrong"), "client_secret_file changed")
    with pytest.raises(TokenUnavailable):
        await cache.get()  # the slot kept for a new secret: tried at once
    assert len(endpoint.failures) == 4
    cache.set_credentials(creds("wrong-again"), "SIGHUP")
    with pytest.raises(TokenUnavailable) as caught:
        await cache.get()  # a fifth failure in 10 minutes would risk the lockout
    assert len(endpoint.requests) == 4
    assert "failed within 600 s" in caught.value.message
    assert caught.value.retry_after == pytest.approx(WINDOW - 200, abs=1.01)


async def test_429_no_token_request_before_retry_after(clock: FakeClock) -> None:
    endpoint = Endpoint(clock, good={"right", "newer"})
    endpoint.limited_until = clock.now + 300
    cache = TokenCache(
        endpoint, wait_timeout=5.0, credentials=creds("right"), clock=clock, rng=random.Random(1)
    )
    with pytest.raises(TokenUnavailable):
        await cache.get()
    async with refresher(cache):
        results = await hammer(cache, clock, 290, step=5.0)
        cache.set_credentials(creds("newer"), "SIGHUP")  # a rotation honours it too
        await asyncio.sleep(0.05)
        more = await hammer(cache, clock, 0.5, step=0.1)
        assert len(endpoint.requests) == 1
        assert all(isinstance(r, TokenUnavailable) for r in results + more)
        last = more[-1]
        assert "429" in last.message and "no token request before" in last.message
        assert last.retry_after == pytest.approx(300 - 290.5, abs=0.01)
        assert cache.not_ready_reason is not None
        assert (
            "429" in cache.not_ready_reason and "no token request before" in cache.not_ready_reason
        )
        clock.now = 1000.0 + 300
        assert (await cache.get()).value == "token-for-newer"
    assert [s for _, s in endpoint.requests] == ["right", "newer"]


async def test_429_without_retry_after_waits_ten_minutes(clock: FakeClock) -> None:
    fetch = FakeFetch()
    fetch.script = [TokenFetchError("429", rate_limited=True)]
    cache = make_cache_with(fetch, clock)
    with pytest.raises(TokenUnavailable):
        await cache.get()
    clock.now += 599
    with pytest.raises(TokenUnavailable) as caught:
        await cache.get()
    assert fetch.calls == 1
    assert caught.value.retry_after == pytest.approx(1, abs=0.01)


async def test_transient_failures_keep_the_fast_backoff(clock: FakeClock) -> None:
    fetch = FakeFetch()
    fetch.script = [TokenFetchError("token endpoint answered HTTP 502") for _ in range(5)]
    cache = make_cache_with(fetch, clock)
    start = clock.now
    while fetch.calls < 5:
        with contextlib.suppress(TokenUnavailable):
            await cache.get()
        clock.now += 0.25
    assert clock.now - start < 10  # 0.5 s doubling, not the slow schedule
    clock.now += 10
    assert (await cache.get()).value == "token-6"


async def test_rejected_refresh_keeps_serving_the_cached_token(clock: FakeClock) -> None:
    endpoint = Endpoint(clock, good={"right"})
    cache = cache_for(endpoint, clock, secret="right")
    token = await cache.get()
    endpoint.good.clear()  # the secret was regenerated in the dashboard
    async with refresher(cache):
        clock.now = token.refresh_at + 1
        await wait_until(lambda: len(endpoint.requests) == 2)
        for _ in range(20):
            clock.now += 60
            assert await cache.get() is token
            assert cache.not_ready_reason is None
        assert len(endpoint.requests) == 2  # not tried again while the token is valid


# -- several processes share one schedule -------------------------------------------------------


@pytest.fixture(params=["file", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Any) -> Callable[[], Store]:
    """One shared schedule state, opened anew per call as each process opens it: the workers'
    file, or Redis (every replica, issue 17). The same cases run on both engines."""
    if request.param == "file":
        path = tmp_path / "token-state"
        return lambda: FileStore(path)
    url = request.getfixturevalue("redis_url")
    return lambda: RedisScheduleStore(url, None, CLIENT_ID, new_state)


async def test_workers_sharing_a_state_fail_once_not_n_times(
    clock: FakeClock, shared_store: Callable[[], Store]
) -> None:
    endpoint = Endpoint(clock)
    workers = [
        cache_for(endpoint, clock, schedule=Schedule(shared_store(), clock=clock)) for _ in range(4)
    ]
    for _ in range(3):
        for worker in workers:
            with pytest.raises(TokenUnavailable):
                await worker.get()
        clock.now += 10
    assert len(endpoint.requests) == 1
    for worker in workers:  # SIGHUP passed on to every worker: one attempt, not four
        worker.set_credentials(creds("new-but-wrong"), "SIGHUP")
    outcomes = await asyncio.gather(*(w.get() for w in workers), return_exceptions=True)
    assert all(isinstance(o, TokenUnavailable) for o in outcomes)
    assert [s for _, s in endpoint.requests] == ["wrong", "new-but-wrong"]


async def test_workers_and_replicas_share_the_cap_on_renewals_after_a_401(
    clock: FakeClock, shared_store: Callable[[], Store]
) -> None:
    """Issue 16: 3 renewals per 10 s for the application, whatever the number of processes."""
    endpoint = Endpoint(clock, good={"right"})
    stores = [shared_store() for _ in range(3)]
    workers = [cache_for(endpoint, clock, "right", Schedule(s, clock=clock)) for s in stores]
    renewed = [await w.renew(await w.get()) for w in workers * 2]  # each 401s twice
    assert sum(t is not None for t in renewed) == 3
    # At start one each, or one between them where the token is shared (Redis); then the cap.
    at_start = 1 if stores[0].token_share else 3
    assert len(endpoint.requests) == at_start + 3


async def test_workers_all_get_their_token_with_good_credentials(
    clock: FakeClock, shared_store: Callable[[], Store]
) -> None:
    endpoint = Endpoint(clock, good={"right"})
    gate = asyncio.Event()

    async def slow(credentials: Credentials | None = None) -> TokenAnswer:
        await gate.wait()  # all six ask at once: more requests out than the budget has slots
        return await endpoint(credentials)

    stores = [shared_store() for _ in range(6)]
    workers = [cache_for(slow, clock, "right", Schedule(s, clock=clock)) for s in stores]
    getting = [asyncio.create_task(w.get()) for w in workers]
    await asyncio.sleep(0.05)
    gate.set()
    tokens = await asyncio.gather(*getting)
    assert {t.value for t in tokens} == {"token-for-right"}
    # Each worker its own token, successes cost no budget; one between them where the token
    # is shared (Redis: the others wait for it rather than ask).
    assert len(endpoint.requests) == (1 if stores[0].token_share else 6)


async def test_state_file_holds_no_secret(clock: FakeClock, tmp_path: Any) -> None:
    path = tmp_path / "token-state"
    schedule = Schedule(FileStore(path), clock=clock)
    decision = await schedule.ask(creds(SECRET), have_token=False)
    await schedule.record(decision.ticket, creds(SECRET), "rejected", reason="rejected")
    text = path.read_text()
    assert SECRET not in text and list(json.loads(text)["rejected"]) != []
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_a_corrupt_state_file_starts_afresh(clock: FakeClock, tmp_path: Any) -> None:
    path = tmp_path / "token-state"
    path.write_text("{not json")
    schedule = Schedule(FileStore(path), clock=clock)
    assert (await schedule.ask(creds(SECRET), have_token=False)).allowed


async def test_the_401_renewal_cap_is_one_for_every_process(
    clock: FakeClock, shared_store: Callable[[], Store]
) -> None:
    """Issue 16's 3 renewals per 10 s are per application: shared by workers (file) and
    replicas (Redis, issue 17), not 3 per process."""
    processes = [Schedule(shared_store(), clock=clock) for _ in range(3)]
    assert [await p.may_renew() for p in processes * 2] == [True] * 3 + [False] * 3
    clock.now += 10.5
    assert await processes[2].may_renew()
