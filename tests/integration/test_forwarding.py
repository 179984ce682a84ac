"""Transparent forwarding: target, methods, headers both ways, bodies, what is never forwarded."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.conftest import RunningSandbox
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.rawhttp import exchange, open_to, read_head

ECHO = "/v4.0/sandbox/echo"


async def echo(
    proxy: RunningProxy, method: str = "GET", target: str = ECHO + "/x", **kw: Any
) -> Any:
    url = URL(proxy.url + target, encoded=True)
    async with proxy.client.request(method, url, **kw) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def header_values(echoed: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echoed["headers"] if k.lower() == name.lower()]


async def test_method_and_url_override_headers_never_reach_upstream(proxy: RunningProxy) -> None:
    overrides = {
        "X-HTTP-Method-Override": "DELETE",
        "X-HTTP-Method": "DELETE",
        "X-Method-Override": "DELETE",
        "X-Original-URL": "/v4.0/cells/storage/file/x",
        "X-Rewrite-URL": "/v4.0/cells/storage/file/x",
    }
    echoed = await echo(proxy, headers={**overrides, "X-Keep": "1"})
    for name in overrides:
        assert header_values(echoed, name) == [], name
    assert header_values(echoed, "X-Keep") == ["1"]


async def test_client_authorization_is_replaced_by_the_proxy_token(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    echoed = await echo(proxy, headers={"Authorization": "Bearer client-made-this-up"})
    values = header_values(echoed, "Authorization")
    assert len(values) == 1
    assert values[0].startswith("Bearer ") and "client-made-this-up" not in values[0]


async def test_one_token_fetch_for_many_sequential_and_concurrent_requests(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    for _ in range(20):
        await echo(proxy)
    await asyncio.gather(*(echo(proxy) for _ in range(50)))
    stats = await sandbox.stats()
    assert stats["token_requests"] == 1
    assert stats["api_requests"] == 70


async def test_raw_path_and_query_are_forwarded_byte_for_byte(proxy: RunningProxy) -> None:
    echoed = await echo(proxy, target=ECHO + "/a%20b%2Fc.docx?a=1&a=2&b=%2F&c=%7e+x")
    assert echoed["path"] == ECHO + "/a%20b%2Fc.docx"
    assert echoed["query"] == "a=1&a=2&b=%2F&c=%7e+x"


async def test_storage_path_with_encoded_slash_reaches_upstream_unchanged(
    proxy: RunningProxy,
) -> None:
    target = "/v4.0/words/storage/file/a%20b%2Fc.docx?a=1&a=2&b=%2F"
    async with proxy.client.put(URL(proxy.url + target, encoded=True), data=b"doc") as response:
        assert response.status == 200
    async with proxy.client.get(URL(proxy.url + target, encoded=True)) as response:
        assert response.status == 200
        assert await response.read() == b"doc"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_is_forwarded(proxy: RunningProxy, method: str) -> None:
    echoed = await echo(proxy, method, data=b"x" if method in ("POST", "PUT", "PATCH") else None)
    assert echoed["method"] == method


async def test_head_is_forwarded_without_a_body(proxy: RunningProxy) -> None:
    async with proxy.client.head(proxy.url + ECHO + "/x") as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert await response.read() == b""


async def test_no_header_is_added_that_the_client_did_not_send(proxy: RunningProxy) -> None:
    response = await exchange(
        proxy.url, f"GET {ECHO}/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    )
    assert response.status == 200
    import json

    names = sorted(k.lower() for k, _ in json.loads(response.body)["headers"])
    assert names == ["authorization", "host"]


async def test_hop_by_hop_request_headers_and_those_named_in_connection_are_dropped(
    proxy: RunningProxy,
) -> None:
    request = (
        f"POST {ECHO}/x HTTP/1.1\r\nHost: localhost\r\n"
        "Connection: close, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        "Proxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nX-Keep: 1\r\n"
        "Content-Length: 2\r\n\r\nhi"
    ).encode()
    response = await exchange(proxy.url, request)
    import json

    names = {k.lower() for k, _ in json.loads(response.body)["headers"]}
    assert "x-keep" in names
    dropped = {
        "connection",
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    }
    assert not names & dropped


async def test_hop_by_hop_response_headers_and_those_named_in_connection_are_dropped(
    proxy: RunningProxy,
) -> None:
    async with proxy.client.get(proxy.url + "/v4.0/sandbox/hop-headers") as response:
        assert response.status == 200
        assert response.headers["X-Kept"] == "yes"
        for name in ("X-Secret-Hop", "Proxy-Authenticate", "Trailer", "Upgrade", "Keep-Alive"):
            assert name not in response.headers, name
        assert "x-secret-hop" not in response.headers.get("Connection", "").lower()


async def test_gzip_body_passes_through_compressed_with_its_length(proxy: RunningProxy) -> None:
    async with proxy.client.get(
        proxy.url + "/v4.0/sandbox/gzip", headers={"Accept-Encoding": "gzip"}
    ) as response:
        raw = await response.read()
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Content-Length"] == str(len(raw))
    assert gzip.decompress(raw) == ("hello from the sandbox\n" * 100).encode()


async def test_redirect_is_passed_to_the_client_not_followed(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    elsewhere = "http://127.0.0.1:9/steal-the-token"
    before = (await sandbox.stats())["api_requests"]
    async with proxy.client.get(
        proxy.url + "/v4.0/sandbox/redirect", params={"to": elsewhere}, allow_redirects=False
    ) as response:
        assert response.status == 302
        assert response.headers["Location"] == elsewhere
    assert (await sandbox.stats())["api_requests"] == before + 1


async def test_large_download_streams_with_content_length(proxy: RunningProxy) -> None:
    size = 20 * 1024 * 1024 + 7
    digest = hashlib.sha256()
    received = 0
    async with proxy.client.get(proxy.url + f"/v4.0/sandbox/bytes?size={size}") as response:
        assert response.headers["Content-Length"] == str(size)
        async for chunk in response.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
    expected = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()


async def test_spilled_upload_arrives_intact_with_content_length(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(body_memory_limit=64 * 1024)
    body = bytes(range(256)) * (5 * 4096)  # 5 MiB
    echoed = await echo(proxy, "PUT", data=body)
    assert echoed["body_length"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header_values(echoed, "Content-Length") == [str(len(body))]


async def test_chunked_upload_is_forwarded_with_a_content_length(proxy: RunningProxy) -> None:
    parts = [b"a" * 70000, b"b" * 3, b"c" * 1_500_000]

    async def chunks() -> Any:
        for part in parts:
            yield part

    echoed = await echo(proxy, "POST", data=chunks())
    body = b"".join(parts)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header_values(echoed, "Content-Length") == [str(len(body))]
    assert header_values(echoed, "Transfer-Encoding") == []


@pytest.mark.parametrize(
    "request_line",
    [
        "GET http://evil.example/v4.0/words/storage/disc HTTP/1.1",
        "GET //evil.example/v4.0/words/storage/disc HTTP/1.1",
        "CONNECT evil.example:443 HTTP/1.1",
    ],
)
async def test_only_origin_form_targets_are_forwarded(
    proxy: RunningProxy, sandbox: RunningSandbox, request_line: str
) -> None:
    before = (await sandbox.stats())["api_requests"]
    response = await exchange(
        proxy.url, f"{request_line}\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    )
    assert response.status == 400
    assert (await sandbox.stats())["api_requests"] == before


async def test_expect_continue_is_answered_by_the_proxy_and_not_forwarded(
    proxy: RunningProxy,
) -> None:
    reader, writer = await open_to(proxy.url)
    try:
        writer.write(
            f"PUT {ECHO}/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hello")
        await writer.drain()
        status, _ = await asyncio.wait_for(read_head(reader), 5)
        assert status == 200
        body = await reader.read()
    finally:
        writer.close()
    assert b'"expect"' not in body.lower()


async def test_oversized_declared_upload_gets_413_before_any_body_is_sent(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(max_body_size=1000)
    response = await exchange(
        proxy.url,
        f"PUT {ECHO}/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n"
        "Expect: 100-continue\r\n\r\n".encode(),
    )
    assert response.status == 413  # not 100 Continue first
    assert response.header("X-Proxy-Error") == "body_too_large"


async def test_chunked_upload_over_the_limit_gets_413(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(max_body_size=100_000, body_memory_limit=1000)

    async def chunks() -> Any:
        for _ in range(50):
            yield b"z" * 10_000

    async with proxy.client.post(proxy.url + ECHO + "/x", data=chunks()) as response:
        assert response.status == 413
        body = await response.json()
    assert body["Error"]["Code"] == "body_too_large"


async def test_client_request_id_is_kept_and_echoed(proxy: RunningProxy) -> None:
    async with proxy.client.get(
        proxy.url + ECHO + "/x", headers={"X-Request-Id": "trace-123"}
    ) as response:
        assert response.headers["X-Request-Id"] == "trace-123"


async def test_http10_client_gets_a_close_delimited_stream(proxy: RunningProxy) -> None:
    response = await exchange(
        proxy.url,
        b"GET /v4.0/sandbox/drip?seconds=0.2&size=300 HTTP/1.0\r\nHost: localhost\r\n\r\n",
    )
    assert response.status == 200
    assert response.body == (bytes(range(256)) * 2)[:300]


async def test_unknown_upstream_errors_are_relayed_as_they_are(proxy: RunningProxy) -> None:
    async with proxy.client.get(proxy.url + "/v4.0/sandbox/status/418") as response:
        assert response.status == 418
        assert "X-Proxy-Error" not in response.headers
    async with proxy.client.delete(proxy.url + "/v4.0/sandbox/status/204") as response:
        assert response.status == 204
        assert await response.read() == b""


async def test_a_client_session_without_auto_headers_sees_upstream_headers(
    proxy: RunningProxy,
) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.url + "/v4.0/words/storage/disc") as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/json"


async def test_small_chunked_upstream_answer_arrives_whole_and_chunked(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    """A body that arrives complete with its headers takes the one-write path; an upstream
    answer without Content-Length must not gain one, and must not lose bytes."""
    from aiohttp import web

    from proxy.server import start_server

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"X-Up": "1"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"part one, ")
        await response.write(b"part two")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/chunked", chunked)
    upstream = await start_server(app, "127.0.0.1", 0)
    try:
        proxy = await proxy_factory(upstream=upstream.url, token_url=f"{sandbox.url}/connect/token")
        response = await exchange(
            proxy.url, b"GET /chunked HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
    finally:
        await upstream.stop()
    assert response.status == 200
    assert response.header("X-Up") == "1"
    assert response.header("Content-Length") is None
    assert response.header("Transfer-Encoding") == "chunked"
    assert b"part one, " in response.body and b"part two" in response.body


@pytest.mark.parametrize(
    ("target", "answered_by_proxy"),
    [
        ("/healthz", True),
        ("/heal%74hz", True),  # decodes to /healthz: routed, as aiohttp's router decodes it
        ("/_proxy/usage", True),
        ("/_pro%78y/usage", True),
        ("/healthz/", False),  # not one of the proxy's own paths: forwarded
        ("/v4.0/sandbox/echo/%5Fproxy", False),
    ],
)
async def test_own_paths_are_answered_and_everything_else_forwarded(
    proxy: RunningProxy, sandbox: RunningSandbox, target: str, answered_by_proxy: bool
) -> None:
    """Forwarded requests skip the router (issue 11); the proxy's own paths, also written
    percent-encoded, must still be answered by the proxy and never reach upstream."""
    before = (await sandbox.stats())["api_requests"]
    async with proxy.client.get(URL(proxy.url + target, encoded=True)) as response:
        await response.read()
        assert response.headers.get("X-Request-Id")
    reached = (await sandbox.stats())["api_requests"] - before
    assert reached == (0 if answered_by_proxy else 1), (target, response.status)


async def test_forwarded_answer_carries_the_proxys_request_id_not_upstreams(
    proxy: RunningProxy,
) -> None:
    async with proxy.client.get(
        URL(proxy.url + ECHO + "/x", encoded=True), headers={"X-Request-Id": "mine-123"}
    ) as response:
        assert response.headers.getall("X-Request-Id") == ["mine-123"]
