"""The token schedule's Redis engine (issue 17) on a real redis-server: what it stores, and the
conservative local schedule while Redis cannot be reached. The cases every engine shares are
in test_token_schedule.py (parametrised over the file and Redis)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import redis
from structlog.testing import capture_logs

from proxy.token_schedule import Schedule, new_state
from proxy.token_schedule_redis import RETRY_EVERY, RedisScheduleStore, state_key
from tests.redis_server import APPEND_ONLY, start_redis
from tests.unit.token_fakes import CLIENT_ID, SECRET, FakeClock, creds

NOWHERE = "redis://127.0.0.1:9/0"  # the discard port: connection refused


async def test_redis_holds_no_secret_and_no_client_id(redis_url: str) -> None:
    store = RedisScheduleStore(redis_url, None, CLIENT_ID, new_state)
    schedule = Schedule(store)
    decision = await schedule.ask(creds(SECRET), have_token=False)
    await schedule.record(decision.ticket, creds(SECRET), "rejected", reason="rejected")
    await store.close()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    [key] = client.keys("*")
    assert key == state_key(CLIENT_ID) and CLIENT_ID not in key
    text = client.get(key) or ""
    assert '"rejected": {"' in text and SECRET not in text and CLIENT_ID not in text
    client.close()


async def test_unreachable_redis_gives_the_conservative_schedule_logged_once() -> None:
    clock = FakeClock(1000.0)
    store = RedisScheduleStore(NOWHERE, None, CLIENT_ID, new_state)
    schedule = Schedule(store, clock=clock)
    with capture_logs() as logs:
        wrong = creds("wrong")
        first = await schedule.ask(wrong, have_token=False)
        assert first.allowed and store.degraded
        await schedule.record(first.ticket, wrong, "rejected", reason="rejected")
        # The shared schedule would try the rejected secret again after 30 s and a new one at
        # once; the conservative one: the rejected secret never (until it changes), and no
        # second failure in the window, whatever the secret.
        clock.now += 60
        again = await schedule.ask(wrong, have_token=False)
        assert not again.allowed and math.isinf(again.until)
        assert "not tried again until the secret changes" in again.reason
        other = await schedule.ask(creds("other"), have_token=False)
        assert not other.allowed and other.until == 1000.0 + 600
        clock.now += 600
        assert (await schedule.ask(creds("third"), have_token=False)).allowed
    outage_lines = [e for e in logs if "token schedule store unreachable" in e["event"]]
    assert len(outage_lines) == 1 and outage_lines[0]["log_level"] == "error"
    await store.close()


async def test_a_holder_whose_lock_expired_writes_nothing(redis_url: str) -> None:
    store = RedisScheduleStore(redis_url, None, CLIENT_ID, new_state)
    async with store.transaction() as state:
        salt = state["salt"]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    async with store.transaction() as state:
        client.delete(store.key + ":lock")  # expired, and maybe taken by another process
        state["streak"] = 99
    stored = client.get(store.key) or ""
    assert '"streak": 0' in stored and salt in stored  # the late write was refused
    assert store.degraded  # this process goes on from its own copy, and merges it later
    client.close()
    await store.close()


async def test_a_transaction_that_fails_writes_nothing_and_lets_go_of_the_lock(
    redis_url: str,
) -> None:
    store = RedisScheduleStore(redis_url, None, CLIENT_ID, new_state)
    async with store.transaction() as state:
        salt = state["salt"]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with contextlib.suppress(ZeroDivisionError):
        async with store.transaction() as state:
            state["streak"] = 99
            _ = 1 / 0
    assert '"streak": 0' in (client.get(store.key) or "") and salt in (client.get(store.key) or "")
    assert client.get(store.key + ":lock") is None and not store.degraded
    client.close()
    await store.close()


async def test_a_replica_started_while_redis_was_down_adopts_the_shared_salt(
    tmp_path: Path,
) -> None:
    """Issue 17 follow-up: a process that started during an outage salted its fingerprints
    with a salt of its own; after recovery, a secret it saw rejected must be known as rejected
    to every replica (and to itself), not under a name nobody else computes."""
    server, url = start_redis(tmp_path, persistence=APPEND_ONLY)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    first_store = RedisScheduleStore(url, None, CLIENT_ID, new_state)
    first = Schedule(first_store)
    right = creds("right")
    ok = await first.ask(right, have_token=False)  # the shared state, with its salt, exists
    await first.record(ok.ticket, right, "ok")
    server.terminate()
    server.wait(timeout=10)

    outage_clock = FakeClock(0.0)
    late_store = RedisScheduleStore(url, None, CLIENT_ID, new_state, clock=outage_clock)
    late = Schedule(late_store)  # starts while Redis is down: its own salt
    wrong = creds("a-wrong-secret")
    attempt = await late.ask(wrong, have_token=False)
    assert attempt.allowed and late_store.degraded
    await late.record(attempt.ticket, wrong, "rejected", reason="invalid_client")

    server, _ = start_redis(tmp_path, port=port, persistence=APPEND_ONLY)
    try:
        outage_clock.now += RETRY_EVERY + 1
        await late.standing()  # Redis is asked again: the outage's rejection is merged
        assert not late_store.degraded
        client = redis.Redis.from_url(url, decode_responses=True)
        stored = client.get(first_store.key) or ""
        client.close()
        assert stored.count('"reason": "invalid_client"') == 1  # one name for the secret
        for replica in (first, late):  # the same name on every replica, the late one too
            decision = await replica.ask(wrong, have_token=True)
            assert not decision.allowed and decision.rejected and math.isinf(decision.until)
        assert (await first.ask(creds("a-new-secret"), have_token=True)).allowed
    finally:
        await first_store.close()
        await late_store.close()
        server.terminate()
        server.wait(timeout=10)
