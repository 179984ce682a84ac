"""Upstream faults: resets mid-response, stale pooled connections, the pool's idle timeout.

A request is sent upstream at most twice, and only after a 401 or a stale connection on an
idempotent method. The stale connection is made by a raw asyncio upstream below, which
closes a kept-alive connection the moment the next request arrives on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from proxy.upstream import is_stale_connection
from tests.conftest import RunningSandbox
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.rawhttp import serve_on_loopback
from tests.integration.test_lifecycle import established_to, wait_until
from tests.integration.test_replay import metric

ECHO = "/v4.0/sandbox/echo/x"
MiB = 1024 * 1024


@dataclass
class Seen:
    method: str
    connection: int  # which accepted connection carried it (1, 2, ...)
    nth: int  # its position on that connection
    authorization: str
    body_sha256: str | None  # None: the connection was closed before the body was read


@dataclass
class RawUpstream:
    """A keep-alive HTTP/1.1 upstream on loopback, scriptable per request.

    ``stale_from``: a request arriving as the ``stale_from``-th on a connection finds it
    closed (head read, nothing answered), like a pooled connection that upstream or a load
    balancer closed just as the request went out. ``status``: what each request is answered.
    """

    stale_from: int | None = 2
    status: Callable[[Seen], int] = lambda seen: 200
    seen: list[Seen] = field(default_factory=list)
    open_connections: int = 0
    url: str = ""
    _accepted: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        connection = self._accepted
        self.open_connections += 1
        nth = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                nth += 1
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split(" ", 1)[0]
                headers = {
                    k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)
                }
                seen = Seen(method, connection, nth, headers.get("authorization", ""), None)
                self.seen.append(seen)
                if self.stale_from is not None and nth >= self.stale_from:
                    return  # closed as the request arrives: nothing read, nothing answered
                seen.body_sha256 = await self._read_body(reader, headers)
                status = self.status(seen)
                body = json.dumps({"n": len(self.seen), "sha256": seen.body_sha256}).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + (b"" if method == "HEAD" else body)
                )
                await writer.drain()
        finally:
            self.open_connections -= 1
            writer.close()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> str:
        digest = hashlib.sha256()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                digest.update(chunk[:-2])
                if size == 0:
                    break
        else:
            left = int(headers.get("content-length", "0"))
            while left:
                chunk = await reader.read(min(left, 65536))
                if not chunk:
                    raise ConnectionError("body cut short")
                digest.update(chunk)
                left -= len(chunk)
        return digest.hexdigest()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream()
    server, port = await serve_on_loopback(upstream.serve)
    upstream.url = f"http://127.0.0.1:{port}"
    yield upstream
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2)


async def proxy_to(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, upstream: RawUpstream, **overrides: object
) -> RunningProxy:
    """A proxy to ``upstream`` that has pooled connection 1 (a GET of /warm, answered 200)."""
    proxy = await proxy_factory(
        upstream=upstream.url, token_url=f"{sandbox.url}/connect/token", **overrides
    )
    async with proxy.client.get(proxy.url + "/warm") as response:
        assert response.status == 200
    return proxy


async def stale_metric(proxy: RunningProxy, outcome: str) -> float:
    async with proxy.client.get(proxy.url + "/metrics") as response:
        text = await response.text()
    prefix = f'aspose_proxy_upstream_stale_connection_total{{outcome="{outcome}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- resets mid-response -----------------------------------------------------------------


async def test_reset_mid_response_aborts_it_and_leaves_a_healthy_pool(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    sandbox_port = int(sandbox.url.rsplit(":", 1)[1])
    async with proxy.client.get(proxy.url + ECHO) as response:  # a pooled connection exists
        assert response.status == 200
    for _ in range(3):
        await sandbox.api_fault(reset=True, count=1)
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(10), proxy.client.get(proxy.url + ECHO) as response:
                assert response.status == 200  # headers went out before upstream broke
                await response.read()  # ... but the body is visibly cut, never complete
    # The broken connections were dropped, not parked: many requests at once all succeed...
    results = await asyncio.gather(*(echo_sha(proxy, b"%d" % i) for i in range(30)))
    assert results == [hashlib.sha256(b"%d" % i).hexdigest() for i in range(30)]
    # ... and then sequential ones reuse the pool instead of piling up connections.
    for i in range(20):
        assert await echo_sha(proxy, b"s%d" % i) == hashlib.sha256(b"s%d" % i).hexdigest()
    assert established_to(sandbox_port) <= 32  # 30 from the burst (+ token, + control)
    assert await metric(proxy, "aspose_proxy_replays_total") == 0


async def echo_sha(proxy: RunningProxy, data: bytes) -> str:
    async with proxy.client.put(proxy.url + ECHO, data=data) as response:
        assert response.status == 200, await response.text()
        sha: str = (await response.json())["body_sha256"]
        return sha


# --- stale pooled connections ------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
async def test_stale_pooled_connection_is_retried_once_for_idempotent_methods(
    proxy_factory: ProxyFactory,
    sandbox: RunningSandbox,
    raw_upstream: RawUpstream,
    method: str,
) -> None:
    proxy = await proxy_to(proxy_factory, sandbox, raw_upstream)
    async with proxy.client.request(method, proxy.url + "/again", data=b"payload") as response:
        assert response.status == 200
        await response.read()
    attempts = [(s.method, s.connection, s.nth) for s in raw_upstream.seen[1:]]
    assert attempts == [(method, 1, 2), (method, 2, 1)]  # stale on 1, once more on a fresh one
    assert await stale_metric(proxy, "retried") == 1
    assert await stale_metric(proxy, "failed") == 0


async def test_stale_pooled_connection_is_not_retried_for_post(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, raw_upstream: RawUpstream
) -> None:
    """POST is not idempotent: upstream may have acted on it, so it is never resent. The
    client gets 502 upstream_unreachable and may decide itself; the failure is counted."""
    proxy = await proxy_to(proxy_factory, sandbox, raw_upstream)
    async with proxy.client.post(proxy.url + "/create", data=b"once") as response:
        assert response.status == 502
        assert (await response.json())["Error"]["Code"] == "upstream_unreachable"
    assert [s.method for s in raw_upstream.seen] == ["GET", "POST"]
    assert await stale_metric(proxy, "failed") == 1
    assert await stale_metric(proxy, "retried") == 0
    async with proxy.client.post(proxy.url + "/create", data=b"next") as response:
        assert response.status == 200  # a fresh connection for the next one


async def test_stale_connection_during_a_streamed_upload_resends_the_whole_body(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, raw_upstream: RawUpstream
) -> None:
    proxy = await proxy_to(proxy_factory, sandbox, raw_upstream, body_memory_limit=64 * 1024)
    data = bytes(range(256)) * (12 * 1024)  # 3 MiB: teed upstream and to the spool
    async with proxy.client.put(proxy.url + "/file", data=data) as response:
        assert response.status == 200
        assert (await response.json())["sha256"] == hashlib.sha256(data).hexdigest()
    assert [(s.connection, s.nth) for s in raw_upstream.seen[1:]] == [(1, 2), (2, 1)]


async def test_stale_connection_then_401_is_not_sent_a_third_time(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, raw_upstream: RawUpstream
) -> None:
    """At most twice: the stale retry spent the one resend, so its 401 goes to the client."""
    raw_upstream.status = lambda seen: 401 if seen.connection == 2 else 200
    proxy = await proxy_to(proxy_factory, sandbox, raw_upstream)
    async with proxy.client.get(proxy.url + "/doc") as response:
        assert response.status == 401
    assert len(raw_upstream.seen) == 3  # warm-up, stale, retried: no replay on top
    assert await metric(proxy, "aspose_proxy_replays_total") == 0


async def test_401_replay_is_never_followed_by_a_stale_retry(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, raw_upstream: RawUpstream
) -> None:
    """The 401 spent the one resend: a stale connection on the replay is a 502."""
    raw_upstream.stale_from = 3  # the replay goes out on the kept-alive connection: stale
    raw_upstream.status = lambda seen: 401 if seen.nth == 2 else 200
    proxy = await proxy_to(proxy_factory, sandbox, raw_upstream)
    async with proxy.client.get(proxy.url + "/doc") as response:
        assert response.status == 502
    # warm-up, the 401, the stale replay: nothing more
    assert [(s.connection, s.nth) for s in raw_upstream.seen] == [(1, 1), (1, 2), (1, 3)]
    assert await stale_metric(proxy, "failed") == 1


async def test_pool_idle_timeout_closes_idle_upstream_connections(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, raw_upstream: RawUpstream
) -> None:
    """upstream_keepalive_timeout: idle pooled connections are closed by the proxy itself,
    before a load balancer's idle timeout can close them under a request."""
    raw_upstream.stale_from = None
    proxy = await proxy_to(proxy_factory, sandbox, raw_upstream, upstream_keepalive_timeout=0.3)
    assert raw_upstream.open_connections == 1
    assert await wait_until(lambda: raw_upstream.open_connections == 0, timeout=3)
    async with proxy.client.get(proxy.url + "/two") as response:
        assert response.status == 200
    assert [s.connection for s in raw_upstream.seen] == [1, 2]
    assert await stale_metric(proxy, "retried") == 0


def test_default_pool_idle_timeout_is_below_load_balancer_idle_timeouts() -> None:
    from proxy.settings import Settings

    assert Settings().upstream_keepalive_timeout <= 15  # AWS ALB 60 s, many others 30 s


@pytest.mark.parametrize(
    ("error", "stale"),
    [
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientConnectionResetError("Cannot write to closing transport"), True),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), True),
        (aiohttp.ClientConnectorError(None, OSError(111, "refused")), False),  # type: ignore[arg-type]
        (TimeoutError(), False),
        (aiohttp.ClientPayloadError("cut"), False),
    ],
)
def test_what_counts_as_a_stale_connection(error: BaseException, stale: bool) -> None:
    """Broken before the answer counts; never connected (nothing sent) and timeouts do not."""
    assert is_stale_connection(error) is stale
