"""Browsers on the same machine: a web page's requests (Origin) and DNS rebinding (Host)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import RunningSandbox
from tests.integration.chromium import dump_dom
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.rawhttp import RawResponse, exchange

API = "/v4.0/words/storage/disc"


async def send(
    proxy: RunningProxy, headers: str, method: str = "GET", path: str = API
) -> RawResponse:
    request = f"{method} {path} HTTP/1.1\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    return await exchange(proxy.url, request.encode())


@pytest.mark.parametrize("origin", ["https://evil.example", "null"])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_web_page_origin_is_refused_and_nothing_forwarded(
    proxy: RunningProxy, sandbox: RunningSandbox, origin: str, method: str
) -> None:
    before = (await sandbox.stats())["api_requests"]
    response = await send(proxy, f"Host: localhost:8080\r\nOrigin: {origin}\r\n", method)
    assert response.status == 403
    assert response.header("X-Proxy-Error") == "origin_not_allowed"
    assert json.loads(response.body)["Error"]["Code"] == "origin_not_allowed"
    assert (await sandbox.stats())["api_requests"] == before


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("Host: localhost\r\nOrigin: https://evil.example\r\n", 403),
        ("Host: evil.example:8080\r\n", 421),
    ],
    ids=["web-page-origin", "dns-rebound-host"],
)
async def test_a_refused_page_cannot_get_a_local_token(
    proxy: RunningProxy, head: str, status: int
) -> None:
    body = "grant_type=client_credentials&client_id=a&client_secret=b"
    request = (
        f"POST /connect/token HTTP/1.1\r\n{head}"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
    )
    response = await exchange(proxy.url, request.encode())
    assert response.status == status
    assert b"access_token" not in response.body


async def test_requests_without_origin_are_unaffected(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    response = await send(proxy, "Host: localhost:8080\r\n")
    assert response.status == 200
    assert (await sandbox.stats())["api_requests"] == 1


async def test_allow_origins_admits_the_listed_origin_only(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(allow_origins=["https://app.example.com"])
    ok = await send(proxy, "Host: localhost\r\nOrigin: https://app.example.com\r\n")
    assert ok.status == 200
    refused = await send(proxy, "Host: localhost\r\nOrigin: https://evil.example\r\n")
    assert refused.status == 403
    assert (await sandbox.stats())["api_requests"] == 1


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io:8080"])
async def test_dns_rebound_host_is_refused_on_a_loopback_listener(
    proxy: RunningProxy, sandbox: RunningSandbox, host: str
) -> None:
    before = (await sandbox.stats())["api_requests"]
    response = await send(proxy, f"Host: {host}\r\n")  # a rebound page sends no Origin on GET
    assert response.status == 421
    assert response.header("X-Proxy-Error") == "host_not_allowed"
    assert (await sandbox.stats())["api_requests"] == before


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8080",
        "127.0.0.1:8080",
        "127.0.0.2",
        "[::1]:8080",
        "192.168.1.5:8080",  # an IP literal: no DNS name to rebind
        "[fd00::5]:8080",
        socket.gethostname(),
        socket.gethostname().upper() + ":8080",
    ],
)
async def test_local_host_names_any_port_are_answered(proxy: RunningProxy, host: str) -> None:
    assert (await send(proxy, f"Host: {host}\r\n")).status == 200


async def test_a_request_without_host_is_answered(proxy: RunningProxy) -> None:
    request = f"GET {API} HTTP/1.0\r\n\r\n"  # HTTP/1.0 without Host: no browser sends that
    assert (await exchange(proxy.url, request.encode())).status == 200


async def test_allow_hosts_adds_a_name(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(allow_hosts=["proxy.internal"])
    assert (await send(proxy, "Host: proxy.internal:8080\r\n")).status == 200
    assert (await send(proxy, "Host: evil.example\r\n")).status == 421


async def test_host_check_is_on_when_listening_on_all_addresses(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    # Issue 16: the image listens on 0.0.0.0 (the test binds 127.0.0.1 as always); with
    # `docker run -p 127.0.0.1:8080:8080` a rebound page must still be refused.
    proxy = await proxy_factory(host="0.0.0.0", allow_from=["127.0.0.0/8"])
    refused = await send(proxy, "Host: evil.example:8080\r\n")
    assert refused.status == 421
    message = json.loads(refused.body)["Error"]["Message"]
    assert "allow_hosts" in message and "ASPOSE_PROXY_ALLOW_HOSTS" in message
    assert (await send(proxy, "Host: localhost:8080\r\n")).status == 200
    named = await proxy_factory(host="0.0.0.0", allow_from=["127.0.0.0/8"], allow_hosts=["proxy"])
    assert (await send(named, "Host: proxy:8080\r\n")).status == 200
    assert (await sandbox.stats())["api_requests"] == 2


@pytest.mark.parametrize("site", ["cross-site", "same-site", "Cross-Site"])
@pytest.mark.parametrize(
    "path", [API, "/_proxy/usage", "/connect/token", "/v4.0/words/connect/token"]
)
async def test_cross_site_fetch_without_origin_is_refused(
    proxy: RunningProxy, sandbox: RunningSandbox, site: str, path: str
) -> None:
    # An <img> or a fetch(..., {mode: "no-cors"}) from another site sends no Origin.
    method = "POST" if "token" in path else "GET"
    response = await send(proxy, f"Host: localhost\r\nSec-Fetch-Site: {site}\r\n", method, path)
    assert response.status == 403
    assert response.header("X-Proxy-Error") == "origin_not_allowed"
    assert b"access_token" not in response.body
    assert (await sandbox.stats())["api_requests"] == 0


@pytest.mark.parametrize("site", ["same-origin", "none"])
async def test_same_origin_and_user_initiated_fetches_are_unaffected(
    proxy: RunningProxy, site: str
) -> None:
    assert (await send(proxy, f"Host: localhost\r\nSec-Fetch-Site: {site}\r\n")).status == 200


async def test_cross_site_fetch_from_an_allowed_origin_is_answered(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(allow_origins=["https://app.example.com"])
    headers = "Host: localhost\r\nSec-Fetch-Site: cross-site\r\nOrigin: https://app.example.com\r\n"
    assert (await send(proxy, headers)).status == 200


async def test_a_cross_site_page_in_chromium_cannot_reach_the_api_without_origin(
    proxy: RunningProxy, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    # Issue 16: an <img> and a fetch(..., {mode: "no-cors"}) send no Origin; Chromium marks
    # them Sec-Fetch-Site: cross-site (the page is on localhost, the proxy on 127.0.0.1).
    target = f"{proxy.url}{API}"
    page = (
        f'<html><body><img src="{target}?via=img">'
        f'<script>fetch("{target}?via=fetch", {{mode: "no-cors"}})'
        '.finally(() => document.body.dataset.done = "yes")</script></body></html>'
    )

    async def serve_page(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve_page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        dom = await dump_dom(f"http://localhost:{port}/", tmp_path / "profile", wait_ms=5000)
    finally:
        await runner.cleanup()
    assert 'data-done="yes"' in dom  # the page's fetch did run
    async with proxy.client.get(proxy.url + "/metrics") as response:
        metrics = await response.text()
    refused = re.search(
        r'aspose_proxy_errors_total\{code="origin_not_allowed",status="403"\} (\S+)', metrics
    )
    assert refused is not None and float(refused.group(1)) >= 2, metrics
    assert (await sandbox.stats())["api_requests"] == 0
