"""The one pipeline (proxy/pipeline.py): every request, forwarded or the proxy's own, takes the
same entry, so what is done where responses leave applies to all of them."""

from __future__ import annotations

import json

from aiohttp import web
from pydantic import SecretStr

from proxy.app import create_app
from proxy.server import start_server
from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory, RunningProxy, proxy_settings
from tests.integration.rawhttp import exchange

ECHO = "/v4.0/sandbox/echo/x"


async def test_an_app_response_hook_and_request_app_work_for_every_kind_of_answer(
    sandbox: RunningSandbox,
) -> None:
    """Forwarded requests once skipped the app's hooks (and had no ``request.app``): a hook
    someone adds must apply to forwarded, own and refused answers alike."""
    app = create_app(proxy_settings(sandbox.url))

    async def mark(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Hooked"] = "same-app" if request.app is app else "other"

    app.on_response_prepare.append(mark)
    server = await start_server(app, "127.0.0.1", 0, shutdown_grace=1)
    try:
        answers = {
            "forwarded": await exchange(
                server.url, f"GET {ECHO} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            ),
            "own": await exchange(server.url, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"),
            "refused": await exchange(
                server.url, f"TRACE {ECHO} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            ),
        }
    finally:
        await server.stop()
    assert [answers[k].status for k in answers] == [200, 200, 400]
    for kind, answer in answers.items():
        assert answer.header("X-Hooked") == "same-app", kind
        assert answer.header("X-Request-Id"), kind


async def test_a_method_an_own_route_lacks_is_forwarded_as_aiohttp_s_router_did(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    before = (await sandbox.stats())["api_requests"]
    async with proxy.client.post(proxy.url + "/healthz") as response:
        await response.read()
        assert response.headers.get("Server") != "aspose-proxy"  # upstream's answer
    assert (await sandbox.stats())["api_requests"] == before + 1


async def test_the_access_line_names_the_client_address_and_the_body_bytes_each_way(
    proxy: RunningProxy, logs: LogCapture
) -> None:
    body = b"x" * 12345
    headers = {"X-Request-Id": "bytes-1"}
    async with proxy.client.put(proxy.url + ECHO, data=body, headers=headers) as response:
        answer = await response.read()
        assert response.status == 200
    async with proxy.client.get(proxy.url + "/healthz", headers={"X-Request-Id": "own-1"}) as own:
        own_body = await own.read()
    lines = {
        line["request_id"]: line
        for line in map(json.loads, logs.events("request"))
        if line.get("logger") == "proxy.access_log"
    }
    forwarded = lines["bytes-1"]
    assert forwarded["remote_addr"] == "127.0.0.1"
    assert forwarded["bytes_received"] == len(body)
    assert forwarded["bytes_sent"] == len(answer) > 0
    assert list(forwarded)[:3] == ["timestamp", "level", "event"]
    assert lines["own-1"]["bytes_received"] == 0
    assert lines["own-1"]["bytes_sent"] == len(own_body) > 0


async def test_an_expect_continue_request_passes_the_guards_once(
    proxy_factory: ProxyFactory,
) -> None:
    """``Expect: 100-continue`` once took aiohttp's routed way: its expect handler ran the
    guards, then the middleware ran them again, and a wrong key counted as two failures."""
    proxy = await proxy_factory(
        access_keys={"ci-job": SecretStr("a-key-of-16-characters-or-more")},
        require_client_auth=True,
    )
    response = await exchange(
        proxy.url,
        f"PUT {ECHO} HTTP/1.1\r\nHost: localhost\r\nX-Proxy-Key: wrong-key-of-16-chars\r\n"
        "Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n".encode(),
    )
    assert response.status == 401  # no 100 Continue first
    async with proxy.client.get(proxy.url + "/metrics") as response:
        metrics = await response.text()
    assert 'aspose_proxy_client_auth_failures_total{credential="access_key"} 1.0' in metrics
