"""Issue 17: workers and replicas act as one (real processes, real redis-server, the sandbox)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from pydantic import SecretStr

from proxy.credentials import Credentials
from proxy.sandbox import STATE
from proxy.token_fingerprints import client_digest
from proxy.usage.budgets import Budgets
from proxy.usage.factory import open_store
from proxy.usage.rules import Budget
from proxy.usage.store import current_hour
from tests.conftest import RunningSandbox, SandboxFactory
from tests.integration.conftest import ProxyFactory, RunningProxy, held_tokens
from tests.integration.rawhttp import serve_on_loopback
from tests.integration.test_workers import Supervised, proxy_env, start_workers, wait_for
from tests.redis_server import APPEND_ONLY, start_redis

__all__ = ["start_workers"]  # the fixture, shared with test_workers.py

KUBERNETES_WARNING = "SQLite usage_store inside Kubernetes"


async def test_budgets_on_sqlite_in_a_pod_are_warned_about_once_not_once_per_worker(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], tmp_path: Path
) -> None:
    env = proxy_env(
        sandbox,
        KUBERNETES_SERVICE_HOST="10.96.0.1",
        ASPOSE_PROXY_USAGE_STORE=f"sqlite://{tmp_path / 'usage.db'}",
        ASPOSE_PROXY_BUDGETS=json.dumps([{"client": "*", "calls": 100}]),
    )
    running = await start_workers("--workers", "2", env=env)
    status, _, _ = await running.get("/healthz")
    assert status == 200
    assert running.log.count(KUBERNETES_WARNING) == 1, running.log


async def test_budgets_with_no_store_and_two_workers_are_warned_about_once(
    sandbox: RunningSandbox, start_workers: Callable[..., Any]
) -> None:
    """usage_store = "off": each worker counts alone (budget 3, two workers: up to 6 pass)."""
    env = proxy_env(
        sandbox,
        ASPOSE_PROXY_USAGE_STORE="off",
        ASPOSE_PROXY_BUDGETS=json.dumps([{"client": "*", "calls": 3}]),
    )
    running = await start_workers("--workers", "2", env=env)
    status, _, _ = await running.get("/healthz")
    assert status == 200
    assert running.log.count("usage_store off and several workers") == 1, running.log


DISC = "/v4.0/words/storage/disc"
BUDGET_OF_3 = json.dumps([{"client": "*", "calls": 3}])


def sqlite_env(sandbox: RunningSandbox, store: Path, **extra: str) -> dict[str, str]:
    return proxy_env(
        sandbox,
        ASPOSE_PROXY_USAGE_STORE=f"sqlite://{store}",
        ASPOSE_PROXY_USAGE_FLUSH_INTERVAL="0.1",
        **extra,
    )


async def test_two_workers_on_sqlite_share_a_budget_of_3_exactly(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], tmp_path: Path
) -> None:
    env = sqlite_env(sandbox, tmp_path / "usage.db", ASPOSE_PROXY_BUDGETS=BUDGET_OF_3)
    running = await start_workers("--workers", "2", env=env)
    # Each call on a new connection: SO_REUSEPORT spreads them over both workers.
    statuses = [(await running.get(DISC))[0] for _ in range(8)]
    assert sorted(statuses) == [200] * 3 + [429] * 5, statuses


async def test_two_run_processes_on_one_sqlite_file_share_a_budget_of_3_exactly(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], tmp_path: Path
) -> None:
    env = sqlite_env(sandbox, tmp_path / "usage.db", ASPOSE_PROXY_BUDGETS=BUDGET_OF_3)
    first, second = [await start_workers(env=env) for _ in range(2)]
    statuses = [(await (first, second)[i % 2].get(DISC))[0] for i in range(8)]
    assert sorted(statuses) == [200] * 3 + [429] * 5, statuses


# -- the token schedule in Redis: one failure budget, one 429 block for every replica ----------


def redis_env(
    sandbox: RunningSandbox, redis_url: str, tmp_path: Path, name: str, **extra: str
) -> dict[str, str]:
    """A proxy process on ``redis_url`` with its own state and run directories."""
    own = tmp_path / name
    own.mkdir()
    return proxy_env(
        sandbox,
        ASPOSE_PROXY_USAGE_STORE=redis_url,
        XDG_STATE_HOME=str(own),
        TMPDIR=str(own),
        **extra,
    )


async def steady_traffic(proxies: list[Supervised], seconds: float) -> list[int]:
    """Each proxy gets a request every 0.1 s for ``seconds``; every status."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as client:

        async def one(proxy: Supervised) -> None:
            while time.monotonic() < deadline:
                async with client.get(proxy.url + DISC) as response:
                    await response.read()
                    statuses.append(response.status)
                await asyncio.sleep(0.1)

        await asyncio.gather(*(one(proxy) for proxy in proxies))
    return statuses


