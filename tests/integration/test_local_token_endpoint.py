"""The local token endpoints: SDKs get a placeholder from the proxy, never the real token.

Every official SDK fetches a token itself, each from its own path. The proxy answers a POST on
those paths in OAuth's shape, without forwarding it; the placeholder is then replaced by the
proxy's real token on API calls like any client ``Authorization``.
"""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import SecretStr

from proxy.sandbox.diagnostics import credential_fingerprint
from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory, RunningProxy, held_tokens

TOKEN_PATHS = (
    "/connect/token",  # PDF
    "/v4.0/words/connect/token",  # Words, every language
    "/v3.0/cells/connect/token",  # Cells v3
    "/v4.0/cells/connect/token",  # Cells v4
    "/oauth2/token",  # old SDKs
)
FORM = {"grant_type": "client_credentials", "client_id": "anyone", "client_secret": "anything"}


async def real_token(proxy: RunningProxy) -> str:
    """The token the proxy holds for upstream (what must never reach a client)."""
    token = await held_tokens(proxy.server.runner.app).get()
    return token.value


async def post_token(
    proxy: RunningProxy,
    path: str,
    form: dict[str, str] | str,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    async with proxy.client.post(f"{proxy.url}{path}", data=form, headers=headers) as response:
        text = await response.text()
        return response.status, dict(response.headers), text


@pytest.mark.parametrize("path", TOKEN_PATHS)
async def test_token_path_answers_a_placeholder_in_oauth_shape(
    proxy: RunningProxy, sandbox: RunningSandbox, path: str
) -> None:
    real = await real_token(proxy)
    before = (await sandbox.stats())["token_requests"]

    status, headers, text = await post_token(proxy, path, FORM)

    assert status == 200, text
    assert headers["Content-Type"].startswith("application/json")
    body = json.loads(text)
    assert set(body) >= {"access_token", "expires_in", "token_type"}
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert body["token_type"].lower() == "bearer"
    assert real not in text  # the upstream token is never revealed
    assert body["access_token"] != real
    assert not body["access_token"].startswith("eyJ")  # not a JWT from upstream either
    assert (await sandbox.stats())["token_requests"] == before  # never forwarded


async def test_sdk_style_unencoded_body_is_answered(proxy: RunningProxy) -> None:
    """The Words Python SDK concatenates the form body by hand, with an explicit content type."""
    body = "grant_type=client_credentials&client_id=some-id&client_secret=some-secret"
    status, _, text = await post_token(
        proxy,
        "/v4.0/words/connect/token",
        body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
    )
    assert status == 200, text
    assert json.loads(text)["access_token"]


async def test_placeholder_is_replaced_on_api_calls(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    _, _, text = await post_token(proxy, "/v4.0/words/connect/token", FORM)
    placeholder = json.loads(text)["access_token"]
    headers = {"Authorization": f"Bearer {placeholder}"}
    async with proxy.client.get(
        f"{proxy.url}/v4.0/sandbox/echo/placeholder", headers=headers
    ) as response:
        assert response.status == 200
        echoed = await response.json()
    sent = [value for name, value in echoed["headers"] if name.lower() == "authorization"]
    # The sandbox's echo shows a fingerprint of the credential, never the token itself.
    real = (await real_token(proxy)).encode()
    assert sent == [f"Bearer {credential_fingerprint(real)}"]
    assert (await sandbox.stats())["unauthorized_sent"] == 0


@pytest.mark.parametrize("path", TOKEN_PATHS)
async def test_get_on_a_token_path_is_not_answered_locally(
    proxy: RunningProxy, logs: LogCapture, path: str
) -> None:
    async with proxy.client.get(f"{proxy.url}{path}") as response:
        text = await response.text()
        status = response.status
        allow = response.headers.get("Allow")
    # the sandbox (like Aspose) knows only POST on its token paths: its 405 came through
    assert (status, allow) == (405, "POST"), text
    assert "access_token" not in text
    upstream = [
        line
        for line in map(json.loads, logs.events("request"))
        if line.get("logger") == "sandbox" and (line["method"], line["path"]) == ("GET", path)
    ]
    assert len(upstream) == 1  # it went upstream


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({**FORM, "grant_type": "password"}, "unsupported_grant_type"),
        ({**FORM, "grant_type": "authorization_code"}, "unsupported_grant_type"),
        # RFC 6749 §5.2: a missing parameter is invalid_request
        ({"client_id": "anyone", "client_secret": "anything"}, "invalid_request"),
    ],
)
async def test_wrong_grant_type_is_an_oauth_error(
    proxy: RunningProxy, sandbox: RunningSandbox, form: dict[str, str], error: str
) -> None:
    before = (await sandbox.stats())["token_requests"]
    status, headers, text = await post_token(proxy, "/connect/token", form)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(text) == {"error": error}
    assert (await sandbox.stats())["token_requests"] == before


