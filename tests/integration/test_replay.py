"""Replay once on 401, single-flight renewal, and early refresh under load."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from tests.conftest import RunningSandbox, SandboxFactory
from tests.integration.conftest import ProxyFactory, RunningProxy

ECHO = "/v4.0/sandbox/echo/x"


async def metric(proxy: RunningProxy, name: str) -> float:
    async with proxy.client.get(proxy.url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def post_echo(proxy: RunningProxy, data: Any) -> dict[str, Any]:
    async with proxy.client.post(proxy.url + ECHO, data=data) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def test_revoked_token_is_renewed_and_the_5mib_body_replayed_identically(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(body_memory_limit=1024 * 1024)
    await post_echo(proxy, b"warm-up")
    await sandbox.control("revoke")
    body = bytes(range(256)) * (5 * 4096)
    echoed = await post_echo(proxy, body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    stats = await sandbox.stats()
    assert stats["revoked_token_requests"] == 1
    assert stats["token_requests"] == 2
    assert await metric(proxy, "aspose_proxy_replays_total") == 1


async def test_revoked_token_replays_a_chunked_upload(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    await post_echo(proxy, b"warm-up")
    await sandbox.control("revoke")
    parts = [b"p" * 300_000, b"q" * 5, b"r" * 2_000_000]

    async def chunks() -> Any:
        for part in parts:
            yield part

    echoed = await post_echo(proxy, chunks())
    assert echoed["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert (await sandbox.stats())["revoked_token_requests"] == 1


async def test_always_401_upstream_gets_exactly_two_attempts_and_its_own_body(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    await post_echo(proxy, b"warm-up")
    before = await sandbox.stats()
    await sandbox.api_fault(status=401)
    async with proxy.client.get(proxy.url + ECHO) as response:
        assert response.status == 401
        body = await response.json()
        assert "X-Proxy-Error" not in response.headers
    assert "RequestId" in body and body["Error"]["Code"]
    after = await sandbox.stats()
    assert after["api_requests"] - before["api_requests"] == 2
    assert after["token_requests"] - before["token_requests"] == 1


async def test_burst_after_revocation_fetches_one_token(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    await post_echo(proxy, b"warm-up")
    await sandbox.control("revoke")
    before = (await sandbox.stats())["token_requests"]
    results = await asyncio.gather(*(post_echo(proxy, b"x" * 100) for _ in range(20)))
    assert all(r["body_length"] == 100 for r in results)
    assert (await sandbox.stats())["token_requests"] - before == 1


async def test_short_lived_tokens_are_refreshed_early_and_never_sent_expired(
    sandbox_factory: SandboxFactory, proxy_factory: ProxyFactory
) -> None:
    short = await sandbox_factory(token_lifetime=3)
    proxy = await proxy_factory(upstream=short.url)
    deadline = time.monotonic() + 5
    statuses: list[int] = []

    async def worker() -> None:
        while time.monotonic() < deadline and len(statuses) < 5000:
            async with proxy.client.get(proxy.url + ECHO) as response:
                statuses.append(response.status)
                await response.read()
            await asyncio.sleep(0.01)

    await asyncio.gather(*(worker() for _ in range(4)))
    stats = await short.stats()
    assert set(statuses) == {200}
    assert stats["expired_token_requests"] == 0
    assert stats["unauthorized_sent"] == 0
    assert stats["token_requests"] >= 3  # refreshed before each 3 s token ran out