def token_stats(sandbox: RunningSandbox) -> tuple[int, int]:
    """(token requests, failed ones) the sandbox has seen."""
    stats = sandbox.app[STATE].stats
    return stats.token_requests, stats.failed_token_requests


@pytest.mark.timeout(120)
async def test_three_replicas_with_a_wrong_secret_make_at_most_4_failed_token_requests(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], redis_url: str, tmp_path: Path
) -> None:
    wrong = {"ASPOSE_PROXY_CLIENT_SECRET": "a-wrong-secret-of-some-length"}
    replicas = [
        await start_workers(env=redis_env(sandbox, redis_url, tmp_path, f"r{i}", **wrong))
        for i in range(3)
    ]
    statuses = await steady_traffic(replicas, 40)
    assert set(statuses) == {503}
    requests, failed = token_stats(sandbox)
    # Alone, each would make 2 in 40 s (at 0 s and 30 s): 6, past Aspose's lockout at 6.
    assert 1 <= failed <= 4 and requests == failed, (requests, failed)
    assert sandbox.app[STATE].stats.locked_out_requests == 0


async def test_a_429_seen_by_one_replica_keeps_a_replica_started_later_from_asking(
    sandbox_factory: SandboxFactory,
    start_workers: Callable[..., Any],
    redis_url: str,
    tmp_path: Path,
) -> None:
    # A failed token request gets 429 Retry-After: 600 (the lockout, from the first one on).
    sandbox = await sandbox_factory(lockout_threshold=0, lockout_duration=600)
    wrong = {"ASPOSE_PROXY_CLIENT_SECRET": "a-wrong-secret-of-some-length"}
    first = await start_workers(env=redis_env(sandbox, redis_url, tmp_path, "first", **wrong))
    assert await wait_for(lambda: token_stats(sandbox)[0] >= 1)
    second = await start_workers(env=redis_env(sandbox, redis_url, tmp_path, "second", **wrong))
    await asyncio.sleep(1)
    status, _, body = await second.get("/readyz")
    assert status == 503
    ready = json.loads(body)
    assert "429" in ready["reason"] and "no token request before" in ready["reason"], ready
    assert "429" in ready["token_schedule"]["blocked_reason"]  # the shared block, named
    status, headers, _ = await second.get(DISC)
    assert status == 503 and 590 <= int(headers["Retry-After"]) <= 600
    assert token_stats(sandbox)[0] == 1  # the first replica's, and no other
    assert (await first.get("/readyz"))[0] == 503


async def test_two_proxies_on_one_redis_make_one_token_request_between_them(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], redis_url: str, tmp_path: Path
) -> None:
    first = await start_workers(env=redis_env(sandbox, redis_url, tmp_path, "first"))
    assert (await first.get(DISC))[0] == 200
    second = await start_workers(env=redis_env(sandbox, redis_url, tmp_path, "second"))
    assert (await second.get(DISC))[0] == 200
    assert token_stats(sandbox) == (1, 0)  # the second took the first's token from Redis
    assert "token taken from another replica" in second.log
    client = redis.Redis.from_url(redis_url)
    stored = b"".join(client.dump(key) or b"" for key in client.keys("*"))
    client.close()
    assert b"eyJ" not in stored  # no JWT (the sandbox's tokens) in clear


