"""No reference cycles on the request path (issue 15, item 6).

A request that ends in an exception (a client that aborts an upload, streamed or not, or drops
a download, a body that stops coming, an upstream that resets or times out, a refusal) once
left cycles (exception -> traceback -> frame -> the exception, or the request's buffers) that
only a full collection freed: with a young-generation threshold of 10,000 the soak grew by 30
MiB. With the collector off and ``gc.DEBUG_SAVEALL`` on, whatever a collection would have
freed lands in ``gc.garbage``: none of it may be the proxy's.
"""

from __future__ import annotations

import asyncio
import gc
import types
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

import proxy
from proxy.aiohttp_internals import LeavingRequest
from tests.conftest import RunningSandbox
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.rawhttp import open_to

ECHO = "/v4.0/sandbox/echo/x"
PACKAGE = str(Path(proxy.__file__).parent)
SANDBOX = str(Path(PACKAGE) / "sandbox")


def _the_proxys(garbage: list[object]) -> Iterator[str]:
    """What in ``garbage`` belongs to the proxy's request path, described."""
    for obj in garbage:
        if isinstance(obj, types.FrameType):
            code = obj.f_code
            if code.co_filename.startswith(PACKAGE) and not code.co_filename.startswith(SANDBOX):
                yield f"frame {code.co_qualname} ({Path(code.co_filename).name})"
        elif isinstance(obj, LeavingRequest):
            yield f"request {obj.method} {obj.raw_path}"


async def _partial_upload(
    proxy: RunningProxy, declared: int, sent: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PUT that declares ``declared`` body bytes and sends ``sent`` of them."""
    reader, writer = await open_to(proxy.url)
    writer.write(
        f"PUT {ECHO} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {declared}\r\n\r\n".encode()
        + b"x" * sent
    )
    await writer.drain()
    return reader, writer


async def _aborted_upload(proxy: RunningProxy, declared: int) -> None:
    _, writer = await _partial_upload(proxy, declared, 300_000)
    await asyncio.sleep(0.1)
    writer.transport.abort()


async def _stalled_upload(proxy: RunningProxy, declared: int) -> None:
    """A body that stops coming: 408 after request_body_timeout."""
    reader, writer = await _partial_upload(proxy, declared, 100_000)
    assert (await reader.readline()).startswith(b"HTTP/1.1 408 ")
    writer.transport.abort()


async def _dropped_download(proxy: RunningProxy) -> None:
    reader, writer = await open_to(proxy.url)
    writer.write(b"GET /v4.0/sandbox/bytes?size=20000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    await reader.readexactly(200_000)
    writer.transport.abort()


async def _requests_that_end_in_exceptions(proxy: RunningProxy, sandbox: RunningSandbox) -> None:
    client = proxy.client
    async with client.get(proxy.url + ECHO) as response:
        await response.read()
    async with client.request("TRACE", proxy.url + ECHO) as response:  # a refusal: 400
        await response.read()
    async with client.get(proxy.url + "/v4.0/sandbox/delay?seconds=3") as response:  # 504
        await response.read()
    await sandbox.api_fault(reset=True, count=1)  # upstream resets mid-body
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(proxy.url + ECHO) as response:
            await response.read()
    await _aborted_upload(proxy, 1_000_000)  # read whole before it is sent
    # Streamed upstream as it arrives (over body_memory_limit): the tee kept the client's
    # error, whose traceback holds the tee's frame, and aiohttp's body writer its own cause.
    await _aborted_upload(proxy, 10_000_000)
    await _dropped_download(proxy)
    await _stalled_upload(proxy, 500_000)  # the stalled stream kept its error and its frames
    await _stalled_upload(proxy, 10_000_000)
    await asyncio.sleep(0.3)  # the proxy notices the aborts


async def test_requests_that_end_in_exceptions_leave_no_reference_cycles(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(upstream_timeout=0.5, request_body_timeout=0.5)
    await _requests_that_end_in_exceptions(proxy, sandbox)  # caches and pools warm
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await _requests_that_end_in_exceptions(proxy, sandbox)
        gc.collect()
        found = sorted(set(_the_proxys(gc.garbage)))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not found, "reference cycles on the request path:\n" + "\n".join(found)
