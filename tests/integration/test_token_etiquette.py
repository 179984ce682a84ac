"""Token endpoint etiquette against the sandbox's imitation of Aspose's lockout (issue 8).

Aspose locks a client out for 10 minutes after more than 5 failed token requests in 10
minutes; the sandbox does the same (its window and duration can be shortened). The proxy must
never get there: at most 4 failed token requests per 10 minutes, for all its workers together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from pydantic import SecretStr

from proxy.app import create_app
from proxy.credentials import Credentials
from proxy.sandbox import STATE as SANDBOX_STATE
from proxy.server import Server, start_server
from proxy.settings import Settings
from proxy.state import STATE
from proxy.token_schedule import Policy, schedule_file
from tests.conftest import RunningSandbox, SandboxFactory
from tests.integration.conftest import held_tokens, proxy_settings
from tests.integration.test_workers import proxy_env, start_workers, wait_for

__all__ = ["start_workers"]  # a fixture used below

FORM = {"grant_type": "client_credentials", "client_id": "demo"}
# The default etiquette, 20 times faster: a 30 s window, steps of 1.5 s then 7.5 s.
SCALE = 20.0
FAST = Policy(
    window=600 / SCALE, first_step=30 / SCALE, step=150 / SCALE, default_retry_after=600 / SCALE
)


async def token_request(sandbox: RunningSandbox, secret: str) -> tuple[int, str | None, Any]:
    async with sandbox.session.post(
        f"{sandbox.url}/connect/token", data={**FORM, "client_secret": secret}
    ) as resp:
        return resp.status, resp.headers.get("Retry-After"), await resp.json()


# -- the sandbox imitates the lockout ------------------------------------------------------------


async def test_sandbox_locks_a_client_out_after_more_than_5_failures(
    sandbox: RunningSandbox,
) -> None:
    for _ in range(5):
        assert (await token_request(sandbox, "wrong"))[0] == 400
    status, retry_after, body = await token_request(sandbox, "wrong")
    assert (status, retry_after) == (429, "600")
    assert body == {"error": "too_many_requests"}
    status, _, _ = await token_request(sandbox, "demo-secret")  # locked out, right secret or not
    assert status == 429
    stats = await sandbox.stats()
    assert stats["failed_token_requests"] == 6
    assert stats["locked_out_requests"] == 2


async def test_sandbox_secret_change_lifts_the_lockout(sandbox: RunningSandbox) -> None:
    for _ in range(6):
        await token_request(sandbox, "wrong")
    await sandbox.control("rotate-secret", {"client_secret": "rotated"})
    assert (await token_request(sandbox, "rotated"))[0] == 200


async def test_sandbox_lockout_window_and_duration_are_configurable(
    sandbox_factory: SandboxFactory,
) -> None:
    sandbox = await sandbox_factory(lockout_threshold=1, lockout_window=60, lockout_duration=1)
    assert (await token_request(sandbox, "wrong"))[0] == 400
    status, retry_after, _ = await token_request(sandbox, "wrong")
    assert (status, retry_after) == (429, "1")
    await asyncio.sleep(1.1)
    assert (await token_request(sandbox, "demo-secret"))[0] == 200
    answer = await sandbox.control("lockout", {"threshold": 0, "duration": 30})
    assert answer == {"lockout": {"threshold": 0, "window": 60, "duration": 30}}
    assert (await token_request(sandbox, "wrong"))[:2] == (429, "30")


async def test_sandbox_lockout_switch_refuses_nonsense(sandbox: RunningSandbox) -> None:
    for body in ({"window": 0}, {"threshold": -1}, {"nope": 1}, {"duration": "x"}):
        async with sandbox.session.post(f"{sandbox.url}/_sandbox/lockout", json=body) as resp:
            assert resp.status == 400


# -- the proxy never triggers it ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def proxy_with(
    sandbox: RunningSandbox, policy: Policy | None = None, **overrides: Any
) -> AsyncIterator[tuple[Server, aiohttp.ClientSession]]:
    """A proxy in front of ``sandbox``; ``policy`` scales the etiquette down (a test knob)."""
    app = create_app(proxy_settings(sandbox.url, **overrides))
    if policy is not None:
        app[STATE].schedule_policy = policy
    server = await start_server(app, "127.0.0.1", 0, shutdown_grace=1)
    client = aiohttp.ClientSession()
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()


async def load(
    client: aiohttp.ClientSession, url: str, seconds: float, concurrency: int = 10
) -> list[tuple[int, str | None, dict[str, Any]]]:
    """Busy clients: requests back to back for ``seconds``; every answer."""
    answers: list[tuple[int, str | None, dict[str, Any]]] = []
    deadline = time.monotonic() + seconds

    async def one_client() -> None:
        while time.monotonic() < deadline:
            async with client.get(f"{url}/v4.0/words/storage/disc") as resp:
                body = await resp.json(content_type=None)
                answers.append((resp.status, resp.headers.get("Retry-After"), body))
            await asyncio.sleep(0.02)

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return answers


async def test_wrong_secret_under_load_stays_within_the_budget_and_never_locks_out(
    sandbox_factory: SandboxFactory,
) -> None:
    # Time-scaled: 20 s here are 400 s of the real schedule; the sandbox's lockout is scaled
    # the same way (more than 5 failures in 30 s).
    sandbox = await sandbox_factory(lockout_window=600 / SCALE, lockout_duration=600 / SCALE)
    async with proxy_with(sandbox, FAST, client_secret=SecretStr("wrong")) as (server, client):
        answers = await load(client, server.url, 20)
        async with client.get(f"{server.url}/readyz") as resp:
            ready = resp.status, await resp.json()
    stats = await sandbox.stats()
    # Was: 7 failed token requests in the first 40 s (0.5 s doubling backoff).
    assert 2 <= stats["failed_token_requests"] <= 4
    assert stats["locked_out_requests"] == 0
    assert len(answers) > 500
    for status, retry_after, body in answers:
        assert status == 503
        assert body["Error"]["Code"] == "token_unavailable"
        assert "rejected the credentials" in body["Error"]["Message"]
        assert retry_after is not None and int(retry_after) >= 1
    assert ready[0] == 503
    assert "rejected the credentials" in ready[1]["reason"]


async def test_wrong_secret_with_the_real_schedule_no_fast_retries(
    sandbox: RunningSandbox,
) -> None:
    async with proxy_with(sandbox, client_secret=SecretStr("wrong")) as (server, client):
        answers = await load(client, server.url, 10, concurrency=4)
    # The 0.5 s doubling backoff made 5 failed requests in these 10 s; the next is due at 30 s.
    assert (await sandbox.stats())["failed_token_requests"] == 1
    retry_afters = [int(r) for _, r, _ in answers if r is not None]
    assert len(retry_afters) == len(answers) > 100
    assert min(retry_afters) >= 20 and max(retry_afters) <= 30  # honest: the 30 s step


async def test_429_from_the_token_endpoint_no_request_before_retry_after(
    sandbox_factory: SandboxFactory,
) -> None:
    sandbox = await sandbox_factory(lockout_threshold=0, lockout_duration=600)
    async with proxy_with(sandbox, client_secret=SecretStr("wrong")) as (server, client):
        assert await wait_for(lambda: sandbox_token_requests(sandbox) >= 1)
        answers = await load(client, server.url, 3, concurrency=4)
        async with client.get(f"{server.url}/readyz") as resp:
            ready = resp.status, await resp.json()
        # A new secret does not jump the queue: the 429 still holds.
        app = server.runner.app
        held_tokens(app).set_credentials(Credentials("demo", SecretStr("demo-secret")), "SIGHUP")
        await asyncio.sleep(1)
        answers += await load(client, server.url, 1, concurrency=2)
    assert sandbox_token_requests(sandbox) == 1
    assert ready[0] == 503
    assert "429" in ready[1]["reason"] and "no token request before" in ready[1]["reason"]
    for status, retry_after, body in answers:
        assert status == 503
        assert "429" in body["Error"]["Message"]
        assert retry_after is not None and 590 <= int(retry_after) <= 600


def sandbox_token_requests(sandbox: RunningSandbox) -> int:
    return sandbox.app[SANDBOX_STATE].stats.token_requests


async def test_transient_token_endpoint_failures_keep_the_fast_backoff(
    sandbox: RunningSandbox,
) -> None:
    await sandbox.token_fault(status=500, body="<html>oops</html>", count=3)
    async with proxy_with(sandbox) as (server, client):
        assert await wait_for(lambda: sandbox_token_requests(sandbox) >= 4, timeout=10)
        async with client.get(f"{server.url}/readyz") as resp:
            assert resp.status == 200
    # 3 failures and the success within a few seconds: 0.5 s doubling, not 30 s steps.


# -- the budget is the whole proxy's, not each worker's --------------------------------------------


async def test_workers_share_the_budget_one_failure_not_one_per_worker(
    start_workers: Callable[..., Any], sandbox: RunningSandbox
) -> None:
    running = await start_workers(
        "--workers", "3", env=proxy_env(sandbox, ASPOSE_PROXY_CLIENT_SECRET="wrong")
    )
    assert await wait_for(lambda: len(running.workers()) == 3)
    for _ in range(30):  # fresh connections: spread over the workers
        status, headers, _ = await running.get("/v4.0/words/storage/disc")
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
    await asyncio.sleep(2)
    assert (await sandbox.stats())["failed_token_requests"] == 1
    state = schedule_file(Settings()).read_text()  # the one all workers use
    assert '"rejected":{"' in state
    assert "wrong" not in state
