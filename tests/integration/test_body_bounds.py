"""Bounded request bodies (issue 16): a body that stalls ends with 408 and frees its spool
file; the spool files of the process together stay under spool_max_size (507).

Slow and stalled bodies are raw sockets on loopback (tests/integration/rawhttp.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory
from tests.integration.rawhttp import RawResponse, open_to, read_head
from tests.unit.test_body import open_files_in

STORED = "/v4.0/words/storage/file/bounds/upload.bin"
ECHO = "/v4.0/sandbox/echo/x"
KiB = 1024
MiB = 1024 * KiB


def put_head(target: str, *headers: str) -> bytes:
    lines = [f"PUT {target} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def answer_then_close(reader: asyncio.StreamReader, within: float = 10) -> RawResponse:
    """One response, and the server's close after it (b"" at the end)."""
    async with asyncio.timeout(within):
        status, headers = await read_head(reader)
        length = int(next(v for k, v in headers if k.lower() == "content-length"))
        body = await reader.readexactly(length)
        assert await reader.read() == b"", "the connection was kept open"
    return RawResponse(status, headers, body)


async def stall(url: str, request: bytes) -> RawResponse:
    """Send ``request`` (a head and part of its body), then nothing: the answer, and the close."""
    reader, writer = await open_to(url)
    try:
        writer.write(request)
        await writer.drain()
        return await answer_then_close(reader)
    finally:
        writer.close()


async def closed_soon(directory: Path) -> None:
    """No spool file open in ``directory`` (a write still running in a thread on a busy machine
    closes its file when it ends)."""
    for _ in range(50):
        if not open_files_in(directory):
            return
        await asyncio.sleep(0.1)
    assert open_files_in(directory) == []


def proxy_errors(logs: LogCapture) -> list[str]:
    """Error lines of the proxy: its loggers, or aiohttp's for a request the proxy's protocol
    failed to finish (the sandbox, cut off mid-upload, may log its own error)."""
    return [
        line
        for line in logs.text.splitlines()
        if '"level": "error"' in line
        and ('"logger": "proxy' in line or '"event": "Unhandled exception"' in line)
    ]


def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