async def test_local_clients_right_credentials_get_a_placeholder(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(local_clients={"alice": SecretStr("s1-alice-local-secret")})
    before = (await sandbox.stats())["token_requests"]
    form = {
        "grant_type": "client_credentials",
        "client_id": "alice",
        "client_secret": "s1-alice-local-secret",
    }
    for path in TOKEN_PATHS:
        status, _, text = await post_token(proxy, path, form)
        assert status == 200, (path, text)
        assert json.loads(text)["access_token"]
    assert (await sandbox.stats())["token_requests"] == before


@pytest.mark.parametrize(
    ("client_id", "secret"),
    [
        ("alice", "wrong"),
        ("alice", ""),
        ("bob", "s1-alice-local-secret"),
        ("", ""),
        ("Alice", "s1-alice-local-secret"),
        ("alice", "s1-alice-local-secret "),
    ],
)
async def test_local_clients_wrong_credentials_are_invalid_client(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, client_id: str, secret: str
) -> None:
    proxy = await proxy_factory(local_clients={"alice": SecretStr("s1-alice-local-secret")})
    before = (await sandbox.stats())["token_requests"]
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    status, headers, text = await post_token(proxy, "/v4.0/words/connect/token", form)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(text) == {"error": "invalid_client"}
    assert (await sandbox.stats())["token_requests"] == before


async def test_local_clients_accept_an_unencoded_secret_with_plus(
    proxy_factory: ProxyFactory,
) -> None:
    """The Words Python SDK does not URL-encode the form body (``'...&client_secret=' + s``),
    so a secret ``p+q`` arrives as the raw bytes ``p+q``, which form-decoding turns into
    ``p q``. The sandbox accepts both readings; the local endpoint must too, or such a client
    is refused with ``invalid_client`` although its secret is right."""
    proxy = await proxy_factory(local_clients={"alice": SecretStr("p+q%41-0123456789abcd")})
    body = "grant_type=client_credentials&client_id=alice&client_secret=p+q%41-0123456789abcd"
    status, _, text = await post_token(
        proxy,
        "/v4.0/words/connect/token",
        body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200, text


async def test_local_clients_accept_http_basic_credentials(
    proxy_factory: ProxyFactory,
) -> None:
    """RFC 6749 §2.3.1: a token endpoint MUST support client credentials in HTTP Basic auth
    (the sandbox does, as Aspose's identity server does)."""
    proxy = await proxy_factory(local_clients={"alice": SecretStr("s1-alice-local-secret")})
    basic = base64.b64encode(b"alice:s1-alice-local-secret").decode()
    status, _, text = await post_token(
        proxy,
        "/connect/token",
        {"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert status == 200, text


async def test_local_client_id_appears_in_the_access_log(
    proxy_factory: ProxyFactory, logs: LogCapture
) -> None:
    proxy = await proxy_factory(local_clients={"alice": SecretStr("s1-alice-local-secret")})
    form = {
        "grant_type": "client_credentials",
        "client_id": "alice",
        "client_secret": "s1-alice-local-secret",
    }
    _, _, text = await post_token(proxy, "/v4.0/words/connect/token", form)
    placeholder = json.loads(text)["access_token"]
    headers = {"Authorization": f"Bearer {placeholder}", "X-Request-Id": "alice-call-1"}
    async with proxy.client.get(f"{proxy.url}/v4.0/words/storage/disc", headers=headers) as resp:
        assert resp.status == 200
    # and one call with a made-up placeholder, which names nobody
    headers = {"Authorization": "Bearer aspose-proxy.forged", "X-Request-Id": "forged-call-1"}
    async with proxy.client.get(f"{proxy.url}/v4.0/words/storage/disc", headers=headers) as resp:
        assert resp.status == 200

    lines = [
        line
        for line in map(json.loads, logs.events("request"))
        if line.get("logger") == "proxy.access_log"
    ]
    api_lines = [line for line in lines if line.get("path") == "/v4.0/words/storage/disc"]
    by_id = {line["request_id"]: line for line in api_lines}
    assert by_id["alice-call-1"].get("client") == "alice", by_id["alice-call-1"]
    assert "client" not in by_id["forged-call-1"], by_id["forged-call-1"]
    token_lines = [line for line in lines if line.get("path") == "/v4.0/words/connect/token"]
    assert [line.get("client") for line in token_lines] == ["alice"]


async def test_local_token_endpoint_off_forwards_token_paths(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    proxy = await proxy_factory(local_token_endpoint=False)
    await real_token(proxy)
    for path in TOKEN_PATHS:
        before = (await sandbox.stats())["token_requests"]
        form = {
            "grant_type": "client_credentials",
            "client_id": sandbox.config.client_id,
            "client_secret": sandbox.config.client_secret,
        }
        status, _, text = await post_token(proxy, path, form)
        assert status == 200, (path, text)
        # the sandbox answered: a JWT it issued, not a placeholder
        assert json.loads(text)["access_token"].startswith("eyJ")
        assert (await sandbox.stats())["token_requests"] == before + 1
    # and wrong credentials get the upstream's own OAuth error
    status, _, text = await post_token(proxy, "/connect/token", FORM)
    assert status == 400
    assert json.loads(text) == {"error": "invalid_client"}
