"""``run --workers N``: real worker processes on one port, supervised, in front of the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from proxy.settings import Settings
from proxy.supervisor import worker_count
from proxy.token_schedule import schedule_file
from tests.conftest import RunningSandbox
from tests.integration.conftest import LEAK


@dataclass
class Supervised:
    """A ``run --workers N`` process: its URL and the file its stderr goes to."""

    process: asyncio.subprocess.Process
    url: str
    stderr: Path

    @property
    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Mapping[str, str], bytes]:
        """One request on a fresh connection (SO_REUSEPORT spreads connections, not requests)."""
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client,
            client.get(self.url + path, **kwargs) as response,
        ):
            return response.status, response.headers.copy(), await response.read()


async def wait_for(condition: Callable[[], bool], timeout: float = 10) -> bool:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


def proxy_env(sandbox: RunningSandbox, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ASPOSE_PROXY_")  # nothing from the developer's shell
    }
    env.update(
        ASPOSE_PROXY_UPSTREAM_URL=sandbox.url,
        ASPOSE_PROXY_CLIENT_ID="demo",
        ASPOSE_PROXY_CLIENT_SECRET="demo-secret",
        ASPOSE_PROXY_LOG_FORMAT="json",
        ASPOSE_PROXY_LOG_FLUSH_INTERVAL="0",
        ASPOSE_PROXY_SHUTDOWN_GRACE="5",
    )
    env.update(extra)
    return env


@pytest.fixture
async def start_workers(
    sandbox: RunningSandbox, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Supervised] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Supervised:
        stderr = tmp_path / f"proxy-{len(started)}.err"
        with stderr.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy", "run", "--port", "0", *args,
                env=env or proxy_env(sandbox),
                stdout=asyncio.subprocess.PIPE, stderr=err,
            )  # fmt: skip
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, (line, stderr.read_text())
        running = Supervised(process, match.group(1), stderr)
        started.append(running)
        return running

    yield start
    for running in started:
        workers = running.workers()
        if running.process.returncode is None:
            running.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running.process.wait(), 20)
        for worker in workers:  # never leave one behind, whatever the test did
            with contextlib.suppress(psutil.Error):
                worker.kill()
        if running.process.returncode is None:
            running.process.kill()
            await running.process.wait()
        assert not LEAK.findall(running.log)


@pytest.fixture
async def two_workers(start_workers: Callable[..., Any]) -> Supervised:
    """``run --workers 2`` with both workers up."""
    running = await start_workers("--workers", "2")
    assert await wait_for(lambda: len(running.workers()) == 2)
    return running


def replaced(running: Supervised, pid: int) -> bool:
    """Two workers again, and ``pid`` is not one of them."""
    pids = {w.pid for w in running.workers()}
    return len(pids) == 2 and pid not in pids


async def request_ids(running: Supervised, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        status, headers, _ = await running.get("/healthz")
        assert status == 200
        ids.append(headers["X-Request-Id"])
    return ids


async def test_two_workers_share_one_port_each_with_its_own_request_ids(
    two_workers: Supervised, sandbox: RunningSandbox
) -> None:
    running = two_workers
    ids = await request_ids(running, 40)
    assert len(set(ids)) == len(ids)  # unique across workers
    prefixes = {i[:16] for i in ids}
    assert len(prefixes) == 2  # both workers answered on the one announced port
    # Each worker has its own token cache, so each fetches its own token (one after the other:
    # the shared token schedule lets one process try a secret at a time).
    for _ in range(100):
        if (await sandbox.stats())["token_requests"] >= 2:
            break
        await asyncio.sleep(0.1)
    assert (await sandbox.stats())["token_requests"] == 2


async def test_metrics_are_per_worker_and_carry_its_pid(
    two_workers: Supervised,
) -> None:
    running = two_workers
    pids = {str(w.pid) for w in running.workers()}
    seen: set[str] = set()
    # One kept-alive session, as a Prometheus scraper has: /metrics closes the connection, so
    # the scrapes still reach every worker.
    async with aiohttp.ClientSession() as scraper:
        for _ in range(40):
            async with scraper.get(running.url + "/metrics") as response:
                assert response.status == 200
                body = await response.text()
            found = set(re.findall(r'aspose_proxy_requests_total\{pid="(\d+)"', body))
            assert len(found) <= 1  # one worker's own series per scrape
            seen |= found
            if seen == pids:
                break
    assert seen == pids


async def test_an_unknown_variable_is_warned_about_once_not_per_worker(
    start_workers: Callable[..., Any], sandbox: RunningSandbox
) -> None:
    env = proxy_env(sandbox, ASPOSE_PROXY_UPSTREAM_TIMEOUTT="3")
    running = await start_workers("--workers", "2", env=env)
    assert await wait_for(lambda: running.log.count('"event": "proxy started"') == 3)
    warnings = [line for line in running.log.splitlines() if "unknown environment variable" in line]
    assert len(warnings) == 1, warnings
    assert '"name": "ASPOSE_PROXY_UPSTREAM_TIMEOUTT"' in warnings[0]
    assert '"did_you_mean": "ASPOSE_PROXY_UPSTREAM_TIMEOUT"' in warnings[0]
    assert '"level": "warning"' in warnings[0]


async def test_workers_open_the_persistent_token_schedule_from_their_settings(
    two_workers: Supervised,
) -> None:
    """One fact, one place: no env var or run-dir file names the schedule (issue 18)."""
    running = two_workers
    assert schedule_file(Settings()).exists()  # next to the usage store, outliving the run
    for worker in running.workers():
        assert not any("TOKEN_STATE" in name for name in worker.environ())


async def test_workers_do_not_multiply_token_requests_for_a_rejected_secret(
    start_workers: Callable[..., Any], sandbox: RunningSandbox
) -> None:
    env = proxy_env(sandbox, ASPOSE_PROXY_CLIENT_SECRET="a-rotated-away-secret")
    running = await start_workers("--workers", "3", env=env)
    assert await wait_for(lambda: len(running.workers()) == 3)
    assert await wait_for(lambda: running.log.count('"event": "proxy started"') == 4)
    await asyncio.sleep(2)  # time for every worker to try, if it were going to
    for _ in range(6):
        status, _, _ = await running.get("/v4.0/sandbox/bytes?size=10")
        assert status == 503
    # The untried secret is tried once for all workers (the shared token schedule); a
    # rejected one is not tried again at once by any of them.
    assert (await sandbox.stats())["token_requests"] == 1


async def test_a_local_token_from_one_worker_is_accepted_by_the_others(
    start_workers: Callable[..., Any], sandbox: RunningSandbox
) -> None:
    env = proxy_env(
        sandbox,
        ASPOSE_PROXY_LOCAL_CLIENTS='{"reporting": "job-secret-0123456789"}',
        ASPOSE_PROXY_REQUIRE_CLIENT_AUTH="true",
    )
    running = await start_workers("--workers", "2", env=env)
    form = {
        "grant_type": "client_credentials",
        "client_id": "reporting",
        "client_secret": "job-secret-0123456789",
    }
    async with (
        aiohttp.ClientSession() as client,
        client.post(running.url + "/connect/token", data=form) as response,
    ):
        assert response.status == 200
        token = (await response.json())["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    statuses = [
        (await running.get("/v4.0/sandbox/bytes?size=10", headers=headers))[0] for _ in range(16)
    ]
    assert statuses == [200] * 16


async def test_a_worker_that_dies_is_replaced_within_seconds_with_a_log_line(
    two_workers: Supervised,
) -> None:
    running = two_workers
    victim = running.workers()[0]
    victim.kill()
    assert await wait_for(
        lambda: len(running.workers()) == 2 and victim.pid not in {w.pid for w in running.workers()}
    )
    assert await wait_for(lambda: "worker died; starting a replacement" in running.log)
    assert '"signal": "SIGKILL"' in running.log
    # The replacement serves: both workers answer again.
    for _ in range(10):
        ids = await request_ids(running, 20)
        if len({i[:16] for i in ids}) == 2:
            break
        await asyncio.sleep(0.3)
    assert len({i[:16] for i in ids}) == 2


async def test_a_worker_that_keeps_dying_young_is_replaced_ever_more_slowly(
    two_workers: Supervised,
) -> None:
    running = two_workers
    victim = running.workers()[0].pid
    for deaths in (1, 2):  # the same slot: kill its worker, then the worker that replaced it
        before = {w.pid for w in running.workers()}
        os.kill(victim, signal.SIGKILL)
        assert await wait_for(lambda n=deaths: running.log.count("a replacement") == n)
        assert await wait_for(lambda v=victim: replaced(running, v))
        [victim] = {w.pid for w in running.workers()} - before
    pauses = re.findall(r'"replace_in": ([\d.]+)', running.log)
    assert [float(p) for p in pauses] == [1.0, 2.0]  # doubling: no spinning crash loop


async def test_sigterm_drains_every_worker_and_the_supervisor_exits_0(
    two_workers: Supervised,
) -> None:
    running = two_workers
    workers = running.workers()
    slow = [asyncio.create_task(running.get("/v4.0/sandbox/delay?seconds=1.5")) for _ in range(6)]
    await asyncio.sleep(0.5)
    running.process.send_signal(signal.SIGTERM)
    for task in slow:
        status, _, body = await asyncio.wait_for(task, 10)
        assert status == 200, body
    assert await asyncio.wait_for(running.process.wait(), 15) == 0
    assert all(not w.is_running() or w.status() == psutil.STATUS_ZOMBIE for w in workers)
    lines = [json.loads(raw) for raw in running.log.splitlines() if raw.startswith("{")]
    assert any(
        line["event"] == "stopped" and line.get("logger") == "proxy.supervisor" for line in lines
    )


async def test_sighup_is_passed_on_to_every_worker(
    two_workers: Supervised,
) -> None:
    running = two_workers
    pids = {w.pid for w in running.workers()}
    running.process.send_signal(signal.SIGHUP)
    assert await wait_for(lambda: '"signal": "SIGHUP", "workers": 2' in running.log)
    # Each worker reloads its settings (proxy/reload.py) and keeps running.
    assert await wait_for(lambda: running.log.count('"event": "settings reloaded"') == 2)
    assert {w.pid for w in running.workers()} == pids
    assert "worker died" not in running.log


async def test_workers_stop_when_the_supervisor_is_killed(
    two_workers: Supervised,
) -> None:
    running = two_workers
    workers = running.workers()
    command = workers[0].cmdline()
    run_dir = Path(command[command.index("--run-dir") + 1])
    assert run_dir.is_dir()
    running.process.kill()
    await running.process.wait()

    def gone() -> bool:
        return all(not w.is_running() or w.status() == psutil.STATUS_ZOMBIE for w in workers)

    assert await wait_for(gone, 15)
    assert not run_dir.exists()  # the last worker out removed what the supervisor could not


async def test_a_port_another_program_listens_on_is_refused_not_shared(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "run", "--workers", "2", "--port", str(port),
            env=proxy_env(sandbox, TMPDIR=str(tmp_path)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert b"listening on" not in out
    assert b"aspose-proxy: cannot listen on 127.0.0.1:" in err and b"address already in use" in err
    assert list(tmp_path.iterdir()) == []  # no run directory left behind


def test_worker_count_zero_means_one_per_cpu() -> None:
    assert worker_count(0, 8, True) == (8, None)
    assert worker_count(3, 8, True) == (3, None)
    assert worker_count(0, 1, True) == (1, None)


def test_without_so_reuseport_the_proxy_says_so_and_runs_one_process() -> None:
    count, why = worker_count(4, 8, False)
    assert count == 1
    assert why is not None and "SO_REUSEPORT is not available" in why and "4" in why
    assert worker_count(1, 8, False) == (1, None)  # nothing to say when 1 was asked for


def test_a_forked_child_makes_new_request_ids() -> None:
    from proxy import exchange

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its prefix and leave at once
        os.write(write, exchange._ID_PREFIX.encode())
        os._exit(0)
    os.close(write)
    child_prefix = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child_prefix and child_prefix != exchange._ID_PREFIX
