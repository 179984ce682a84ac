"""Local faults: the spool directory missing, unwritable or full while a body must spill."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory

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
