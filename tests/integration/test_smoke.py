"""A first end-to-end pass: the proxy injects its token and the sandbox serves the call."""

from __future__ import annotations

from tests.integration.conftest import RunningProxy


async def test_forwarded_call_needs_no_client_credentials(proxy: RunningProxy) -> None:
    async with proxy.client.get(f"{proxy.url}/v4.0/words/storage/disc") as response:
        assert response.status == 200
        body = await response.json()
    assert "UsedSize" in body
    assert response.headers["X-Request-Id"]
