"""Local faults: the spool directory missing, unwritable or full while a body must spill."""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import shutil
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory
from tests.integration.test_lifecycle import start_proxy_process

ECHO = "/v4.0/sandbox/echo/x"
STORED = "/v4.0/words/storage/file/local-faults/upload.bin"
MiB = 1024 * 1024


async def error_code(response: Any) -> str:
    body = await response.json()
    assert response.headers["X-Proxy-Error"] == body["Error"]["Code"]
    code: str = body["Error"]["Code"]
    return code


async def test_spool_dir_removed_after_start_gives_507_and_small_bodies_still_pass(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path, logs: LogCapture
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    proxy = await proxy_factory(body_memory_limit=64 * 1024, spool_dir=spool)
    async with proxy.client.put(proxy.url + ECHO, data=b"warm" * 100) as response:
        assert response.status == 200
    shutil.rmtree(spool)
    before = (await sandbox.stats())["api_requests"]
    async with proxy.client.put(proxy.url + STORED, data=b"x" * (3 * MiB)) as response:
        assert response.status == 507
        assert await error_code(response) == "insufficient_storage"
    assert (await sandbox.stats())["api_requests"] == before  # nothing sent upstream
    assert not (sandbox.data_dir / "First Storage" / "local-faults" / "upload.bin").exists()
    # The log says what is wrong and what to fix.
    lines = logs.events("cannot spool the request body")
    assert lines and str(spool) in lines[0] and "spool_dir" in lines[0]
    # Small bodies need no spool: still forwarded; the proxy stays up.
    small = b"s" * 1000
    async with proxy.client.put(proxy.url + ECHO, data=small) as response:
        assert response.status == 200
        assert (await response.json())["body_sha256"] == hashlib.sha256(small).hexdigest()
    # Once the directory is back, big bodies pass again.
    spool.mkdir()
    big = b"b" * (3 * MiB)
    async with proxy.client.put(proxy.url + ECHO, data=big) as response:
        assert response.status == 200
        assert (await response.json())["body_sha256"] == hashlib.sha256(big).hexdigest()


async def test_spool_dir_that_is_not_a_writable_directory_gives_507(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path, logs: LogCapture
) -> None:
    """Unwritable: a path the proxy cannot create files in (tests run as root, so a file
    stands in for a directory without write permission)."""
    spool = tmp_path / "not-a-dir"
    spool.write_bytes(b"")
    proxy = await proxy_factory(body_memory_limit=64 * 1024, spool_dir=spool)
    before = (await sandbox.stats())["api_requests"]

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"c" * 100_000

    async with proxy.client.put(proxy.url + STORED, data=b"x" * (2 * MiB)) as response:
        assert response.status == 507
        assert await error_code(response) == "insufficient_storage"
    async with proxy.client.put(proxy.url + STORED, data=chunked()) as response:
        assert response.status == 507
    assert (await sandbox.stats())["api_requests"] == before
    assert "not a directory" in logs.events("cannot spool the request body")[0]
    async with proxy.client.put(proxy.url + ECHO, data=b"s" * 1000) as response:
        assert response.status == 200


def limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        # Python ignores SIGXFSZ already; say so anyway: a write past the limit must raise
        # EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


async def test_full_spool_mid_upload_gives_507_aborts_upstream_and_the_proxy_stays_up(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A full disk, simulated without privileges: the proxy runs with a 2 MiB file size limit
    (RLIMIT_FSIZE), so spool writes past 2 MiB fail with EFBIG, as ENOSPC would."""
    spool = tmp_path / "spool"
    spool.mkdir()
    process, url = await start_proxy_process(
        sandbox,
        {"spool_dir": str(spool), "body_memory_limit": str(64 * 1024)},
        preexec_fn=limit_file_size(2 * MiB),
    )
    assert process.stderr is not None
    try:
        folder = sandbox.data_dir / "First Storage" / "local-faults"
        async with aiohttp.ClientSession() as client:
            for _ in range(100):
                async with client.get(url + "/readyz") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.1)
            # Streamed upstream as it arrives: the copy fails at 2 MiB, upstream is cut off
            # short of Content-Length and never completes the upload.
            async with client.put(url + STORED, data=b"x" * (8 * MiB)) as response:
                assert response.status == 507
                assert await error_code(response) == "insufficient_storage"
            # Chunked: buffered first, so nothing at all goes upstream.
            before = (await sandbox.stats())["api_requests"]

            async def chunked() -> AsyncIterator[bytes]:
                for _ in range(40):
                    yield b"c" * 100_000

            async with client.put(url + STORED, data=chunked()) as response:
                assert response.status == 507
            assert (await sandbox.stats())["api_requests"] == before
            # The sandbox stores an upload only once its body is whole; the cut one left
            # nothing (its temp file goes once the sandbox sees the connection drop).
            for _ in range(50):
                if not any(folder.iterdir()):
                    break
                await asyncio.sleep(0.1)
            assert list(folder.iterdir()) == []
            # Bodies that fit (in memory, or spilled under the limit) still pass.
            for size in (1000, MiB):
                data = os.urandom(size)
                async with client.put(url + ECHO, data=data) as response:
                    assert response.status == 200
                    assert (await response.json())["body_sha256"] == sha256(data)
        assert process.returncode is None  # the proxy stayed up
        assert os.listdir(spool) == []
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
    stderr = (await process.stderr.read()).decode()
    spool_lines = [line for line in stderr.splitlines() if "cannot spool" in line]
    assert spool_lines and "ulimit -f" in spool_lines[0] and str(spool) in spool_lines[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_chunked_body_over_max_body_size_gets_413_and_nothing_goes_upstream(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    """A chunked body has no declared length to refuse early: it is read (and spooled) first,
    so crossing max_body_size mid-stream sends nothing upstream at all."""
    proxy = await proxy_factory(max_body_size=3 * MiB, body_memory_limit=64 * 1024)
    before = (await sandbox.stats())["api_requests"]

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"z" * 100_000

    async with proxy.client.put(proxy.url + STORED, data=chunked()) as response:
        assert response.status == 413
        assert await error_code(response) == "body_too_large"
    assert (await sandbox.stats())["api_requests"] == before
