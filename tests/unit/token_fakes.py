"""Fakes shared by the token tests: a clock, a token fetch, a token endpoint with its rules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import SecretStr

from proxy.credentials import Credentials
from proxy.errors import TokenUnavailable
from proxy.settings import Settings
from proxy.token_client import TokenAnswer, TokenFetchError
from proxy.token_schedule import MemoryStore, Schedule
from proxy.tokens import TokenCache
from tests.fake_clock import FakeClock

SECRET = "s3cr3t-Value-never-shown"
CLIENT_ID = "my-client-id"


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


def answer(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def token_settings() -> Settings:
    return Settings(
        client_id=CLIENT_ID, client_secret=SECRET, upstream_url="http://upstream.example"
    )


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


def make_cache_with(fetch: Any, clock: FakeClock) -> TokenCache:
    return TokenCache(fetch, wait_timeout=5.0, clock=clock, rng=random.Random(5))
