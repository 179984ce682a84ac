"""What clients may do: allow_methods and allow_paths against the real proxy and sandbox.

Each refused request is sent byte for byte (no client library normalises it first) and the
sandbox's counters prove that nothing reached it; each trick is also shown to reach the
sandbox when no allow list is set, so the counter is watching the right thing.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import RunningSandbox
from tests.integration.conftest import ProxyFactory, RunningProxy
from tests.integration.rawhttp import RawResponse, exchange
from tests.path_escapes import ESCAPES

ALLOWED = ["/v4.0/words/"]


async def send(proxy: RunningProxy, target: str, method: str = "GET") -> RawResponse:
    request = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    return await exchange(proxy.url, request.encode())


def assert_refused(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response.body
    assert response.header("X-Proxy-Error") == code
    assert json.loads(response.body)["Error"]["Code"] == code


@pytest.mark.parametrize("target", ESCAPES)
async def test_escape_from_an_allowed_prefix_is_refused_and_never_forwarded(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, target: str
) -> None:
    proxy = await proxy_factory(allow_paths=ALLOWED)
    before = (await sandbox.stats())["api_requests"]
    assert_refused(await send(proxy, target), 403, "operation_not_allowed")
    assert (await sandbox.stats())["api_requests"] == before


@pytest.mark.parametrize("target", ESCAPES)
async def test_without_allow_paths_the_same_request_does_reach_the_sandbox(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, target: str
) -> None:
    proxy = await proxy_factory()
    before = (await sandbox.stats())["api_requests"]
    response = await send(proxy, target)
    assert response.header("X-Proxy-Error") is None
    assert (await sandbox.stats())["api_requests"] == before + 1


@pytest.mark.parametrize(
    "target",
    [
        "/v4.0/words/storage/disc",
        "/V4.0/WORDS/storage/disc",
        "/v4.0/words/storage/exist/a.b..docx?folder=../../cells",  # the query is not matched
    ],
)
async def test_paths_under_the_prefix_are_forwarded(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, target: str
) -> None:
    proxy = await proxy_factory(allow_paths=ALLOWED)
    before = (await sandbox.stats())["api_requests"]
    response = await send(proxy, target)
    assert response.header("X-Proxy-Error") is None
    assert (await sandbox.stats())["api_requests"] == before + 1


async def test_other_prefix_is_refused(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(allow_paths=ALLOWED)
    before = (await sandbox.stats())["api_requests"]
    for target in ("/v4.0/cells/storage/disc", "/v4.0/wordsx/storage/disc", "/"):
        assert_refused(await send(proxy, target), 403, "operation_not_allowed")
    assert (await sandbox.stats())["api_requests"] == before


async def test_method_outside_allow_methods_is_refused_and_not_forwarded(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(allow_methods=["GET", "PUT"])
    before = (await sandbox.stats())["api_requests"]
    for method in ("DELETE", "POST"):
        assert_refused(
            await send(proxy, "/v4.0/words/storage/disc", method), 403, "operation_not_allowed"
        )
    assert (await sandbox.stats())["api_requests"] == before
    assert (await send(proxy, "/v4.0/words/storage/disc")).status == 200
    assert (await sandbox.stats())["api_requests"] == before + 1


async def test_local_token_endpoint_is_not_limited_by_allow_paths(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(allow_paths=ALLOWED, allow_methods=["GET"])
    form = {"grant_type": "client_credentials", "client_id": "a", "client_secret": "b"}
    async with proxy.client.post(f"{proxy.url}/connect/token", data=form) as response:
        assert response.status == 200
