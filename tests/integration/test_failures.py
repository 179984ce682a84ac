"""Every error the proxy makes itself: JSON with a code and a sentence, never a hang."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningSandbox
from tests.integration.conftest import ProxyFactory, RunningProxy

ECHO = "/v4.0/sandbox/echo/x"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def proxy_error(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await response.json()
    assert response.headers["X-Proxy-Error"] == body["Error"]["Code"]
    assert body["RequestId"] == response.headers["X-Request-Id"]
    assert set(body["Error"]) >= {"Code", "Message", "Description", "DateTime"}
    return body


async def test_rejected_credentials_give_503_naming_invalid_client_and_the_client_id(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    await sandbox.control("rotate-secret", {"client_secret": "not-what-the-proxy-has"})
    proxy = await proxy_factory()
    async with proxy.client.get(proxy.url + ECHO) as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) >= 1
        body = await proxy_error(response)
    assert body["Error"]["Code"] == "token_unavailable"
    assert "invalid_client" in body["Error"]["Message"]
    assert "'demo'" in body["Error"]["Message"]
    async with proxy.client.get(proxy.url + "/readyz") as response:
        assert response.status == 503
        assert "invalid_client" in (await response.json())["reason"]


async def test_readyz_gives_callers_outside_allow_from_a_generic_reason(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    # Issue 16: probes skip the guards; the detail names the client_id and the token URL.
    await sandbox.control("rotate-secret", {"client_secret": "not-what-the-proxy-has"})
    proxy = await proxy_factory(allow_from=["10.0.0.0/8"])  # the test calls from 127.0.0.1
    async with proxy.client.get(proxy.url + ECHO) as response:
        assert response.status == 403  # the address guard; the token fetch failed meanwhile
    for _ in range(100):
        async with proxy.client.get(proxy.url + "/readyz") as response:
            assert response.status == 503
            reason = (await response.json())["reason"]
        if reason != "no access token fetched yet":
            break
        await asyncio.sleep(0.05)
    assert "/_proxy/" in reason
    for detail in ("invalid_client", "demo", sandbox.url, "connect/token"):
        assert detail not in reason


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "rebound.example"},
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
    ids=["dns-rebound-host", "foreign-origin", "cross-site-page"],
)
async def test_readyz_gives_a_web_page_from_an_admitted_address_a_generic_reason(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, headers: dict[str, str]
) -> None:
    # Issue 16: a DNS-rebound or cross-site page runs on an address allow_from admits
    # (127.0.0.1); it must not read the detail (client_id, token URL) either.
    await sandbox.control("rotate-secret", {"client_secret": "not-what-the-proxy-has"})
    proxy = await proxy_factory()
    for _ in range(100):
        async with proxy.client.get(proxy.url + "/readyz") as response:
            assert response.status == 503
            detailed = (await response.json())["reason"]
        if "invalid_client" in detailed:
            break
        await asyncio.sleep(0.05)
    assert "invalid_client" in detailed  # the plain caller (curl, a probe) gets the detail
    async with proxy.client.get(proxy.url + "/readyz", headers=headers) as response:
        assert response.status == 503
        answer = await response.json()
    assert "/_proxy/" in answer["reason"]
    for detail in ("invalid_client", "demo", sandbox.url, "connect/token"):
        assert detail not in json.dumps(answer)


async def test_failing_token_endpoint_gives_503_and_backs_off(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    await sandbox.token_fault(status=500, body="<html>oops</html>")
    proxy = await proxy_factory()
    async with proxy.client.get(proxy.url + ECHO) as response:
        assert response.status == 503
        body = await proxy_error(response)
    assert "HTTP 500" in body["Error"]["Message"]
    before = (await sandbox.stats())["token_requests"]
    async with proxy.client.get(proxy.url + ECHO) as response:
        assert response.status == 503  # backing off: answered at once, no new fetch
        assert int(response.headers["Retry-After"]) >= 1
    assert (await sandbox.stats())["token_requests"] == before
    await sandbox.reset()
    for _ in range(100):  # the refresher retries after its backoff (well under 5 s)
        async with proxy.client.get(proxy.url + "/readyz") as response:
            if response.status == 200:
                break
        await asyncio.sleep(0.1)
    async with proxy.client.get(proxy.url + ECHO) as response:
        assert response.status == 200


async def test_token_endpoint_that_never_answers_gives_503_after_token_wait_timeout(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    await sandbox.token_fault(delay=30)
    proxy = await proxy_factory(token_wait_timeout=0.5)
    async with proxy.client.get(proxy.url + ECHO) as response:
        assert response.status == 503
        assert (await proxy_error(response))["Error"]["Code"] == "token_unavailable"


async def test_upstream_down_gives_502(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(
        upstream=f"http://127.0.0.1:{free_port()}", token_url=f"{sandbox.url}/connect/token"
    )
    async with proxy.client.get(proxy.url + ECHO) as response:
        assert response.status == 502
        assert (await proxy_error(response))["Error"]["Code"] == "upstream_unreachable"


async def test_slow_upstream_gives_504(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(upstream_timeout=0.5)
    async with proxy.client.get(proxy.url + "/v4.0/sandbox/delay?seconds=5") as response:
        assert response.status == 504
        assert (await proxy_error(response))["Error"]["Code"] == "upstream_timeout"


async def test_upstream_reset_mid_body_aborts_the_client_response(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    await sandbox.api_fault(reset=True, count=1)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with proxy.client.get(proxy.url + ECHO) as response:
            assert response.status == 200
            await response.read()
    async with proxy.client.get(proxy.url + ECHO) as response:  # the proxy is fine after it
        assert response.status == 200


async def test_stalled_upstream_body_is_cut_after_read_timeout(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(read_timeout=0.3)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with proxy.client.get(
            proxy.url + "/v4.0/sandbox/drip?seconds=5&size=100"
        ) as response:
            assert response.status == 200
            await response.read()


async def test_declared_body_too_large_gives_413(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(max_body_size=10)
    async with proxy.client.put(proxy.url + ECHO, data=b"x" * 11) as response:
        assert response.status == 413
        assert (await proxy_error(response))["Error"]["Code"] == "body_too_large"


async def test_health_ready_and_metrics_are_answered_locally(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    async with proxy.client.get(proxy.url + ECHO) as response:
        assert response.status == 200
    before = (await sandbox.stats())["api_requests"]
    async with proxy.client.get(proxy.url + "/healthz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ok"})
    async with proxy.client.get(proxy.url + "/readyz") as response:
        assert response.status == 200
    async with proxy.client.get(proxy.url + "/metrics") as response:
        text = await response.text()
    assert (await sandbox.stats())["api_requests"] == before
    for name in (
        'aspose_proxy_requests_total{status="200"}',
        "aspose_proxy_upstream_latency_seconds_bucket",
        'aspose_proxy_token_fetches_total{result="ok"} 1.0',
        "aspose_proxy_replays_total 0.0",
        "aspose_proxy_token_seconds_to_expiry",
    ):
        assert name in text, name
