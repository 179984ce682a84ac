"""Clients that go away, and a proxy that is told to stop: nothing leaks, nothing is cut."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.conftest import RunningSandbox
from tests.integration.conftest import LEAK, LogCapture, ProxyFactory
from tests.integration.rawhttp import open_to
from tests.open_files import open_fd_targets


def open_spool_files() -> list[str]:
    """Request-body temp files this process still holds open (they are unlinked at once)."""
    return [t for t in open_fd_targets() if "aspose-proxy-body" in t or "/spool" in t]


def established_to(port: int) -> int:
    """TCP connections of this process to 127.0.0.1:``port``, from /proc/net/tcp."""
    inodes = {t[8:-1] for t in open_fd_targets() if t.startswith("socket:[")}
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


async def wait_until(condition: object, timeout: float = 5) -> bool:
    assert callable(condition)
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return bool(condition())


async def test_client_disconnect_mid_upload_leaves_no_temp_file(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path, logs: LogCapture
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    proxy = await proxy_factory(body_memory_limit=1024, spool_dir=spool)
    folder = sandbox.data_dir / "First Storage" / "lifecycle"
    before = (await sandbox.stats())["api_requests"]
    _, writer = await open_to(proxy.url)
    writer.write(
        b"PUT /v4.0/words/storage/file/lifecycle/partial.bin HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    writer.write(b"x" * 2_000_000)
    await writer.drain()
    assert await wait_until(lambda: open_spool_files() != [])  # it did spill to disk
    # The body streams upstream as it arrives (issue 11): the upload has begun there.
    for _ in range(100):
        if (await sandbox.stats())["api_requests"] > before:
            break
        await asyncio.sleep(0.05)
    assert (await sandbox.stats())["api_requests"] == before + 1
    writer.transport.abort()
    assert await wait_until(lambda: open_spool_files() == [])
    assert list(spool.iterdir()) == []
    # The upstream request was aborted short of its Content-Length, never completed: the
    # sandbox's upload handler failed (status 500 in its log) and stored nothing, not even
    # its temp file.
    assert await wait_until(lambda: any(
        "partial.bin" in line and '"status": 500' in line and "request_id" not in line
        for line in logs.events("request")
    ))  # fmt: skip
    assert list(folder.iterdir()) == []
    async with proxy.client.put(proxy.url + "/v4.0/sandbox/echo/x", data=b"y" * 5000) as response:
        assert response.status == 200


async def test_client_disconnect_mid_download_releases_the_upstream_connection(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory()
    sandbox_port = int(sandbox.url.rsplit(":", 1)[1])
    async with proxy.client.get(proxy.url + "/readyz") as response:
        assert response.status in (200, 503)
    for _ in range(5):
        reader, writer = await open_to(proxy.url)
        writer.write(b"GET /v4.0/sandbox/bytes?size=200000000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        await reader.readexactly(1_000_000)
        writer.transport.abort()
    # Each aborted download's upstream connection is closed, not parked or leaked.
    assert await wait_until(lambda: established_to(sandbox_port) <= 1)
    async with proxy.client.get(proxy.url + "/v4.0/sandbox/bytes?size=1000") as response:
        assert response.status == 200
        assert len(await response.read()) == 1000


async def start_proxy_process(
    sandbox: RunningSandbox,
    settings: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m proxy run`` in front of ``sandbox`` (port 0, JSON logs on stderr), plus
    ``ASPOSE_PROXY_<KEY>`` for each of ``settings``; returns it and the URL it announced."""
    env = {
        **os.environ,
        "ASPOSE_PROXY_UPSTREAM_URL": sandbox.url,
        "ASPOSE_PROXY_CLIENT_ID": "demo",
        "ASPOSE_PROXY_CLIENT_SECRET": "demo-secret",
        "ASPOSE_PROXY_PORT": "0",
        "ASPOSE_PROXY_LOG_FORMAT": "json",
    }
    env.update({f"ASPOSE_PROXY_{key.upper()}": value for key, value in (settings or {}).items()})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "run",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec_fn,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
    match = re.search(r"listening on (http://\S+)", line)
    assert match, line
    return process, match.group(1)


async def test_sigterm_lets_in_flight_requests_finish_and_exits_0(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    process, url = await start_proxy_process(sandbox)
    assert process.stderr is not None
    async with aiohttp.ClientSession() as client:
        slow = asyncio.create_task(client.get(url + "/v4.0/sandbox/delay?seconds=1.5"))
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        response = await asyncio.wait_for(slow, 10)
        assert response.status == 200
        assert await response.json() == {"delayed": 1.5}
        response.release()
    assert await asyncio.wait_for(process.wait(), 10) == 0
    stderr = (await process.stderr.read()).decode()
    assert '"event": "stopped"' in stderr
    assert not LEAK.findall(stderr)
