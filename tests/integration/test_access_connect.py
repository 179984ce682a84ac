"""Who may connect: allow_from for forwarded requests and local token endpoints, the probes
that answer everyone, and /metrics with its own allow list.

The proxy listens on 127.0.0.1; an allow_from without 127.0.0.1 makes the test client a
stranger, and one with it a neighbour.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from proxy.reload import RELOAD_HOOKS
from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory
from tests.integration.rawhttp import open_to, read_head

ELSEWHERE = ["10.0.0.0/8"]
FORM = {"grant_type": "client_credentials", "client_id": "a", "client_secret": "b"}


async def test_address_outside_allow_from_gets_403_and_nothing_is_forwarded(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(allow_from=ELSEWHERE)
    before = await sandbox.stats()
    for method in ("GET", "PUT", "DELETE"):
        async with proxy.client.request(
            method, f"{proxy.url}/v4.0/words/storage/disc", data=b"x"
        ) as response:
            assert response.status == 403
            assert response.headers["X-Proxy-Error"] == "address_not_allowed"
            body = json.loads(await response.text())
            assert body["Error"]["Code"] == "address_not_allowed"
            assert "127.0.0.1" in body["Error"]["Message"]
            assert response.headers["X-Request-Id"] == body["RequestId"]
    assert await sandbox.stats() == before  # not even a token was fetched for it


async def test_address_inside_allow_from_is_forwarded(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(allow_from=["10.0.0.0/8", "127.0.0.1/32"])
    async with proxy.client.get(f"{proxy.url}/v4.0/words/storage/disc") as response:
        assert response.status == 200
    assert (await sandbox.stats())["api_requests"] == 1


@pytest.mark.parametrize("path", ["/connect/token", "/v4.0/words/connect/token", "/oauth2/token"])
async def test_local_token_endpoints_are_behind_allow_from_too(
    proxy_factory: ProxyFactory, path: str
) -> None:
    proxy = await proxy_factory(allow_from=ELSEWHERE)
    async with proxy.client.post(proxy.url + path, data=FORM) as response:
        assert response.status == 403
        assert response.headers["X-Proxy-Error"] == "address_not_allowed"
        assert "access_token" not in await response.text()


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_every_address(proxy_factory: ProxyFactory, path: str) -> None:
    proxy = await proxy_factory(allow_from=ELSEWHERE)
    async with proxy.client.get(proxy.url + path) as response:
        assert response.status in (200, 503)  # /readyz may still be fetching its token
        assert "X-Proxy-Error" not in response.headers


async def test_metrics_follow_allow_from_unless_metrics_allow_from_adds_the_scraper(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    closed = await proxy_factory(allow_from=ELSEWHERE)
    async with closed.client.get(closed.url + "/metrics") as response:
        assert response.status == 403
        assert response.headers["X-Proxy-Error"] == "address_not_allowed"

    scraped = await proxy_factory(allow_from=ELSEWHERE, metrics_allow_from=["127.0.0.1/32"])
    async with scraped.client.get(scraped.url + "/metrics") as response:
        assert response.status == 200
        assert "aspose_proxy_requests_total" in await response.text()
    # ... and the scraper's address may still not forward anything.
    async with scraped.client.get(scraped.url + "/v4.0/words/storage/disc") as response:
        assert response.status == 403
    assert (await sandbox.stats())["api_requests"] == 0


async def test_refusals_are_in_the_access_log(
    proxy_factory: ProxyFactory, logs: LogCapture
) -> None:
    proxy = await proxy_factory(allow_from=ELSEWHERE)
    headers = {"X-Request-Id": "stranger-1"}
    async with proxy.client.get(f"{proxy.url}/v4.0/words/x", headers=headers) as response:
        assert response.status == 403
    lines = [json.loads(line) for line in logs.events("request")]
    (line,) = [line for line in lines if line.get("request_id") == "stranger-1"]
    assert line["status"] == 403


async def test_non_loopback_bind_with_default_allow_from_logs_what_to_set(
    proxy_factory: ProxyFactory, logs: LogCapture
) -> None:
    await proxy_factory(host="0.0.0.0")
    (warning,) = [line for line in logs.text.splitlines() if "allow_from" in line]
    assert '"level": "warning"' in warning
    assert "ASPOSE_PROXY_ALLOW_FROM" in warning

    logs.stream.truncate(0)
    await proxy_factory(host="0.0.0.0", allow_from=["10.0.0.0/8"])
    await proxy_factory()
    assert "allow_from" not in logs.text


async def test_refused_upload_gets_no_100_continue(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(allow_from=ELSEWHERE)
    reader, writer = await open_to(proxy.url)
    try:
        writer.write(
            b"PUT /v4.0/words/storage/file/a.docx HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        status, headers = await asyncio.wait_for(read_head(reader), 5)
    finally:
        writer.close()
    assert status == 403  # the refusal itself, not "100 Continue" first
    assert ("X-Proxy-Error", "address_not_allowed") in headers
    assert (await sandbox.stats())["api_requests"] == 0


async def test_reload_swaps_the_access_rules(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory()
    async with proxy.client.get(f"{proxy.url}/v4.0/words/storage/disc") as response:
        assert response.status == 200
    reloaded = proxy.settings.model_copy(update={"allow_from": ELSEWHERE})
    for hook in proxy.server.runner.app[RELOAD_HOOKS]:
        hook(reloaded)
    async with proxy.client.get(f"{proxy.url}/v4.0/words/storage/disc") as response:
        assert response.status == 403
        assert response.headers["X-Proxy-Error"] == "address_not_allowed"
