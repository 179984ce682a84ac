"""TokenCache (proxy/tokens.py) with a fake clock and a fake fetch."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import structlog

from proxy.credentials import Credentials
from proxy.errors import TokenUnavailable
from proxy.settings import Settings
from proxy.token_client import TokenAnswer, TokenFetchError, parse_token_answer
from proxy.tokens import BACKOFF_CAP, Token, TokenCache
from tests.unit.token_fakes import (
    CLIENT_ID,
    SECRET,
    Endpoint,
    FakeClock,
    FakeFetch,
    answer,
    cache_for,
    creds,
    make_cache_with,
    refresher,
    token_settings,
    wait_until,
)


@pytest.fixture
def settings() -> Settings:
    return token_settings()


@pytest.fixture
def fetch() -> FakeFetch:
    return FakeFetch()


@pytest.fixture
def make_cache(clock: FakeClock) -> Callable[..., TokenCache]:
    def make(fetch: FakeFetch, wait_timeout: float = 5.0, seed: int = 7) -> TokenCache:
        return TokenCache(fetch, wait_timeout=wait_timeout, clock=clock, rng=random.Random(seed))

    return make


def rejected_error(settings: Settings) -> TokenFetchError:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(400, b'{"error":"invalid_client"}', settings)
    return caught.value


# -- getting a token -------------------------------------------------------------------------


async def test_single_flight_50_concurrent_gets_one_fetch(
    make_cache: Any, fetch: FakeFetch
) -> None:
    fetch.gate = asyncio.Event()
    cache = make_cache(fetch)
    waiters = [asyncio.create_task(cache.get()) for _ in range(50)]
    await asyncio.sleep(0.01)
    fetch.gate.set()
    tokens = await asyncio.gather(*waiters)
    assert fetch.calls == 1
    assert {t.value for t in tokens} == {"token-1"}


async def test_cached_token_reused_without_fetching(make_cache: Any, fetch: FakeFetch) -> None:
    cache = make_cache(fetch)
    first = await cache.get()
    second = await cache.get()
    assert second is first
    assert fetch.calls == 1


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(10.0, 1.0), (100.0, 10.0), (300.0, 30.0), (86400.0, 30.0)],
)
async def test_token_not_handed_out_within_expiry_margin(
    make_cache: Any, clock: FakeClock, lifetime: float, margin: float
) -> None:
    fetch = FakeFetch(lifetime)
    cache = make_cache(fetch)
    start = clock.now
    first = await cache.get()

    clock.now = start + lifetime - margin - 0.01
    assert await cache.get() is first
    assert fetch.calls == 1

    clock.now = start + lifetime - margin
    assert cache.valid_token() is None
    second = await cache.get()
    assert second is not first
    assert second.value == "token-2"
    assert fetch.calls == 2


@pytest.mark.parametrize("seed", range(20))
async def test_refresh_at_no_later_than_half_lifetime(
    make_cache: Any, clock: FakeClock, seed: int
) -> None:
    cache = make_cache(FakeFetch(1000.0), seed=seed)
    token = await cache.get()
    assert token.obtained_at == clock.now
    assert clock.now < token.refresh_at <= clock.now + 500.0


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_token_refresh_at_within_half_lifetime_for_any_jitter(jitter: float) -> None:
    token = Token("v", lifetime=600.0, obtained_at=50.0, jitter=jitter)
    assert 50.0 < token.refresh_at <= 50.0 + 300.0
    assert token.expires_at == 650.0
    assert token.usable_until == 620.0


async def test_get_between_refresh_at_and_margin_keeps_current_token(
    make_cache: Any, clock: FakeClock, fetch: FakeFetch
) -> None:
    cache = make_cache(fetch)
    token = await cache.get()
    clock.now = token.refresh_at + 1.0  # refreshing is the background task's job
    assert await cache.get() is token
    assert fetch.calls == 1


async def test_already_expired_fetched_token_never_handed_out(
    make_cache: Any, fetch: FakeFetch
) -> None:
    fetch.script = [TokenAnswer("expired-on-arrival", 0.0)]
    cache = make_cache(fetch)
    with pytest.raises(TokenUnavailable) as caught:
        await cache.get()
    assert "expired" in caught.value.message
    assert cache.valid_token() is None
    assert cache.not_ready_reason is not None
    with pytest.raises(TokenUnavailable):
        await cache.get()  # backing off like any failed fetch
    assert fetch.calls == 1


async def test_jwt_with_past_exp_never_handed_out(
    make_cache: Any, fetch: FakeFetch, settings: Settings
) -> None:
    token = jwt.encode({"exp": int(time.time()) - 60}, "k" * 32, algorithm="HS256")
    fetch.script = [parse_token_answer(200, answer({"access_token": token}), settings)]
    cache = make_cache(fetch)
    with pytest.raises(TokenUnavailable):
        await cache.get()
    assert cache.valid_token() is None


# -- renewing after a 401 ----------------------------------------------------------------------


async def test_renew_rejected_current_token_fetches_a_new_one(
    make_cache: Any, fetch: FakeFetch
) -> None:
    cache = make_cache(fetch)
    old = await cache.get()
    new = await cache.renew(old)
    assert new.value == "token-2"
    assert fetch.calls == 2
    assert await cache.get() is new


async def test_renew_with_newer_token_present_does_not_fetch(
    make_cache: Any, fetch: FakeFetch
) -> None:
    cache = make_cache(fetch)
    old = await cache.get()
    newer = await cache.renew(old)
    again = await cache.renew(old)  # a request that carried the old token answers late
    assert again is newer
    assert fetch.calls == 2


async def test_20_concurrent_renews_of_same_token_fetch_once(
    make_cache: Any, fetch: FakeFetch
) -> None:
    cache = make_cache(fetch)
    old = await cache.get()
    fetch.gate = asyncio.Event()
    renewals = [asyncio.create_task(cache.renew(old)) for _ in range(20)]
    await asyncio.sleep(0.01)
    fetch.gate.set()
    tokens = await asyncio.gather(*renewals)
    assert fetch.calls == 2
    assert {t.value for t in tokens} == {"token-2"}


# -- one client's 401s must not lock the account out nor leave the others without (issue 16) --


async def test_renewals_after_401s_are_capped_at_3_per_10_seconds(
    make_cache: Any, fetch: FakeFetch, clock: FakeClock
) -> None:
    cache = make_cache(fetch)
    token = await cache.get()
    renewed = []
    for _ in range(10):  # an endpoint that answers 401 to every token
        fresh = await cache.renew(token)
        renewed.append(fresh)
        token = fresh or token
        clock.now += 0.5
    assert fetch.calls == 1 + 3
    assert [t is not None for t in renewed] == [True] * 3 + [False] * 7
    assert cache.valid_token() is token  # past the cap the token in hand stays in use
    clock.now += 10  # a new window
    assert await cache.renew(token) is not None
    assert fetch.calls == 5


async def test_a_revocation_hitting_many_calls_is_one_renewal_of_the_cap(
    make_cache: Any, fetch: FakeFetch
) -> None:
    cache = make_cache(fetch)
    for _ in range(3):
        old = await cache.get()
        fetch.gate = asyncio.Event()
        renewals = [asyncio.create_task(cache.renew(old)) for _ in range(20)]
        await asyncio.sleep(0.01)
        fetch.gate.set()
        assert None not in await asyncio.gather(*renewals)
    assert fetch.calls == 1 + 3


@pytest.mark.parametrize(
    "failure",
    [
        TokenFetchError("rejected (invalid_client)", rejected=True),
        TokenFetchError("429", rate_limited=True, retry_after=600),
        TokenFetchError("token endpoint answered HTTP 502"),
    ],
    ids=["400", "429", "502"],
)
async def test_a_failed_renewal_keeps_the_token_in_hand(
    make_cache: Any, fetch: FakeFetch, clock: FakeClock, failure: TokenFetchError
) -> None:
    cache = make_cache(fetch)
    held = await cache.get()
    fetch.script = [failure]
    assert await cache.renew(held) is None  # the request whose 401 started it gets that 401
    assert fetch.calls == 2
    assert cache.valid_token() is held
    assert await cache.get() is held  # every other client keeps being served
    assert cache.not_ready_reason is None
    clock.now = held.expires_at  # until it expires
    assert cache.valid_token() is None


async def test_a_renewal_that_times_out_keeps_the_token_in_hand(
    make_cache: Any, fetch: FakeFetch
) -> None:
    cache = make_cache(fetch, wait_timeout=0.05)
    held = await cache.get()
    fetch.gate = asyncio.Event()  # the token endpoint hangs
    assert await cache.renew(held) is None
    assert await cache.get() is held
    fetch.gate.set()
    await wait_until(lambda: cache.valid_token() is not held)  # the late answer is taken
    assert cache.valid_token() is not None


# -- failures and backoff ------------------------------------------------------------------


async def test_failed_fetch_raises_token_unavailable_with_retry_after(
    make_cache: Any, fetch: FakeFetch
) -> None:
    fetch.script = [TokenFetchError("token endpoint answered HTTP 500")]
    cache = make_cache(fetch)
    with pytest.raises(TokenUnavailable) as caught:
        await cache.get()
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0
    assert "HTTP 500" in caught.value.message


async def test_while_backing_off_get_fails_at_once_without_fetching(
    make_cache: Any, clock: FakeClock, fetch: FakeFetch
) -> None:
    fetch.script = [TokenFetchError("token endpoint answered HTTP 502")]
    cache = make_cache(fetch)
    with pytest.raises(TokenUnavailable):
        await cache.get()

    for _ in range(5):
        with pytest.raises(TokenUnavailable) as caught:
            await asyncio.wait_for(cache.get(), timeout=0.5)
        assert caught.value.retry_after is not None
        assert caught.value.retry_after > 0
    assert fetch.calls == 1

    clock.now += BACKOFF_CAP + 1  # the backoff is over: the next get() tries again
    token = await cache.get()
    assert token.value == "token-2"
    assert fetch.calls == 2


async def test_retry_after_while_backing_off_is_the_wait_left(
    make_cache: Any, clock: FakeClock, fetch: FakeFetch
) -> None:
    fetch.script = [TokenFetchError("down")]
    cache = make_cache(fetch)
    with pytest.raises(TokenUnavailable):
        await cache.get()
    with pytest.raises(TokenUnavailable) as first:
        await cache.get()
    clock.now += 0.1
    with pytest.raises(TokenUnavailable) as later:
        await cache.get()
    assert first.value.retry_after is not None
    assert later.value.retry_after == pytest.approx(first.value.retry_after - 0.1)


async def test_rejected_credentials_message_names_oauth_error_and_client(
    make_cache: Any, fetch: FakeFetch, settings: Settings
) -> None:
    fetch.script = [rejected_error(settings)]
    cache = make_cache(fetch)
    with pytest.raises(TokenUnavailable) as caught:
        await cache.get()
    message = caught.value.message
    assert "invalid_client" in message
    assert CLIENT_ID in message
    assert "rejected" in message
    assert SECRET not in message


async def test_failing_endpoint_message_does_not_claim_rejection(
    make_cache: Any, fetch: FakeFetch, settings: Settings
) -> None:
    with pytest.raises(TokenFetchError) as failure:
        parse_token_answer(500, b"<html>oops</html>", settings)
    fetch.script = [failure.value]
    cache = make_cache(fetch)
    with pytest.raises(TokenUnavailable) as caught:
        await cache.get()
    assert "HTTP 500" in caught.value.message
    assert "rejected" not in caught.value.message


async def test_unexpected_fetch_exception_becomes_token_unavailable_and_backs_off(
    make_cache: Any, fetch: FakeFetch
) -> None:
    fetch.script = [RuntimeError("bug with " + SECRET)]
    cache = make_cache(fetch)
    with pytest.raises(TokenUnavailable) as caught:
        await cache.get()
    assert "RuntimeError" in caught.value.message
    assert SECRET not in caught.value.message
    with pytest.raises(TokenUnavailable):
        await cache.get()
    assert fetch.calls == 1


async def test_backoff_grows_and_is_capped(
    make_cache: Any, clock: FakeClock, fetch: FakeFetch
) -> None:
    failures = 14
    fetch.script = [TokenFetchError("down") for _ in range(failures)]
    cache = make_cache(fetch)
    delays: list[float] = []
    for _ in range(failures):
        with pytest.raises(TokenUnavailable):
            await cache.get()  # this one waits for a failing fetch
        with pytest.raises(TokenUnavailable) as caught:
            await cache.get()  # this one fails at once: retry_after is the backoff
        assert caught.value.retry_after is not None
        delays.append(caught.value.retry_after)
        clock.now += caught.value.retry_after + 0.001
    assert fetch.calls == failures
    assert all(0 < d <= BACKOFF_CAP for d in delays)
    # Equal jitter: two failures later the delay is at least twice as long, until the cap.
    assert all(delays[i + 2] > delays[i] for i in range(6))
    assert delays[-1] >= BACKOFF_CAP / 2
    assert delays[0] < 1.0


async def test_old_token_served_while_background_refresh_fails(
    make_cache: Any, clock: FakeClock
) -> None:
    fetch = FakeFetch(lifetime=0.4)
    cache = make_cache(fetch)
    start = clock.now
    async with refresher(cache):
        await wait_until(lambda: fetch.calls == 1 and cache.valid_token() is not None)
        token = cache.valid_token()
        assert token is not None
        fetch.script = [TokenFetchError("token endpoint answered HTTP 503")]
        clock.now = start + 0.25  # past refresh_at, before usable_until (0.36)
        await wait_until(lambda: fetch.calls == 2)
        await asyncio.sleep(0.01)
        assert await cache.get() is token
        assert cache.not_ready_reason is None


async def test_hanging_fetch_gives_token_unavailable_after_wait_timeout(
    make_cache: Any, fetch: FakeFetch
) -> None:
    fetch.gate = asyncio.Event()  # never set while we wait: the endpoint hangs
    cache = make_cache(fetch, wait_timeout=0.05)
    started = time.monotonic()
    with pytest.raises(TokenUnavailable) as caught:
        await cache.get()
    assert time.monotonic() - started < 1.0
    assert caught.value.retry_after is not None
    with pytest.raises(TokenUnavailable):
        await cache.get()  # joins the same hanging fetch
    assert fetch.calls == 1
    fetch.gate.set()  # the fetch still completes and its token is used
    await wait_until(lambda: cache.valid_token() is not None)
    assert (await cache.get()).value == "token-1"
    assert fetch.calls == 1


# -- what it tells about itself ----------------------------------------------------------------


def test_token_repr_and_str_never_contain_value() -> None:
    value = "eyJhbGciOiJIUzI1NiJ9.payload.signature-ABC123"
    token = Token(value, lifetime=3600.0, obtained_at=0.0, jitter=0.5)
    for text in (repr(token), str(token), f"{token}", f"{token!r}", repr([token])):
        assert value not in text
        assert "signature-ABC123" not in text
        assert "Token" in text


async def test_not_ready_reason_through_the_token_lifecycle(
    make_cache: Any, clock: FakeClock, fetch: FakeFetch
) -> None:
    fetch.script = [TokenFetchError("token endpoint http://x/connect/token timed out")]
    cache = make_cache(fetch)
    assert cache.not_ready_reason == "no access token fetched yet"

    with pytest.raises(TokenUnavailable):
        await cache.get()
    assert cache.not_ready_reason == "token endpoint http://x/connect/token timed out"

    clock.now += BACKOFF_CAP + 1
    token = await cache.get()
    assert cache.not_ready_reason is None

    clock.now = token.usable_until
    assert cache.not_ready_reason is not None


async def test_seconds_to_expiry_follows_the_clock(
    make_cache: Any, clock: FakeClock, fetch: FakeFetch
) -> None:
    cache = make_cache(fetch)
    assert cache.seconds_to_expiry() == 0.0
    await cache.get()
    clock.now += 600.0
    assert cache.seconds_to_expiry() == pytest.approx(3000.0)


# -- the background refresher ------------------------------------------------------------------


async def test_run_refresher_fetches_at_start_and_again_after_refresh_at(
    make_cache: Any, clock: FakeClock
) -> None:
    fetch = FakeFetch(lifetime=0.4)  # refresh_at is at most 0.2 s (fake) after obtaining
    cache = make_cache(fetch)
    start = clock.now
    async with refresher(cache):
        await wait_until(lambda: fetch.calls == 1)
        await wait_until(lambda: cache.valid_token() is not None)
        first = cache.valid_token()
        assert first is not None

        clock.now = start + 0.15  # before the earliest possible refresh_at (0.16)
        await asyncio.sleep(0.3)
        assert fetch.calls == 1

        clock.now = start + 0.2  # half the lifetime: the refresh is due
        await wait_until(lambda: fetch.calls == 2)
        await wait_until(lambda: cache.valid_token() is not first)
        current = cache.valid_token()
        assert current is not None
        assert current.value == "token-2"


async def test_run_refresher_retries_after_backoff(make_cache: Any, clock: FakeClock) -> None:
    fetch = FakeFetch(lifetime=3600.0)
    fetch.script = [TokenFetchError("down")]
    cache = make_cache(fetch)
    async with refresher(cache):
        await wait_until(lambda: fetch.calls == 1)
        await wait_until(lambda: cache.not_ready_reason == "down")
        clock.now += BACKOFF_CAP + 1
        await wait_until(lambda: cache.valid_token() is not None, timeout=BACKOFF_CAP)
        assert fetch.calls == 2


# -- rotation (issue 9) -----------------------------------------------------------------------


async def test_rotation_switches_over_only_when_the_new_secret_works(clock: FakeClock) -> None:
    endpoint = Endpoint(clock, good={"old"})
    cache = cache_for(endpoint, clock, secret="old")
    old = await cache.get()
    async with refresher(cache):
        with structlog.testing.capture_logs() as logs:
            cache.set_credentials(creds("bad-new"), "client_secret_file changed")
            await wait_until(lambda: len(endpoint.requests) == 2)
            await asyncio.sleep(0.02)
        assert await cache.get() is old
        assert cache.not_ready_reason is None
        errors = [e for e in logs if e["log_level"] == "error"]
        assert any("new client secret was rejected" in e["event"] for e in errors)
        assert "bad-new" not in repr(logs)

        endpoint.good.add("good-new")
        with structlog.testing.capture_logs() as logs:
            cache.set_credentials(creds("good-new"), "SIGHUP")
            await wait_until(lambda: cache.valid_token() is not old)
        assert (await cache.get()).value == "token-for-good-new"
        assert any(e["event"] == "switched to the new credentials" for e in logs)
        assert "good-new" not in repr([{k: v for k, v in e.items() if k != "event"} for e in logs])


async def test_unchanged_credentials_cause_no_fetch(clock: FakeClock) -> None:
    endpoint = Endpoint(clock, good={"old"})
    cache = cache_for(endpoint, clock, secret="old")
    await cache.get()
    assert not cache.set_credentials(creds("old"), "SIGHUP")
    assert len(endpoint.requests) == 1


@pytest.mark.parametrize("lifetime", [0.0, -30.0])
async def test_expired_on_arrival_tokens_cause_no_refresh_storm(
    clock: FakeClock, lifetime: float
) -> None:
    fetch = FakeFetch(lifetime=lifetime)
    cache = make_cache_with(fetch, clock)
    start = clock.now
    async with refresher(cache):
        for _ in range(200):  # 20 fake seconds of busy requests with the refresher running
            with contextlib.suppress(TokenUnavailable):
                await cache.get()
            clock.now += 0.1
            await asyncio.sleep(0)
    # Backoff steps of 0.5 s doubling (with jitter) within 20 s: at most ~8 fetches, not 200.
    assert 1 <= fetch.calls <= 10
    assert cache.valid_token() is None
    assert clock.now - start == pytest.approx(20, abs=0.2)


@pytest.mark.parametrize("transient", [False, True])
async def test_a_failure_of_the_old_secret_in_flight_does_not_delay_the_new_one(
    clock: FakeClock, transient: bool
) -> None:
    endpoint = Endpoint(clock, good={"new"})
    gate = asyncio.Event()

    async def slow(credentials: Credentials | None = None) -> TokenAnswer:
        if credentials is not None and credentials.secret == "wrong":
            await gate.wait()
            if transient:
                endpoint.requests.append((clock.now, "wrong"))
                raise TokenFetchError("token endpoint answered HTTP 502")
        return await endpoint(credentials)

    cache = TokenCache(slow, wait_timeout=5.0, credentials=creds("wrong"), clock=clock)
    first = asyncio.create_task(cache.get())
    await asyncio.sleep(0.01)
    cache.set_credentials(creds("new"), "SIGHUP")  # while the old secret's request is out
    gate.set()
    with pytest.raises(TokenUnavailable):
        await first
    assert (await cache.get()).value == "token-for-new"
    assert [s for _, s in endpoint.requests] == ["wrong", "new"]