async def test_a_stalled_body_gets_408_and_the_connection_is_closed(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    """Content-Length: 1000000, 10 bytes, then silence (issue 16: held for over 100 s)."""
    proxy = await proxy_factory(request_body_timeout=0.5)
    before = (await sandbox.stats())["api_requests"]
    answer = await stall(proxy.url, put_head(ECHO, "Content-Length: 1000000") + b"0123456789")
    assert answer.status == 408
    assert json.loads(answer.body)["Error"]["Code"] == "request_timeout"
    assert answer.header("X-Proxy-Error") == "request_timeout"
    assert (await sandbox.stats())["api_requests"] == before  # nothing half-sent upstream


async def test_a_stalled_chunked_upload_frees_its_spool_file(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    directory = spool(tmp_path)
    proxy = await proxy_factory(
        request_body_timeout=0.5, body_memory_limit=64 * KiB, spool_dir=directory
    )
    before = (await sandbox.stats())["api_requests"]
    reader, writer = await open_to(proxy.url)
    try:
        chunk = b"x" * (100 * KiB)
        writer.write(put_head(STORED, "Transfer-Encoding: chunked"))
        writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")  # spilled: a file
        await writer.drain()
        await asyncio.sleep(0.2)
        assert open_files_in(directory)  # the spool file is open while the body comes
        answer = await answer_then_close(reader)
    finally:
        writer.close()
    assert answer.status == 408
    assert open_files_in(directory) == []
    assert (await sandbox.stats())["api_requests"] == before


async def test_a_stalled_streamed_upload_is_cut_short_upstream_and_frees_its_spool_file(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path, logs: LogCapture
) -> None:
    """A big body with a declared length goes upstream as it arrives: when it stalls, the
    upstream request is cut short of its Content-Length, so upstream stores nothing."""
    directory = spool(tmp_path)
    proxy = await proxy_factory(
        request_body_timeout=0.5, body_memory_limit=64 * KiB, spool_dir=directory
    )
    answer = await stall(
        proxy.url, put_head(STORED, f"Content-Length: {4 * MiB}") + b"y" * (256 * KiB)
    )
    assert answer.status == 408
    await closed_soon(directory)
    folder = sandbox.data_dir / "First Storage" / "bounds"
    for _ in range(50):  # the sandbox drops its partial upload once it sees the cut
        if not folder.exists() or not any(folder.iterdir()):
            break
        await asyncio.sleep(0.1)
    assert not folder.exists() or list(folder.iterdir()) == []
    assert proxy_errors(logs) == []


async def test_a_slow_body_that_keeps_sending_is_not_cut(proxy_factory: ProxyFactory) -> None:
    """The deadline is per silence, not for the whole body: a byte every 0.2 s for 2.4 s
    passes a 1 s request_body_timeout."""
    proxy = await proxy_factory(request_body_timeout=1)
    reader, writer = await open_to(proxy.url)
    try:
        writer.write(put_head(ECHO, "Content-Length: 12"))
        for byte in b"abcdefghijkl":
            await asyncio.sleep(0.2)
            writer.write(bytes([byte]))
        async with asyncio.timeout(10):
            status, _ = await read_head(reader)
    finally:
        writer.close()
    assert status == 200


async def test_a_declared_length_past_spool_max_size_gets_507_without_100_continue(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(body_memory_limit=64 * KiB, spool_max_size=1 * MiB)
    before = (await sandbox.stats())["api_requests"]
    reader, writer = await open_to(proxy.url)
    try:
        writer.write(put_head(STORED, f"Content-Length: {2 * MiB}", "Expect: 100-continue"))
        await writer.drain()
        async with asyncio.timeout(5):
            status, headers = await read_head(reader)  # not "100 Continue": the refusal
    finally:
        writer.close()
    assert status == 507
    assert dict(headers)["X-Proxy-Error"] == "insufficient_storage"
    assert (await sandbox.stats())["api_requests"] == before


async def test_spool_max_size_counts_the_bodies_in_flight_together(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """One streamed upload holds 600 KiB of a 1 MiB spool: a second one of 600 KiB gets 507;
    once the first is done, its space is free again."""
    proxy = await proxy_factory(
        body_memory_limit=64 * KiB, spool_max_size=1 * MiB, spool_dir=spool(tmp_path)
    )
    size = 600 * KiB
    reader, writer = await open_to(proxy.url)
    try:
        writer.write(put_head(STORED, f"Content-Length: {size}") + b"a" * KiB)
        await writer.drain()
        await asyncio.sleep(0.3)  # the first upload has taken its space
        async with proxy.client.put(proxy.url + STORED, data=b"b" * size) as response:
            assert response.status == 507
        writer.write(b"a" * (size - KiB))
        async with asyncio.timeout(10):
            status, _ = await read_head(reader)
        assert status == 200
    finally:
        writer.close()
    async with proxy.client.put(proxy.url + STORED, data=b"c" * size) as response:
        assert response.status == 200


async def test_a_chunked_body_reaching_spool_max_size_gets_507_and_frees_its_file(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    directory = spool(tmp_path)
    proxy = await proxy_factory(
        body_memory_limit=64 * KiB, spool_max_size=1 * MiB, spool_dir=directory
    )
    before = (await sandbox.stats())["api_requests"]

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b"z" * (100 * KiB)

    async with proxy.client.put(proxy.url + STORED, data=chunked()) as response:
        assert response.status == 507
        assert response.headers["X-Proxy-Error"] == "insufficient_storage"
    assert open_files_in(directory) == []
    assert (await sandbox.stats())["api_requests"] == before
    async with proxy.client.put(proxy.url + STORED, data=b"d" * (900 * KiB)) as response:
        assert response.status == 200  # the space the refused body took is free again


async def test_after_a_408_the_proxy_logs_no_error_and_keeps_serving(
    proxy_factory: ProxyFactory, logs: LogCapture
) -> None:
    proxy = await proxy_factory(request_body_timeout=0.3)
    assert (await stall(proxy.url, put_head(ECHO, "Content-Length: 100") + b"x")).status == 408
    await asyncio.sleep(0.3)
    async with proxy.client.put(proxy.url + ECHO, data=b"y" * 100) as response:
        assert response.status == 200
    assert logs.events("no request body byte within request_body_timeout; ending the request")
    assert proxy_errors(logs) == []


async def test_a_stalled_form_at_the_local_token_endpoint_gets_408(
    proxy_factory: ProxyFactory,
) -> None:
    """The proxy's own endpoint that reads a body has the same deadline."""
    proxy = await proxy_factory(request_body_timeout=0.5)
    form = "Content-Type: application/x-www-form-urlencoded"
    head = put_head("/connect/token", form, "Content-Length: 200").replace(b"PUT", b"POST", 1)
    answer = await stall(proxy.url, head + b"grant_type=client")
    assert answer.status == 408
    assert answer.header("X-Proxy-Error") == "request_timeout"
