"""The test helper's redis-server never outlives the test process, however that process ends
(a pytest killed by its own timeout runs no finalizer: its servers were left adopted by init)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def test_a_redis_server_dies_with_a_test_process_killed_without_finalizers(
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from tests.redis_server import start_redis
        process, url = start_redis(Path({str(tmp_path)!r}))
        print(process.pid, flush=True)
        time.sleep(120)
        """
    )
    test_process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert test_process.stdout is not None
    server = psutil.Process(int(test_process.stdout.readline()))
    assert server.name() == "redis-server" and server.ppid() == test_process.pid
    try:
        test_process.kill()  # SIGKILL: no finally, no fixture finalizer, no atexit
        test_process.wait()
        server.wait(timeout=10)  # psutil.TimeoutExpired if it was left behind
        assert not server.is_running()
    finally:
        if server.is_running():  # this test leaves none behind either, even when it fails
            server.kill()
