"""Who may use the proxy: access keys (X-Proxy-Key) and local clients' bearer tokens."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import SecretStr

from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory, RunningProxy
from tests.integration.rawhttp import exchange

KEY = "ci-job-access-key-7f3a9c"
ALICE_SECRET = "alice-local-secret-1"
ECHO = "/v4.0/sandbox/echo/x"
API = "/v4.0/words/storage/disc"


def keyed(**overrides: Any) -> dict[str, Any]:
    return {"access_keys": {"ci-job": SecretStr(KEY)}, "require_client_auth": True, **overrides}


async def local_token(proxy: RunningProxy, client_id: str, secret: str) -> str:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    async with proxy.client.post(f"{proxy.url}/v4.0/words/connect/token", data=form) as response:
        assert response.status == 200, await response.text()
        token: str = (await response.json())["access_token"]
        return token


def access_lines(logs: LogCapture) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in logs.events("request")]
    return {line["request_id"]: line for line in lines if line.get("logger") == "proxy.access_log"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Proxy-Key": "wrong"},
        {"X-Proxy-Key": KEY[:-1]},
        {"X-Proxy-Key": ""},
        {"Authorization": f"Bearer {KEY}"},  # the key is no bearer token
        {"Authorization": "Bearer some-real-aspose-token"},
    ],
)
async def test_without_a_valid_credential_401_and_nothing_forwarded(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, headers: dict[str, str]
) -> None:
    proxy = await proxy_factory(**keyed())
    async with proxy.client.get(proxy.url + API, headers=headers) as response:
        assert response.status == 401
        assert response.headers["X-Proxy-Error"] == "client_auth_required"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        text = await response.text()
        assert json.loads(text)["Error"]["Code"] == "client_auth_required"
        assert KEY not in text
    assert await sandbox.stats() == {**await sandbox.stats(), "api_requests": 0}


async def test_access_key_is_accepted_named_in_the_log_and_never_forwarded_or_logged(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, logs: LogCapture
) -> None:
    proxy = await proxy_factory(**keyed())
    headers = {"X-Proxy-Key": KEY, "X-Request-Id": "ci-call-1"}
    async with proxy.client.get(proxy.url + ECHO, headers=headers) as response:
        assert response.status == 200
        echoed = await response.json()
    sent = {name.lower(): value for name, value in echoed["headers"]}
    assert "x-proxy-key" not in sent
    assert KEY not in json.dumps(echoed)
    assert access_lines(logs)["ci-call-1"]["client"] == "ci-job"
    assert KEY not in logs.text
    async with proxy.client.get(proxy.url + "/metrics", headers=headers) as response:
        assert KEY not in await response.text()


async def test_x_proxy_key_is_dropped_even_when_auth_is_not_required(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory()
    async with proxy.client.get(proxy.url + ECHO, headers={"X-Proxy-Key": KEY}) as response:
        echoed = await response.json()
    assert all(name.lower() != "x-proxy-key" for name, _ in echoed["headers"])


async def test_optional_auth_names_known_clients_and_lets_others_through(
    proxy_factory: ProxyFactory, logs: LogCapture
) -> None:
    proxy = await proxy_factory(access_keys={"ci-job": SecretStr(KEY)})
    for request_id, key in (("known", KEY), ("unknown", "nope")):
        headers = {"X-Proxy-Key": key, "X-Request-Id": request_id}
        async with proxy.client.get(proxy.url + API, headers=headers) as response:
            assert response.status == 200
    lines = access_lines(logs)
    assert lines["known"]["client"] == "ci-job"
    assert "client" not in lines["unknown"]


async def test_local_client_token_authenticates_sdk_style(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, logs: LogCapture
) -> None:
    proxy = await proxy_factory(
        local_clients={"alice": SecretStr(ALICE_SECRET)}, require_client_auth=True
    )
    token = await local_token(proxy, "alice", ALICE_SECRET)
    headers = {"Authorization": f"Bearer {token}", "X-Request-Id": "alice-1"}
    async with proxy.client.get(proxy.url + API, headers=headers) as response:
        assert response.status == 200
    assert access_lines(logs)["alice-1"]["client"] == "alice"
    forged = {"Authorization": "Bearer aspose-proxy.forged.0.x"}
    async with proxy.client.get(proxy.url + API, headers=forged) as response:
        assert response.status == 401
    assert (await sandbox.stats())["api_requests"] == 1


async def test_anonymous_local_token_does_not_authenticate(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    # Access keys only: the local endpoint still hands any caller a placeholder, which
    # must not count as a credential.
    proxy = await proxy_factory(**keyed())
    token = await local_token(proxy, "anyone", "anything")
    async with proxy.client.get(
        proxy.url + API, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 401
    assert (await sandbox.stats())["api_requests"] == 0


async def test_token_endpoint_and_probes_need_no_client_auth(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(**keyed(local_clients={"alice": SecretStr(ALICE_SECRET)}))
    await local_token(proxy, "alice", ALICE_SECRET)
    for path in ("/healthz", "/readyz", "/metrics"):
        async with proxy.client.get(proxy.url + path) as response:
            assert response.status in (200, 503), path
            assert "X-Proxy-Error" not in response.headers


@pytest.mark.parametrize(
    ("path", "header"),
    [
        (API, b"Authorization: Bearer aspose-proxy.c2RrMQ.1.\xc3\xa9"),
        (API, b"X-Proxy-Key: abc\xffdef"),
        (API, b"X-Proxy-Key: \xc3\xa9" * 3),
        ("/connect/token", b"Authorization: Basic \xc3\xa9"),
        ("/connect/token", b"Authorization: Basic \xff"),
    ],
)
async def test_non_ascii_credentials_are_refused_never_a_500(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, logs: LogCapture, path: str, header: bytes
) -> None:
    proxy = await proxy_factory(**keyed(local_clients={"alice": SecretStr(ALICE_SECRET)}))
    body = b"grant_type=client_credentials"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
        + header
        + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    response = await exchange(proxy.url, request)
    assert response.status in (400, 401)
    assert not logs.events("unhandled error")
    assert "Traceback" not in logs.text
    assert (await sandbox.stats())["api_requests"] == 0


async def test_the_bearer_scheme_is_case_insensitive(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(
        local_clients={"alice": SecretStr(ALICE_SECRET)}, require_client_auth=True
    )
    token = await local_token(proxy, "alice", ALICE_SECRET)
    for scheme in ("bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} {token}"}
        async with proxy.client.get(proxy.url + API, headers=headers) as response:
            assert response.status == 200, scheme


async def test_failed_authentications_are_counted_and_warned_once_a_minute(
    proxy_factory: ProxyFactory, logs: LogCapture
) -> None:
    proxy = await proxy_factory(**keyed(local_clients={"alice": SecretStr(ALICE_SECRET)}))
    for guess in range(5):
        headers = {"X-Proxy-Key": f"guess-{guess}"}
        async with proxy.client.get(proxy.url + API, headers=headers) as response:
            assert response.status == 401
    form = {"grant_type": "client_credentials", "client_id": "alice", "client_secret": "guess"}
    async with proxy.client.post(f"{proxy.url}/connect/token", data=form) as response:
        assert response.status == 400
    async with proxy.client.get(proxy.url + API, headers={"X-Proxy-Key": KEY}) as response:
        assert response.status == 200  # the right key still works: nobody is locked out
    async with proxy.client.get(proxy.url + "/metrics") as response:
        metrics = await response.text()
    assert 'aspose_proxy_client_auth_failures_total{credential="access_key"} 5.0' in metrics
    assert 'aspose_proxy_client_auth_failures_total{credential="client_secret"} 1.0' in metrics
    warnings = [json.loads(line) for line in logs.events("failed client authentications")]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert (warnings[0]["address"], warnings[0]["failures"]) == ("127.0.0.1", 1)
    assert "guess" not in logs.text
