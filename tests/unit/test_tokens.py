"""TokenCache (proxy/tokens.py) with a fake clock and a fake fetch; parse_token_answer."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest
import structlog
from pydantic import SecretStr

from proxy.credentials import Credentials
from proxy.errors import TokenUnavailable
from proxy.settings import Settings
from proxy.token_schedule import FileStore, MemoryStore, Schedule
from proxy.tokens import (
    BACKOFF_CAP,
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    Token,
    TokenAnswer,
    TokenCache,
    TokenFetchError,
    parse_retry_after,
    parse_token_answer,
)

SECRET = "s3cr3t-Value-never-shown"
CLIENT_ID = "my-client-id"


class FakeClock:
    """A mutable float the cache reads as its monotonic clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeFetch:
    """Counts calls; answers from ``script`` (answers or exceptions), else a fresh token.

    When ``gate`` is set, every call waits for it, so concurrent callers really overlap.
    """

    def __init__(self, lifetime: float = 3600.0) -> None:
        self.lifetime = lifetime
        self.calls = 0
        self.script: list[TokenAnswer | BaseException] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, credentials: Credentials | None = None) -> TokenAnswer:
        self.calls += 1
        n = self.calls
        if self.gate is not None:
            await self.gate.wait()
        for _ in range(3):  # give concurrent callers every chance to start a second fetch
            await asyncio.sleep(0)
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, BaseException):
                raise item
            return item
        return TokenAnswer(f"token-{n}", self.lifetime)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fetch() -> FakeFetch:
    return FakeFetch()


@pytest.fixture
def make_cache(clock: FakeClock) -> Callable[..., TokenCache]:
    def make(fetch: FakeFetch, wait_timeout: float = 5.0, seed: int = 7) -> TokenCache:
        return TokenCache(fetch, wait_timeout=wait_timeout, clock=clock, rng=random.Random(seed))

    return make


@pytest.fixture
def settings() -> Settings:
    return Settings(
        client_id=CLIENT_ID, client_secret=SECRET, upstream_url="http://upstream.example"
    )


def rejected_error(settings: Settings) -> TokenFetchError:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(400, b'{"error":"invalid_client"}', settings)
    return caught.value


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def refresher(cache: TokenCache) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(cache.run_refresher())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


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


# -- parse_token_answer -------------------------------------------------------------------------


def answer(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def test_parse_reads_access_token_and_expires_in(settings: Settings) -> None:
    result = parse_token_answer(
        200, answer({"access_token": "abc", "expires_in": 1800, "token_type": "Bearer"}), settings
    )
    assert result == TokenAnswer("abc", 1800.0)


def test_parse_without_expires_in_uses_jwt_exp(settings: Settings) -> None:
    exp = int(time.time()) + 1234
    token = jwt.encode({"exp": exp, "client_id": CLIENT_ID}, "k" * 32, algorithm="HS256")
    result = parse_token_answer(200, answer({"access_token": token}), settings)
    assert result.access_token == token
    assert result.expires_in == pytest.approx(1234, abs=3)


def test_parse_without_expires_in_or_jwt_uses_one_day(settings: Settings) -> None:
    result = parse_token_answer(200, answer({"access_token": "opaque-token"}), settings)
    assert result.expires_in == DEFAULT_LIFETIME == 86400.0


@pytest.mark.parametrize(
    "body",
    [{}, {"expires_in": 3600}, {"access_token": ""}, {"access_token": 5}, {"access_token": None}],
)
def test_parse_without_access_token_is_a_fetch_error(
    settings: Settings, body: dict[str, Any]
) -> None:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(200, answer(body), settings)
    assert not caught.value.rejected
    assert "access_token" in caught.value.reason


@pytest.mark.parametrize("status", [400, 401])
def test_parse_invalid_client_is_rejected_naming_client_not_secret(
    settings: Settings, status: int
) -> None:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(status, b'{"error":"invalid_client"}', settings)
    error = caught.value
    assert error.rejected
    assert CLIENT_ID in error.reason
    assert "invalid_client" in error.reason
    assert SECRET not in error.reason
    assert SECRET not in str(error)


def test_parse_rejected_oauth_error_text_is_sanitised(settings: Settings) -> None:
    body = answer({"error": 'invalid_client"\n<script>' + "x" * 500})
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(400, body, settings)
    assert "\n" not in caught.value.reason
    assert "<script>" not in caught.value.reason
    assert len(caught.value.reason) < 300


@pytest.mark.parametrize("body", [b"<html>Internal Server Error</html>", b"", b"\xff\xfe{"])
def test_parse_500_garbage_is_not_rejected(settings: Settings, body: bytes) -> None:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(500, body, settings)
    assert not caught.value.rejected
    assert "500" in caught.value.reason
    assert SECRET not in caught.value.reason


def test_parse_200_garbage_is_not_rejected(settings: Settings) -> None:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(200, b"not json", settings)
    assert not caught.value.rejected


# -- token endpoint etiquette (issue 8): rejected credentials, 429, the shared budget -----------

WINDOW = 600.0


def rejected(client_id: str = CLIENT_ID) -> TokenFetchError:
    return TokenFetchError(
        f"the token endpoint rejected the credentials for client_id '{client_id}' (invalid_client)",
        rejected=True,
    )


class Endpoint:
    """A fake token endpoint: accepts only ``good`` secrets, records each request's time."""

    def __init__(self, clock: FakeClock, good: set[str] | None = None) -> None:
        self.clock = clock
        self.good = good or set()
        self.requests: list[tuple[float, str]] = []
        self.failures: list[float] = []
        self.limited_until = 0.0

    async def __call__(self, credentials: Credentials | None = None) -> TokenAnswer:
        secret = credentials.secret if credentials else ""
        self.requests.append((self.clock.now, secret))
        await asyncio.sleep(0)
        if self.clock.now < self.limited_until:
            raise TokenFetchError(
                "429", rate_limited=True, retry_after=self.limited_until - self.clock.now
            )
        if secret not in self.good:
            self.failures.append(self.clock.now)
            raise rejected()
        return TokenAnswer(f"token-for-{secret}", 3600.0)

    def most_failures_in_a_window(self) -> int:
        return max(
            (
                sum(1 for t in self.failures if start <= t < start + WINDOW)
                for start in self.failures
            ),
            default=0,
        )


def creds(secret: str, client_id: str = CLIENT_ID) -> Credentials:
    return Credentials(client_id, SecretStr(secret))


def cache_for(
    endpoint: Any, clock: FakeClock, secret: str = "wrong", schedule: Any = None
) -> TokenCache:
    return TokenCache(
        endpoint,
        wait_timeout=5.0,
        credentials=creds(secret),
        clock=clock,
        rng=random.Random(3),
        schedule=schedule or Schedule(MemoryStore(), clock=clock),
    )


async def hammer(
    cache: TokenCache, clock: FakeClock, seconds: float, step: float = 1.0
) -> list[Any]:
    """A request every ``step`` fake seconds, as a busy client would send; the outcomes."""
    results: list[Any] = []
    end = clock.now + seconds
    while clock.now < end:
        try:
            results.append(await cache.get())
        except TokenUnavailable as exc:
            results.append(exc)
        clock.now += step
    return results


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


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("0", 0.0), (None, None), ("soon", None), ("-5", None)],
)
def test_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(90)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0


