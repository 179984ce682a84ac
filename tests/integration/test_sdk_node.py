"""The official Words Node.js SDK (npm ``asposewordscloud``) through the proxy, into the sandbox.

``tests/clients/node/roundtrip.js`` uploads, lists, downloads and deletes a file with the SDK
and exits non-zero on any mismatch. Node runs as a child process awaited on this event loop,
where the proxy and sandbox fixtures serve. No node, or no package after ``npm install``, is
a failure, never a skip.
"""

from __future__ import annotations

import json

import pytest

from tests.clients.harness import NODE_DIR, Completed, ensure_node_modules, require_tool, run
from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, RunningProxy

# a cold `npm install` may run first (when node_modules is missing)
pytestmark = pytest.mark.timeout(600)

SCRIPT = NODE_DIR / "roundtrip.js"


async def roundtrip(*args: str, env: dict[str, str] | None = None) -> Completed:
    await ensure_node_modules()
    node = require_tool("node", "install Node.js 20 (https://nodejs.org/)")
    return await run([node, str(SCRIPT), *args], cwd=NODE_DIR, timeout=120, env=env)


def sdk_token_requests(logs: LogCapture) -> int:
    return sum(
        1
        for line in map(json.loads, logs.events("request"))
        if line.get("logger") == "proxy.access_log" and line["path"] == "/v4.0/words/connect/token"
    )


async def test_node_sdk_round_trip_through_the_proxy(
    proxy: RunningProxy, sandbox: RunningSandbox, logs: LogCapture
) -> None:
    result = await roundtrip(proxy.url)
    assert result.returncode == 0, result.explain()
    assert "roundtrip: OK" in result.stdout
    stats = await sandbox.stats()
    assert stats["token_requests"] == 1  # only the proxy's own fetch reached upstream
    assert stats["unauthorized_sent"] == 0
    assert stats["api_requests"] == 5  # upload, list, download, delete, list
    assert sdk_token_requests(logs) == 1  # the SDK got its placeholder from the proxy


async def test_node_sdk_does_not_see_an_upstream_revocation(
    proxy: RunningProxy, sandbox: RunningSandbox, logs: LogCapture
) -> None:
    result = await roundtrip(proxy.url, sandbox.url)  # revokes right after the upload
    assert result.returncode == 0, result.explain()
    assert "revoked the upstream token" in result.stdout
    stats = await sandbox.stats()
    assert stats["revoked_token_requests"] == 1
    assert stats["token_requests"] == 2  # the proxy renewed once and replayed
    assert sdk_token_requests(logs) == 1  # the SDK never saw the 401


async def test_roundtrip_script_fails_when_the_api_fails(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    """The script is a real check: an upstream error makes it exit non-zero."""
    await sandbox.api_fault(status=500)
    result = await roundtrip(proxy.url)
    assert result.returncode != 0, result.explain()
    assert "roundtrip: FAIL" in result.stderr


async def test_roundtrip_script_fails_when_nothing_listens(proxy: RunningProxy) -> None:
    await proxy.stop()
    result = await roundtrip(proxy.url)
    assert result.returncode != 0, result.explain()
