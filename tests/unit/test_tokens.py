"""TokenCache (proxy/tokens.py) with a fake clock and a fake fetch; parse_token_answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest

from proxy.credentials import Credentials
from proxy.errors import TokenUnavailable
from proxy.settings import Settings
from proxy.tokens import (
    BACKOFF_CAP,
    DEFAULT_LIFETIME,
    Token,
    TokenAnswer,
    TokenCache,
    TokenFetchError,
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
