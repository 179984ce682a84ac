"""Replay once on 401, single-flight renewal, and early refresh under load."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import RunningSandbox, SandboxFactory
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.rawhttp import open_to, read_head
from tests.integration.test_forwarding import header_values

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


# Uploads stream upstream while they arrive (issue 11); the replay comes from the spool copy.

BIG = bytes(range(256)) * (16 * 1024)  # 4 MiB: over body_memory_limit, so teed


@pytest.fixture
async def spilling_proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    """A proxy with a token in hand that keeps only 64 KiB of a body in memory."""
    proxy = await proxy_factory(body_memory_limit=64 * 1024)
    await post_echo(proxy, b"warm-up")
    return proxy


async def wait_for_stat(sandbox: RunningSandbox, name: str, value: int) -> None:
    for _ in range(200):
        if (await sandbox.stats())[name] >= value:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{name} never reached {value}")


async def upload_in_two_halves(
    proxy: RunningProxy, between: Callable[[], Awaitable[None]], *, expect_continue: bool = False
) -> dict[str, Any]:
    """PUT ``BIG`` on a raw socket: headers and the first half, ``between()``, the rest."""
    reader, writer = await open_to(proxy.url)
    try:
        expect = "Expect: 100-continue\r\n" if expect_continue else ""
        writer.write(
            f"PUT {ECHO} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(BIG)}\r\n"
            f"{expect}Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        if expect_continue:
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100 Continue")
        half = len(BIG) // 2
        writer.write(BIG[:half])
        await writer.drain()
        await between()
        writer.write(BIG[half:])
        await writer.drain()
        status, _ = await asyncio.wait_for(read_head(reader), 10)
        body = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


async def test_big_upload_reaches_upstream_before_the_client_has_sent_it_all(
    spilling_proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    proxy = spilling_proxy
    before = (await sandbox.stats())["api_requests"]

    async def upstream_has_it() -> None:  # half the body sent: upstream already has the request
        await wait_for_stat(sandbox, "api_requests", before + 1)

    echoed = await upload_in_two_halves(proxy, upstream_has_it)
    assert echoed["body_sha256"] == hashlib.sha256(BIG).hexdigest()
    assert header_values(echoed, "Content-Length") == [str(len(BIG))]
    assert await metric(proxy, "aspose_proxy_replays_total") == 0


async def test_401_before_the_upload_finished_is_replayed_whole_from_the_spool(
    spilling_proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    """Upstream answers 401 while the client is still uploading: the proxy reads the rest of
    the body into its copy, renews the token and replays the whole body."""
    proxy = spilling_proxy
    await sandbox.control("revoke")

    async def upstream_refused_it() -> None:  # the 401 came back mid-upload
        await wait_for_stat(sandbox, "revoked_token_requests", 1)

    echoed = await upload_in_two_halves(proxy, upstream_refused_it)
    assert echoed["body_sha256"] == hashlib.sha256(BIG).hexdigest()
    assert echoed["body_length"] == len(BIG)
    assert await metric(proxy, "aspose_proxy_replays_total") == 1
    assert (await sandbox.stats())["token_requests"] == 2


async def test_expect_100_continue_upload_is_replayed_after_401(
    spilling_proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    proxy = spilling_proxy
    await sandbox.control("revoke")

    async def nothing() -> None:
        pass

    echoed = await upload_in_two_halves(proxy, nothing, expect_continue=True)
    assert echoed["body_sha256"] == hashlib.sha256(BIG).hexdigest()
    assert not [name for name, _ in echoed["headers"] if name.lower() == "expect"]
    assert (await sandbox.stats())["revoked_token_requests"] == 1
    assert await metric(proxy, "aspose_proxy_replays_total") == 1


async def test_revoked_token_replays_a_spilled_chunked_upload(
    spilling_proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    proxy = spilling_proxy
    await sandbox.control("revoke")

    async def chunks() -> Any:
        for i in range(40):
            yield bytes([i]) * 100_000

    echoed = await post_echo(proxy, chunks())
    expected = b"".join(bytes([i]) * 100_000 for i in range(40))
    assert echoed["body_sha256"] == hashlib.sha256(expected).hexdigest()
    assert header_values(echoed, "Content-Length") == [str(len(expected))]
    assert (await sandbox.stats())["revoked_token_requests"] == 1


async def test_401_mid_upload_is_replayed_whole_when_spool_writes_are_slow(
    spilling_proxy: RunningProxy, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every spool write counts as slow, so the copy goes on in a thread (issue 11): the
    replay after a mid-upload 401 still sends the whole body."""
    monkeypatch.setattr("proxy.body.SLOW_WRITE", -1.0)
    proxy = spilling_proxy
    await sandbox.control("revoke")

    async def upstream_refused_it() -> None:
        await wait_for_stat(sandbox, "revoked_token_requests", 1)

    echoed = await upload_in_two_halves(proxy, upstream_refused_it)
    assert echoed["body_sha256"] == hashlib.sha256(BIG).hexdigest()
    assert echoed["body_length"] == len(BIG)
    assert await metric(proxy, "aspose_proxy_replays_total") == 1
