"""``aspose-proxy demo``: the sandbox and the proxy in one process, and the curl lines to try.

It also makes one real round trip through the proxy (upload, list, download), so a newcomer
sees the whole chain work before typing anything.
"""

from __future__ import annotations

import aiohttp
import structlog
from pydantic import SecretStr

from proxy.app import create_app
from proxy.sandbox import SandboxConfig, create_sandbox_app
from proxy.server import Server, announce, start_server, wait_for_stop_signal
from proxy.settings import load_settings

log = structlog.get_logger("proxy.demo")

DEMO = SandboxConfig()


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


async def run_demo(host: str, port: int, sandbox_port: int) -> int:
    sandbox: Server = await start_server(create_sandbox_app(DEMO), "127.0.0.1", sandbox_port)
    settings = load_settings(
        {
            "host": host,
            "port": port,
            "upstream_url": sandbox.url,
            "client_id": DEMO.client_id,
            "client_secret": SecretStr(DEMO.client_secret),
        }
    ).settings
    proxy = await start_server(create_app(settings), settings.host, settings.port, shutdown_grace=5)
    try:
        announce(instructions(proxy.url, sandbox.url))
        try:
            announce(await round_trip(proxy.url))
        except (aiohttp.ClientError, ValueError) as exc:
            log.error("demo self-check failed", error=str(exc))
        await wait_for_stop_signal()
    finally:
        await proxy.stop()
        await sandbox.stop()
    return 0
