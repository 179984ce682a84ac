"""Connection-level guards (proxy/connections.py): bounded request heads, the request-head deadline,
the connection caps, and a Server header that names no versions.

Slow clients are real sockets on loopback. Another loopback address is 127.0.0.2: on Linux the
whole of 127.0.0.0/8 is loopback, so a socket bound there reaches 127.0.0.1 (and counts as the
same client). Which addresses are one client is unit-tested (tests/unit/test_connection_caps.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory, RunningProxy
from tests.integration.rawhttp import exchange, read_head

DISC = "/v4.0/words/storage/disc"
OTHER_ADDRESS = "127.0.0.2"


def head(target: str = DISC, *extra: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def connect(
    url: str, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parsed = URL(url)
    return await asyncio.open_connection(parsed.host, parsed.port, local_addr=(source, 0))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes the connection within ``seconds`` (nothing sent back)."""
    try:
        async with asyncio.timeout(seconds):
            return await reader.read() == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


async def drip(writer: asyncio.StreamWriter, interval: float) -> None:
    """Slowloris: a request line, then one header line every ``interval`` seconds, forever."""
    writer.write(f"GET {DISC} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
    n = 0
    while not writer.is_closing():
        await asyncio.sleep(interval)
        n += 1
        writer.write(f"X-Drip-{n}: {n}\r\n".encode())
        try:
            await writer.drain()
        except ConnectionError:
            return


async def cut_while_dripping(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, within: float = 5
) -> bool:
    """Drip a head until the server closes the connection (True) or ``within`` passes."""
    dripping = asyncio.create_task(drip(writer, 0.1))
    try:
        return await closed_within(reader, within)
    finally:
        dripping.cancel()
        writer.close()


@pytest.fixture
async def other_client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from 127.0.0.2."""
    connector = aiohttp.TCPConnector(local_addr=(OTHER_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


# -- bounded request heads ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "request_bytes"),
    [
        ("request line", head("/v4.0/words/" + "a" * 9000)),
        ("header field", head(DISC, "X-Long: " + "b" * 17000)),
        ("header count", head(DISC, *(f"X-H{i}: {i}" for i in range(101)))),
    ],
)
async def test_oversized_head_gets_431_json_and_the_proxy_keeps_serving(
    proxy: RunningProxy, sandbox: RunningSandbox, what: str, request_bytes: bytes
) -> None:
    answer = await exchange(proxy.url, request_bytes)
    assert answer.status == 431, what
    body = json.loads(answer.body)
    assert body["Error"]["Code"] == "request_head_too_large"
    assert answer.header("X-Proxy-Error") == "request_head_too_large"
    assert answer.header("Server") == "aspose-proxy"
    assert answer.header("X-Request-Id") == body["RequestId"]
    assert (await sandbox.stats()).get("api_requests", 0) == 0  # nothing forwarded
    async with proxy.client.get(proxy.url + DISC) as response:
        assert response.status == 200


async def test_a_head_within_the_bounds_is_forwarded(proxy: RunningProxy) -> None:
    # (The sandbox upstream has aiohttp's default bounds: 8190 bytes a field, 128 fields.)
    headers = {f"X-H{i}": "v" * 100 for i in range(90)} | {"X-Long": "c" * 8000}
    async with proxy.client.get(proxy.url + DISC, headers=headers) as response:
        assert response.status == 200


async def test_unparsable_head_is_answered_without_quoting_it(
    proxy: RunningProxy, logs: LogCapture
) -> None:
    # aiohttp's own answer and log line quote the offending line: here, a credential.
    key = "pk-" + "s3cr3t" * 3000
    answer = await exchange(proxy.url, head(DISC, f"X-Proxy-Key: {key}"))
    assert answer.status == 431
    assert b"s3cr3t" not in answer.body
    bad = await exchange(proxy.url, b"GET / HTTP/1.1\r\nBad Header s3cr3t\r\n\r\n")
    assert bad.status == 400
    assert json.loads(bad.body)["Error"]["Code"] == "bad_request"
    assert b"s3cr3t" not in bad.body
    await asyncio.sleep(0)
    assert "s3cr3t" not in logs.text
    assert logs.events("unparsable request")


@pytest.mark.parametrize(
    "request_line",
    [
        f"GET {DISC}\r\n\r\n",  # HTTP/0.9: no version at all
        f"GET {DISC} HTTP/0.9\r\n\r\n",
        f"GET {DISC} HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n",
    ],
)
async def test_http_09_and_20_request_lines_get_400_and_are_never_forwarded(
    proxy: RunningProxy, sandbox: RunningSandbox, request_line: str
) -> None:
    before = (await sandbox.stats()).get("api_requests", 0)
    reader, writer = await connect(proxy.url)
    try:
        writer.write(request_line.encode())
        async with asyncio.timeout(5):
            answer = await reader.read()  # everything, up to the proxy's close
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split(b" ")[1] == b"400", answer[:200]
    assert b"X-Proxy-Error: bad_request" in rest
    assert (await sandbox.stats()).get("api_requests", 0) == before


async def test_http_10_requests_are_still_answered(proxy: RunningProxy) -> None:
    answer = await exchange(proxy.url, f"GET {DISC} HTTP/1.0\r\n\r\n".encode())
    assert answer.status == 200


# -- request-head deadline ------------------------------------------------------------------


async def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(request_header_timeout=0.5)
    reader, writer = await connect(proxy.url)
    started = time.monotonic()
    assert await closed_within(reader, 5)
    assert time.monotonic() - started >= 0.4
    writer.close()


async def test_a_slowloris_drip_is_closed_at_the_deadline(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(request_header_timeout=0.5)
    reader, writer = await connect(proxy.url)
    assert await cut_while_dripping(reader, writer)


async def test_a_slow_head_within_the_deadline_is_served(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(request_header_timeout=2)
    reader, writer = await connect(proxy.url)
    for part in (f"GET {DISC} HTTP/1.1\r\n", "Host: 127.0.0.1\r\n", "Accept: */*\r\n", "\r\n"):
        writer.write(part.encode())
        await asyncio.sleep(0.2)
    status, _ = await read_head(reader)
    assert status == 200
    writer.close()


async def test_kept_alive_connection_idle_between_requests_is_not_cut_but_a_drip_is(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(request_header_timeout=0.5)
    reader, writer = await connect(proxy.url)
    for i in range(3):
        if i:
            # Idle longer than the deadline between requests: the deadline starts with the
            # first byte of the next head, so the connection stays usable.
            await asyncio.sleep(0.8)
        writer.write(head())
        status, headers = await read_head(reader)
        assert status == 200
        length = next(int(v) for k, v in headers if k.lower() == "content-length")
        await reader.readexactly(length)
    # The next head on the same connection drips: cut at its own deadline.
    assert await cut_while_dripping(reader, writer)


# -- connection caps -----------------------------------------------------------------------


async def test_all_of_loopback_is_one_client_for_the_cap(
    proxy_factory: ProxyFactory, other_client: aiohttp.ClientSession, logs: LogCapture
) -> None:
    """Any local user can pick 127.0.0.2, .3, ...: they count with 127.0.0.1 (issue 16)."""
    proxy = await proxy_factory(max_connections_per_client=3)
    held = [await connect(proxy.url) for _ in range(3)]
    reader, writer = await connect(proxy.url, OTHER_ADDRESS)
    assert await closed_within(reader, 2)  # the fourth, from 127.0.0.2: closed at once
    writer.close()
    assert logs.events("client at max_connections_per_client: closing its new connections")
    # A freed slot is usable again, from any loopback address.
    held[0][1].close()
    await asyncio.sleep(0.2)
    async with other_client.get(proxy.url + DISC) as response:
        assert response.status == 200
    for _, held_writer in held[1:]:
        held_writer.close()


async def test_connections_beyond_max_connections_are_closed_and_counted(
    proxy_factory: ProxyFactory, logs: LogCapture
) -> None:
    proxy = await proxy_factory(max_connections=3, max_connections_per_client=100)
    held = [await connect(proxy.url) for _ in range(3)]
    reader, writer = await connect(proxy.url)
    assert await closed_within(reader, 2)  # over the process's cap: closed at once
    writer.close()
    assert logs.events("process at max_connections: closing new connections")
    held[0][1].close()
    await asyncio.sleep(0.2)
    async with proxy.client.get(proxy.url + "/metrics") as response:
        text = await response.text()
    assert 'aspose_proxy_connections_refused_total{limit="max_connections"} 1.0' in text
    for _, held_writer in held[1:]:
        held_writer.close()


async def test_300_slow_sockets_do_not_slow_an_ordinary_request(
    proxy_factory: ProxyFactory,
) -> None:
    """300 dripping sockets (the per-client cap raised to hold them all) while an ordinary
    client makes requests. The head deadline is raised so that it cannot close the slow
    sockets while this runs on a loaded machine."""
    proxy = await proxy_factory(request_header_timeout=120, max_connections_per_client=400)
    slow = await asyncio.gather(*(connect(proxy.url) for _ in range(300)))
    drips = [asyncio.create_task(drip(writer, 0.3)) for _, writer in slow]
    try:
        await asyncio.sleep(0.5)
        for _ in range(20):
            started = time.monotonic()
            async with proxy.client.get(proxy.url + DISC) as response:
                assert response.status == 200
                await response.read()
            assert time.monotonic() - started < 5.0  # generous: a normal call takes ms
        still_open = sum(not r.at_eof() and r.exception() is None for r, _ in slow)
        assert still_open == 300, still_open
    finally:
        for task in drips:
            task.cancel()
        for _, writer in slow:
            writer.close()


# -- Server header --------------------------------------------------------------------------


async def test_the_proxys_own_answers_name_no_versions_and_forwarded_ones_keep_upstreams(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    own = [
        proxy.client.get(proxy.url + "/healthz"),
        proxy.client.get(proxy.url + "/readyz"),
        proxy.client.post(
            proxy.url + "/connect/token",
            data={"grant_type": "client_credentials", "client_id": "a", "client_secret": "b"},
        ),
    ]
    for call in own:
        async with call as response:
            assert response.headers["Server"] == "aspose-proxy"
    error = await exchange(proxy.url, b"GET http://elsewhere/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert error.header("X-Proxy-Error")
    assert error.header("Server") == "aspose-proxy"
    async with sandbox.session.get(sandbox.url + DISC, headers=await sandbox.auth_headers()) as r:
        upstream_server = r.headers["Server"]
    async with proxy.client.get(proxy.url + DISC) as response:
        assert response.status == 200
        assert response.headers["Server"] == upstream_server
