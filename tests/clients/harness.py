"""Running real client programs from async tests, without blocking the event loop.

The proxy and sandbox fixtures serve on the test's own event loop, so a client process must be
awaited (``asyncio.create_subprocess_exec``), never run with a blocking ``subprocess.run``.
A missing tool (node, npm, curl, newman, the ``aspose-proxy`` command) fails the test with a
message saying what to install: these tests must never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"
NODE_BIN = NODE_DIR / "node_modules" / ".bin"
REQUIRED_NODE_PACKAGES = ("asposewordscloud", "newman")


@dataclass
class Completed:
    args: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


def require_tool(name: str, hint: str) -> str:
    """The path of executable ``name``, or a test failure naming what to install."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed or not on PATH: {hint}", pytrace=False)
    return path


def aspose_proxy_command() -> list[str]:
    """The installed ``aspose-proxy`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "aspose-proxy"
    if script.exists():
        return [str(script)]
    found = shutil.which("aspose-proxy")
    if found is None:
        pytest.fail(
            "the aspose-proxy command is missing: install the package (pip install -e '.[test]')",
            pytrace=False,
        )
    return [found]


async def run(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> Completed:
    """Run a program to completion on the event loop; kill it if it outlives ``timeout``."""
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        stdout, stderr = await process.communicate()
        result = Completed(args, -1, stdout.decode(errors="replace"), stderr.decode("replace"))
        pytest.fail(f"timed out after {timeout} s:\n{result.explain()}", pytrace=False)
    assert process.returncode is not None
    return Completed(
        args, process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


def node_modules_complete() -> bool:
    modules = NODE_DIR / "node_modules"
    return (
        all((modules / name / "package.json").exists() for name in REQUIRED_NODE_PACKAGES)
        and (NODE_BIN / "newman").exists()
    )


async def ensure_node_modules() -> None:
    """``npm install`` in tests/clients/node unless the packages are there already."""
    require_tool("node", "install Node.js 20 (https://nodejs.org/)")
    if node_modules_complete():
        return
    npm = require_tool("npm", "install npm (it comes with Node.js 20)")
    result = await run([npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, timeout=600)
    if result.returncode != 0 or not node_modules_complete():
        pytest.fail(f"npm install failed in {NODE_DIR}:\n{result.explain()}", pytrace=False)


@dataclass
class Demo:
    """``aspose-proxy demo`` running as a child process: its proxy and sandbox URLs."""

    proxy_url: str
    sandbox_url: str
    stdout: str
    process: asyncio.subprocess.Process


_PROXY_LINE = re.compile(r"Proxy: (http://\S+)")
_SANDBOX_LINE = re.compile(r"sandbox \(offline imitation\): (http://\S+)")


@contextlib.asynccontextmanager
async def demo_process(
    cwd: Path, *, timeout: float = 30, port: int = 0, env: dict[str, str] | None = None
) -> AsyncIterator[Demo]:
    """Start ``aspose-proxy demo --port PORT`` in ``cwd`` (``env`` added to ours), parse the
    URLs it prints, stop it after.

    It is ready once it printed its self-check line (the proxy then holds a token).
    """
    log_file = (cwd / "demo-stderr.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        *aspose_proxy_command(),
        "demo",
        "--port",
        str(port),
        "--log-format",
        "json",
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=log_file,
    )
    assert process.stdout is not None
    seen: list[str] = []
    proxy_url = sandbox_url = None

    def not_ready(why: str) -> None:
        log_file.flush()
        errors = (cwd / "demo-stderr.log").read_text(errors="replace")[-4000:]
        pytest.fail(
            f"aspose-proxy demo {why}; stdout:\n{''.join(seen)}\nstderr:\n{errors}",
            pytrace=False,
        )

    try:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await process.stdout.readline()
                    if not raw:
                        not_ready(f"exited ({await process.wait()}) before it was ready")
                    line = raw.decode(errors="replace")
                    seen.append(line)
                    if match := _PROXY_LINE.search(line):
                        proxy_url = match.group(1)
                    if match := _SANDBOX_LINE.search(line):
                        sandbox_url = match.group(1)
                    if line.startswith("Self-check") and proxy_url and sandbox_url:
                        break
        except TimeoutError:
            not_ready(f"printed no proxy URL and self-check line within {timeout} s")
        assert proxy_url and sandbox_url
        yield Demo(proxy_url, sandbox_url, "".join(seen), process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        log_file.close()