# -- rate limits: one bucket per rule for every process sharing the store -----------------------

ONE_RATE_FOR_EVERYONE = [{"client": "*", "per_second": 0.2, "burst": 10}]


@pytest.mark.parametrize("engine", ["redis", "sqlite"])
async def test_two_proxies_share_one_rate_limit_bucket(
    engine: str, proxy_factory: ProxyFactory, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = request.getfixturevalue("redis_url") if engine == "redis" else None
    store = store or f"sqlite://{tmp_path / 'usage.db'}"
    proxies = [
        await proxy_factory(usage_store=store, rate_limits=ONE_RATE_FOR_EVERYONE) for _ in range(2)
    ]
    statuses = []
    for i in range(40):  # alternated, as fast as they answer
        proxy = proxies[i % 2]
        async with proxy.client.get(proxy.url + DISC) as response:
            await response.read()
            statuses.append(response.status)
    passed = statuses.count(200)
    # A burst of 10 and 0.2 per second for the few seconds this takes: 10 or 11, not 20.
    assert 10 <= passed <= 11 and statuses.count(429) == 40 - passed, statuses


async def test_readyz_and_the_status_page_show_a_failure_another_replica_met(
    sandbox: RunningSandbox, proxy_factory: ProxyFactory, redis_url: str
) -> None:
    rotating, other = [await proxy_factory(usage_store=redis_url) for _ in range(2)]
    for proxy in (rotating, other):  # each with its first token (fetched in the background)
        for _ in range(100):
            if (await get_json(proxy, "/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        assert (await get_json(proxy, "/readyz")) == (200, {"status": "ready"})
    # A mistyped rotation on one replica: one failed token request, in the shared schedule.
    tokens = held_tokens(rotating.server.runner.app)
    tokens.set_credentials(Credentials("demo", SecretStr("a-mistyped-secret-rotation")), "test")
    assert await wait_for(lambda: token_stats(sandbox)[1] == 1)
    status, ready = await get_json(other, "/readyz")
    assert status == 200 and ready["status"] == "ready"  # its own token still serves
    assert ready["token_schedule"]["failed_token_requests"] == 1
    assert ready["token_schedule"]["failure_budget"] == 4
    async with other.client.get(other.url + "/_proxy/") as response:
        page = await response.text()
    assert "1 of at most 4" in page


async def get_json(proxy: RunningProxy, path: str) -> tuple[int, dict[str, Any]]:
    async with proxy.client.get(proxy.url + path) as response:
        return response.status, await response.json()


# -- Redis goes away mid-run ------------------------------------------------------------------


def calls_in_redis(client: redis.Redis) -> int:
    total = 0
    for key in client.scan_iter("aspose-proxy:usage:*"):
        for field, value in client.hgetall(key).items():
            if field.startswith(b"calls\t"):
                total += int(value)
    return total


def schedule_in_redis(client: redis.Redis) -> dict[str, Any]:
    [key] = list(client.scan_iter("aspose-proxy:token-schedule:*[^k]"))  # not the lock
    state: dict[str, Any] = json.loads(client.get(key) or b"{}")
    return state


@pytest.mark.timeout(120)
async def test_redis_stopped_mid_run_no_crash_conservative_schedule_counts_arrive_later(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], tmp_path: Path
) -> None:
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server, url = start_redis(redis_dir, persistence=APPEND_ONLY)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    secret = tmp_path / "client-secret"
    secret.write_text("demo-secret")
    env = redis_env(
        sandbox, url, tmp_path, "proxy",
        ASPOSE_PROXY_CLIENT_SECRET_FILE=str(secret),
        ASPOSE_PROXY_USAGE_FLUSH_INTERVAL="0.2",
        ASPOSE_PROXY_BUDGETS=json.dumps([{"client": "*", "product": "cells", "calls": 100}]),
    )  # fmt: skip
    del env["ASPOSE_PROXY_CLIENT_SECRET"]
    proxy = await start_workers(env=env)
    client = redis.Redis.from_url(url)
    try:
        for _ in range(3):
            assert (await proxy.get(DISC))[0] == 200
        assert await wait_for(lambda: calls_in_redis(client) == 3)

        server.terminate()
        server.wait(timeout=10)
        for _ in range(4):  # no budget covers these: forwarded, counted in memory
            assert (await proxy.get(DISC))[0] == 200
        for _ in range(2):  # a budget does: refused, the cap holds
            status, _, body = await proxy.get("/v3.0/cells/x")
            assert status == 503 and json.loads(body)["Error"]["Code"] == "usage_store_unavailable"
        # Two mistyped rotations: the conservative schedule tries the first only (the shared
        # one, with 4 failures a window, would try both at once).
        secret.write_text("a-mistyped-secret-number-one")
        assert await wait_for(lambda: token_stats(sandbox)[1] == 1, timeout=15)
        secret.write_text("a-mistyped-secret-number-two")
        await asyncio.sleep(5)
        assert token_stats(sandbox)[1] == 1
        assert (await proxy.get(DISC))[0] == 200  # still serving with the token in hand
        assert proxy.log.count("token schedule store unreachable") == 1
        assert proxy.log.count("usage store unreachable") == 1

        server, _ = start_redis(redis_dir, port=port, persistence=APPEND_ONLY)
        # 3 before, 5 during the outage (kept in memory until Redis took them).
        assert await wait_for(lambda: calls_in_redis(client) == 8, timeout=15)
        # Under the budget again: forwarded (the sandbox answers 404 for this path).
        assert (await proxy.get("/v3.0/cells/x"))[0] == 404

        async def failure_reached_redis() -> bool:
            await proxy.get("/readyz")  # reads the shared schedule, merging the outage's
            attempts = schedule_in_redis(client)["attempts"]
            return [a["state"] for a in attempts] == ["rejected"]

        for _ in range(40):
            if await failure_reached_redis():
                break
            await asyncio.sleep(0.5)
        assert await failure_reached_redis()
        assert proxy.process.returncode is None
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)


# -- a slow Redis never stalls the event loop -----------------------------------------------------


class TricklingRedis:
    """A TCP relay to a real redis-server. Once ``stall`` is set, a command naming the token
    schedule is not relayed: its reply trickles in, a byte every 0.1 s, until ``release``
    (each byte resets a client's socket timeout, so a blocking client waits for all of it)."""

    def __init__(self, target: str) -> None:
        self.target_port = int(target.rsplit(":", 1)[1].split("/")[0])
        self.stall = False
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.relays: dict[asyncio.Task[Any], list[asyncio.StreamWriter]] = {}

    async def start(self) -> str:
        self.server, port = await serve_on_loopback(self._relay)
        return f"redis://127.0.0.1:{port}/0"

    async def close(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.close()
        for streams in self.relays.values():
            for stream in streams:
                stream.close()
        await asyncio.gather(*self.relays, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        task = asyncio.current_task()
        assert task is not None
        self.relays[task] = [writer, up_writer]

        async def down() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        relaying = asyncio.create_task(down())
        try:
            while data := await reader.read(65536):
                if self.stall and b"token-schedule" in data:
                    self.stalled.set()
                    writer.write(b"$1000000\r\n")
                    deadline = time.monotonic() + 60
                    while not self.release.is_set() and time.monotonic() < deadline:
                        writer.write(b"x")
                        await writer.drain()
                        await asyncio.sleep(0.1)
                    break
                up_writer.write(data)
                await up_writer.drain()
        except ConnectionError:
            pass  # the client gave up on the reply
        finally:
            for stream in (writer, up_writer):
                stream.close()
            with contextlib.suppress(ConnectionError):
                await relaying


@pytest.mark.timeout(120)
async def test_a_redis_that_answers_a_byte_at_a_time_stalls_no_health_check_or_forwarded_call(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], redis_url: str, tmp_path: Path
) -> None:
    """Issue 17 follow-up: the token schedule's Redis calls waited on the event loop; while a
    token request waited for a slow Redis, /healthz and calls with a token in hand waited too."""
    relay = TricklingRedis(redis_url)
    secret = tmp_path / "client-secret"
    secret.write_text("demo-secret")
    env = redis_env(sandbox, await relay.start(), tmp_path, "proxy")
    env["ASPOSE_PROXY_CLIENT_SECRET_FILE"] = str(secret)
    del env["ASPOSE_PROXY_CLIENT_SECRET"]
    try:
        proxy = await start_workers(env=env)
        assert (await proxy.get(DISC))[0] == 200  # a token in hand
        relay.stall = True
        secret.write_text("a-rotated-secret-to-try")  # a token request: it asks the schedule
        await asyncio.wait_for(relay.stalled.wait(), 30)
        timeout = aiohttp.ClientTimeout(total=10)  # the stall would last 60 s
        assert (await proxy.get("/healthz", timeout=timeout))[0] == 200
        assert (await proxy.get(DISC, timeout=timeout))[0] == 200
    finally:
        await relay.close()


# -- two applications on one store: never one budget or one rate bucket -----------------------


async def start_second_once_written(
    store: str, start: Callable[[], Awaitable[RunningProxy]]
) -> RunningProxy:
    """``start()`` once the first application's 3 calls are in the store's counts."""
    counts = open_store(store, application=client_digest("demo"))
    await counts.open()
    try:
        for _ in range(200):
            if sum(row.calls for row in await counts.rows(current_hour())) == 3:
                return await start()
            await asyncio.sleep(0.05)
    finally:
        await counts.close()
    raise AssertionError("the first proxy's calls never reached the store")


async def four_calls(proxy: RunningProxy) -> list[int]:
    statuses = []
    for _ in range(4):
        async with proxy.client.get(proxy.url + DISC) as response:
            await response.read()
            statuses.append(response.status)
    return statuses


@pytest.mark.parametrize("started", ["together", "after the first's calls were written"])
@pytest.mark.parametrize("engine", ["redis", "sqlite"])
async def test_two_applications_on_one_store_each_get_their_own_budget_of_3(
    engine: str,
    started: str,
    sandbox: RunningSandbox,
    sandbox_factory: SandboxFactory,
    proxy_factory: ProxyFactory,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Was: 200 200 200 through the first application's proxy, then 429 429 429 for the other
    (a shared counter; or, started later, a counter seeded from the other's written calls)."""
    store = request.getfixturevalue("redis_url") if engine == "redis" else None
    store = store or f"sqlite://{tmp_path / 'usage.db'}"
    other_app = await sandbox_factory(client_id="other-app", client_secret="other-app-secret-0")
    shared = {
        "usage_store": store,
        "usage_flush_interval": 0.1,
        "budgets": [{"client": "*", "calls": 3}],
    }

    async def start_second() -> RunningProxy:
        secret = SecretStr("other-app-secret-0")
        return await proxy_factory(
            other_app.url, client_id="other-app", client_secret=secret, **shared
        )

    first = await proxy_factory(**shared)
    second = await start_second() if started == "together" else None
    assert await four_calls(first) == [200, 200, 200, 429]
    if second is None:
        second = await start_second_once_written(store, start_second)
    assert await four_calls(second) == [200, 200, 200, 429]


@pytest.mark.parametrize("engine", ["redis", "sqlite"])
async def test_a_proxy_upgraded_mid_day_keeps_the_calls_its_budget_already_spent(
    engine: str, proxy_factory: ProxyFactory, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Before budgets were keyed per application, 2 of 3 were spent under the old key: the
    upgraded proxy passes 1 call, not 3."""
    store = request.getfixturevalue("redis_url") if engine == "redis" else None
    store = store or f"sqlite://{tmp_path / 'usage.db'}"
    rules = [Budget(client="*", calls=3)]
    older = open_store(store, application="")  # its ledger keys are the pre-upgrade ones
    await older.open()
    try:
        older_budgets = Budgets(rules, older.ledger)
        for _ in range(2):
            assert await older_budgets.reserve("anonymous", "words")
    finally:
        await older.close()
    proxy = await proxy_factory(usage_store=store, budgets=rules)
    assert await four_calls(proxy) == [200, 429, 429, 429]
