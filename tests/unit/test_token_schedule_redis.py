"""The token schedule's Redis engine (issue 17) on a real redis-server: what it stores, and the
conservative local schedule while Redis cannot be reached. The cases every engine shares are
in test_token_schedule.py (parametrised over the file and Redis)."""

from __future__ import annotations

import contextlib
import math

import redis
from structlog.testing import capture_logs

from proxy.token_schedule import Schedule, new_state
from proxy.token_schedule_redis import RedisScheduleStore, state_key
from tests.unit.token_fakes import CLIENT_ID, SECRET, FakeClock

NOWHERE = "redis://127.0.0.1:9/0"  # the discard port: connection refused


def test_redis_holds_no_secret_and_no_client_id(redis_url: str) -> None:
    schedule = Schedule(RedisScheduleStore(redis_url, None, CLIENT_ID, new_state))
    fp = schedule.fingerprint(CLIENT_ID, SECRET)
    decision = schedule.ask(fp, have_token=False)
    schedule.record(decision.ticket, fp, "rejected", reason="rejected")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    [key] = client.keys("*")
    assert key == state_key(CLIENT_ID) and CLIENT_ID not in key
    text = client.get(key) or ""
    assert fp in text and SECRET not in text and CLIENT_ID not in text
    client.close()


def test_unreachable_redis_gives_the_conservative_schedule_logged_once() -> None:
    clock = FakeClock(1000.0)
    store = RedisScheduleStore(NOWHERE, None, CLIENT_ID, new_state)
    schedule = Schedule(store, clock=clock)
    with capture_logs() as logs:
        wrong = schedule.fingerprint(CLIENT_ID, "wrong")
        first = schedule.ask(wrong, have_token=False)
        assert first.allowed and store.degraded
        schedule.record(first.ticket, wrong, "rejected", reason="rejected")
        # The shared schedule would try the rejected secret again after 30 s and a new one at
        # once; the conservative one: the rejected secret never (until it changes), and no
        # second failure in the window, whatever the secret.
        clock.now += 60
        again = schedule.ask(wrong, have_token=False)
        assert not again.allowed and math.isinf(again.until)
        assert "not tried again until the secret changes" in again.reason
        other = schedule.ask(schedule.fingerprint(CLIENT_ID, "other"), have_token=False)
        assert not other.allowed and other.until == 1000.0 + 600
        clock.now += 600
        assert schedule.ask(schedule.fingerprint(CLIENT_ID, "third"), have_token=False).allowed
    outage_lines = [e for e in logs if "token schedule store unreachable" in e["event"]]
    assert len(outage_lines) == 1 and outage_lines[0]["log_level"] == "error"


def test_a_holder_whose_lock_expired_writes_nothing(redis_url: str) -> None:
    store = RedisScheduleStore(redis_url, None, CLIENT_ID, new_state)
    with store.transaction() as state:
        salt = state["salt"]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with store.transaction() as state:
        client.delete(store.key + ":lock")  # expired, and maybe taken by another process
        state["streak"] = 99
    stored = client.get(store.key) or ""
    assert '"streak": 0' in stored and salt in stored  # the late write was refused
    assert store.degraded  # this process goes on from its own copy, and merges it later
    client.close()


def test_a_transaction_that_fails_writes_nothing_and_lets_go_of_the_lock(redis_url: str) -> None:
    store = RedisScheduleStore(redis_url, None, CLIENT_ID, new_state)
    with store.transaction() as state:
        salt = state["salt"]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with contextlib.suppress(ZeroDivisionError), store.transaction() as state:
        state["streak"] = 99
        _ = 1 / 0
    assert '"streak": 0' in (client.get(store.key) or "") and salt in (client.get(store.key) or "")
    assert client.get(store.key + ":lock") is None and not store.degraded
    client.close()
