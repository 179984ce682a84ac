"""A real ``redis-server`` on 127.0.0.1, on a free port, for the usage store tests.

Nothing is skipped: without the ``redis-server`` binary the tests fail and say how to get it.
No server outlives the test process: each is started with a parent-death signal, so even a
pytest killed by its timeout or SIGKILL (no finalizer runs) takes its servers with it; the
fixtures also stop them when they end.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

MISSING = (
    "redis-server is not installed: the usage store tests need a real Redis "
    "(apt-get install -y redis-server; .ci/run installs it when missing)"
)


NO_PERSISTENCE = ("--save", "", "--appendonly", "no")  # a test server writes nothing to disk
APPEND_ONLY = ("--save", "", "--appendonly", "yes")  # a restart on the same directory keeps all
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it


def dies_with_this_process() -> None:
    """``preexec_fn`` for a server the tests start: the kernel sends it SIGKILL when the thread
    that started it exits (the test process, however it ends; start servers from the main
    thread). The check after it covers a parent that died before the call."""
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(
    directory: Path,
    port: int | None = None,
    persistence: tuple[str, ...] = NO_PERSISTENCE,
    password: str | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server in ``directory`` (on ``port``, else a free one); returns the process
    and its URL. ``persistence``: e.g. ``APPEND_ONLY`` to restart it with its data;
    ``password``: ``requirepass`` (never in the URL)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(MISSING, pytrace=False)
    for _ in range(5):
        chosen = port or _free_port()
        process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(chosen), *persistence]
            + (["--requirepass", password] if password else []),
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=dies_with_this_process,
        )
        url = f"redis://127.0.0.1:{chosen}/0"
        client = redis.Redis.from_url(url, password=password, socket_timeout=1)
        for _ in range(100):
            if process.poll() is not None:
                break  # the port was taken in between: try another
            try:
                client.ping()
                client.close()
                return process, url
            except redis.ConnectionError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    pytest.fail("redis-server did not start on a free port", pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server
