"""``aspose-proxy demo``: the sandbox and the proxy in one process, and the curl lines to try.

It also makes one real round trip through the proxy (upload, list, download), so a newcomer
sees the whole chain work before typing anything. It works whatever the user has set up
(issue 18): it reads no ``ASPOSE_PROXY_*`` variable and no config file, keeps its usage counts
and token schedule in memory, and takes a free port when the one asked for is taken.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import aiohttp
import structlog
from pydantic import SecretStr

from proxy.app import create_app
from proxy.listening import listen, port_in_use
from proxy.sandbox import SandboxConfig, create_sandbox_app
from proxy.server import Server, announce, stop_signal_task
from proxy.settings import Settings
from proxy.state import STATE
from proxy.token_schedule import MemoryStore, Schedule

log = structlog.get_logger("proxy.demo")

DEMO = SandboxConfig(request_log_level=logging.DEBUG)


def instructions(proxy_url: str, sandbox_url: str) -> str:
    """What to try; the README's demo section shows the same lines."""
    return f"""
Aspose Cloud sandbox (offline imitation): {sandbox_url}
  sandbox credentials: client_id '{DEMO.client_id}', client_secret '{DEMO.client_secret}'
Proxy: {proxy_url} -> {sandbox_url}  (it holds the token; your requests need none)

Try it in another terminal:
  echo 'Hello, Aspose!' > hello.txt
  curl -T hello.txt {proxy_url}/v4.0/words/storage/file/demo/hello.txt
  curl {proxy_url}/v4.0/words/storage/folder/demo
  curl -o hello-copy.txt {proxy_url}/v4.0/words/storage/file/demo/hello.txt
  head -c 2000000 /dev/urandom > big.bin
  curl -T big.bin {proxy_url}/v4.0/words/storage/file/demo/big.bin
  curl -o big-copy.bin {proxy_url}/v4.0/words/storage/file/demo/big.bin
  cmp big.bin big-copy.bin
  curl --compressed {proxy_url}/v4.0/words/storage/folder/demo
  curl -sD- -o hello.pdf -T hello.txt '{proxy_url}/v4.0/words/convert?format=pdf'
  curl -sD- -o hello-again.pdf -T hello.txt '{proxy_url}/v4.0/words/convert?format=pdf'
  cmp hello.pdf hello-again.pdf
  curl {proxy_url}/_proxy/usage
  curl {proxy_url}/readyz
Press Ctrl+C to stop."""


async def round_trip(proxy_url: str) -> str:
    """Upload, list and download one file through the proxy; a one-line summary."""
    path = f"{proxy_url}/v4.0/words/storage/file/demo/self-check.txt"
    content = b"aspose-proxy demo self-check\n"
    async with aiohttp.ClientSession() as client:
        async with client.put(path, data=content) as response:
            response.raise_for_status()
        async with client.get(f"{proxy_url}/v4.0/words/storage/folder/demo") as response:
            listing = await response.json()
        async with client.get(path) as response:
            downloaded = await response.read()
    names = [item.get("Name") for item in listing.get("Value", [])]
    verdict = "ok" if downloaded == content else "MISMATCH"
    return f"Self-check through the proxy: uploaded, listed {names}, downloaded ({verdict})"


def demo_settings(
    host: str, port: int, sandbox_url: str, cache_dir: Path | None = None
) -> Settings:
    """The demo's own settings: built here, never read from the environment or a file."""
    return Settings(
        host=host,
        port=port,
        upstream_url=sandbox_url,
        client_id=DEMO.client_id,
        client_secret=SecretStr(DEMO.client_secret),
        usage_store="off",  # the demo's calls never count against real budgets
        # A conversion cache of its own, gone at exit: a repeated conversion is a hit.
        cache_store=f"file://{cache_dir}" if cache_dir is not None else "off",
    )


def free_port_if_taken(host: str, port: int, what: str) -> int:
    """``port``, or 0 (a free one) when something already listens there; says so."""
    if port_in_use(host, port):
        announce(f"Port {port} is in use, so the {what} listens on a free port instead.")
        return 0
    return port


async def run_demo(host: str, port: int, sandbox_port: int) -> int:
    sandbox_port = free_port_if_taken("127.0.0.1", sandbox_port, "sandbox")
    sandbox: Server = await listen(create_sandbox_app(DEMO), "127.0.0.1", sandbox_port)
    cache_dir = tempfile.TemporaryDirectory(prefix="aspose-proxy-demo-cache-")
    try:
        settings = demo_settings(
            host, free_port_if_taken(host, port, "proxy"), sandbox.url, Path(cache_dir.name)
        )
        app = create_app(settings)
        app[STATE].token_schedule = Schedule(MemoryStore())  # the user's schedule is not the demo's
        proxy = await listen(app, settings.host, settings.port, shutdown_grace=5)
    except BaseException:
        await sandbox.stop()
        cache_dir.cleanup()
        raise
    # Before printing anything: a signal sent as soon as the self-check line appears would
    # otherwise kill the process and lose its last log lines.
    stopped = await stop_signal_task()
    try:
        announce(instructions(proxy.url, sandbox.url))
        try:
            announce(await round_trip(proxy.url))
        except (aiohttp.ClientError, ValueError) as exc:
            log.error("demo self-check failed", error=str(exc))
        await stopped
    finally:
        stopped.cancel()
        await proxy.stop()
        await sandbox.stop()
        cache_dir.cleanup()
    return 0
