"""Secret rotation without downtime (issue 9), end to end: a real proxy process, the sandbox
rotating its accepted secret, the secret mounted as Kubernetes mounts a Secret."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from proxy.sandbox import STATE
from proxy.sandbox.state import Stats
from tests.conftest import RunningSandbox
from tests.integration.test_workers import Supervised, proxy_env, start_workers, wait_for
from tests.unit.test_credentials import kubernetes_secret

__all__ = ["start_workers"]  # a fixture used below

SECRETS = ("demo-secret", "rotated-secret-2", "mistyped-secret-3", "toml-secret-4")


class Traffic:
    """Clients sending requests back to back through the proxy; every status is kept."""

    def __init__(self, url: str, concurrency: int = 4) -> None:
        self.url = url
        self.statuses: list[int] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(concurrency)]

    async def _client(self) -> None:
        async with aiohttp.ClientSession() as client:
            while not self._stop.is_set():
                async with client.get(f"{self.url}/v4.0/words/storage/disc") as resp:
                    await resp.read()
                    self.statuses.append(resp.status)
                await asyncio.sleep(0.01)

    async def stop(self) -> list[int]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.statuses


def secret_file_env(sandbox: RunningSandbox, mount: Path) -> dict[str, str]:
    env = proxy_env(sandbox, ASPOSE_PROXY_CLIENT_SECRET_FILE=str(mount / "client_secret"))
    del env["ASPOSE_PROXY_CLIENT_SECRET"]
    return env


def sandbox_stats(sandbox: RunningSandbox) -> Stats:
    return sandbox.app[STATE].stats


def assert_no_secret(running: Supervised) -> None:
    log = running.log
    for secret in SECRETS:
        assert secret not in log


async def ready(running: Supervised) -> int:
    status, _, _ = await running.get("/readyz")
    return status


async def test_rotation_through_the_mounted_secret_without_a_failed_request(
    start_workers: Callable[..., Any], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    kubernetes_secret(tmp_path, "demo-secret", 1)
    running = await start_workers(env=secret_file_env(sandbox, tmp_path))
    traffic = Traffic(running.url)
    await asyncio.sleep(0.5)

    # The dashboard regenerates the secret (issued tokens stay valid), then the Secret is updated.
    await sandbox.control("rotate-secret", {"client_secret": "rotated-secret-2"})
    kubernetes_secret(tmp_path, "rotated-secret-2", 2)
    assert await wait_for(lambda: "switched to the new credentials" in running.log, timeout=10)
    before = (await sandbox.stats())["token_requests"]

    # A mistyped secret: rejected once, the current token keeps serving, still ready.
    kubernetes_secret(tmp_path, "mistyped-secret-3", 3)
    assert await wait_for(lambda: "new client secret was rejected" in running.log, timeout=10)
    await asyncio.sleep(1)
    assert await ready(running) == 200
    statuses = await traffic.stop()

    stats = await sandbox.stats()
    assert stats["failed_token_requests"] == 1
    assert stats["token_requests"] == before + 1  # one attempt for the mistyped secret
    assert len(statuses) > 100
    assert set(statuses) == {200}  # no request dropped or refused during either change
    assert '"level": "error"' in next(
        line for line in running.log.splitlines() if "new client secret was rejected" in line
    )
    assert_no_secret(running)


async def test_sighup_rereads_the_toml_file_client_id_secret_and_log_level(
    start_workers: Callable[..., Any], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text('client_id = "demo"\nclient_secret = "demo-secret"\nlog_level = "info"\n')
    env = proxy_env(sandbox, ASPOSE_PROXY_CONFIG=str(config))
    del env["ASPOSE_PROXY_CLIENT_ID"], env["ASPOSE_PROXY_CLIENT_SECRET"]
    running = await start_workers(env=env)
    assert await wait_for(lambda: "token acquired" in running.log)
    traffic = Traffic(running.url)

    await sandbox.control("rotate-secret", {"client_secret": "toml-secret-4"})
    config.write_text(
        'client_id = "demo"\nclient_secret = "toml-secret-4"\nlog_level = "warning"\n'
        "upstream_timeout = 99\n"
    )
    running.process.send_signal(signal.SIGHUP)
    assert await wait_for(lambda: "take effect only after a restart" in running.log)
    # The switch is not logged: log_level is "warning" now. The sandbox saw it.
    assert await wait_for(lambda: sandbox_stats(sandbox).token_requests == 2)
    await asyncio.sleep(0.5)
    statuses = await traffic.stop()
    assert set(statuses) == {200}
    assert sandbox_stats(sandbox).failed_token_requests == 0
    restart = next(line for line in running.log.splitlines() if "after a restart" in line)
    assert "upstream_timeout" in restart
    # log_level = "warning" now: no more info lines (the token line above was the last).
    mark = len(running.log)
    running.process.send_signal(signal.SIGHUP)
    await asyncio.sleep(1)
    assert '"level": "info"' not in running.log[mark:]
    assert_no_secret(running)


async def test_workers_try_a_rotated_secret_once_not_once_each(
    start_workers: Callable[..., Any], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    kubernetes_secret(tmp_path, "demo-secret", 1)
    running = await start_workers("--workers", "3", env=secret_file_env(sandbox, tmp_path))
    assert await wait_for(lambda: len(running.workers()) == 3)
    assert await wait_for(lambda: running.log.count("token acquired") == 3, timeout=15)

    kubernetes_secret(tmp_path, "mistyped-secret-3", 2)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:  # each worker polls the file and notices it
        if running.log.count("new client secret was rejected") == 3:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    stats = await sandbox.stats()
    assert stats["failed_token_requests"] == 1
    for _ in range(15):
        status, _, _ = await running.get("/v4.0/words/storage/disc")
        assert status == 200  # every worker still serves with its current token

    await sandbox.control("rotate-secret", {"client_secret": "rotated-secret-2"})
    kubernetes_secret(tmp_path, "rotated-secret-2", 3)
    assert await wait_for(
        lambda: running.log.count("switched to the new credentials") == 3, timeout=15
    )
    assert (await sandbox.stats())["failed_token_requests"] == 1
    assert_no_secret(running)