def test_parse_429_is_rate_limited_with_its_retry_after(settings: Settings) -> None:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(429, b'{"error":"x"}', settings, retry_after="600")
    assert caught.value.rate_limited and not caught.value.rejected
    assert caught.value.retry_after == 600.0


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


def make_cache_with(fetch: Any, clock: FakeClock) -> TokenCache:
    return TokenCache(fetch, wait_timeout=5.0, clock=clock, rng=random.Random(5))


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


# -- several processes share one schedule -------------------------------------------------------


async def test_workers_sharing_a_state_file_fail_once_not_n_times(
    clock: FakeClock, tmp_path: Any
) -> None:
    endpoint = Endpoint(clock)
    path = tmp_path / "token-state"
    workers = [
        cache_for(endpoint, clock, schedule=Schedule(FileStore(path), clock=clock))
        for _ in range(4)
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


async def test_workers_all_get_their_token_with_good_credentials(
    clock: FakeClock, tmp_path: Any
) -> None:
    endpoint = Endpoint(clock, good={"right"})
    gate = asyncio.Event()

    async def slow(credentials: Credentials | None = None) -> TokenAnswer:
        await gate.wait()  # all six ask at once: more requests out than the budget has slots
        return await endpoint(credentials)

    path = tmp_path / "token-state"
    workers = [
        cache_for(slow, clock, "right", Schedule(FileStore(path), clock=clock)) for _ in range(6)
    ]
    getting = [asyncio.create_task(w.get()) for w in workers]
    await asyncio.sleep(0.05)
    gate.set()
    tokens = await asyncio.gather(*getting)
    assert {t.value for t in tokens} == {"token-for-right"}
    assert len(endpoint.requests) == 6  # each worker its own token; successes cost no budget


def test_state_file_holds_no_secret(clock: FakeClock, tmp_path: Any) -> None:
    path = tmp_path / "token-state"
    schedule = Schedule(FileStore(path), clock=clock)
    fp = schedule.fingerprint(CLIENT_ID, SECRET)
    decision = schedule.ask(fp, have_token=False)
    schedule.record(decision.ticket, fp, "rejected", reason="rejected")
    text = path.read_text()
    assert SECRET not in text and fp in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_corrupt_state_file_starts_afresh(clock: FakeClock, tmp_path: Any) -> None:
    path = tmp_path / "token-state"
    path.write_text("{not json")
    schedule = Schedule(FileStore(path), clock=clock)
    assert schedule.ask("fp", have_token=False).allowed


# -- clock oddities ---------------------------------------------------------------------------


@pytest.mark.parametrize("expires_in", [0, -5, "-1", 0.0])
def test_parse_expires_in_zero_or_negative_is_expired(settings: Settings, expires_in: Any) -> None:
    result = parse_token_answer(
        200, answer({"access_token": "opaque", "expires_in": expires_in}), settings
    )
    assert result.expires_in == 0.0


@pytest.mark.parametrize("expires_in", [10**12, 1e308, "inf"])
def test_parse_absurd_expires_in_is_capped(settings: Settings, expires_in: Any) -> None:
    result = parse_token_answer(
        200, answer({"access_token": "opaque", "expires_in": expires_in}), settings
    )
    assert result.expires_in == MAX_LIFETIME


def test_parse_absurd_expires_in_is_capped_by_the_jwt_exp(settings: Settings) -> None:
    token = jwt.encode({"exp": int(time.time()) + 600}, "k" * 32, algorithm="HS256")
    result = parse_token_answer(200, answer({"access_token": token, "expires_in": 10**9}), settings)
    assert result.expires_in == pytest.approx(600, abs=3)


def test_parse_jwt_exp_already_past_wins_over_expires_in(settings: Settings) -> None:
    token = jwt.encode({"exp": int(time.time()) - 60}, "k" * 32, algorithm="HS256")
    result = parse_token_answer(200, answer({"access_token": token, "expires_in": 3600}), settings)
    assert result.expires_in == 0.0


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
