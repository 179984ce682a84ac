"""Upstream TLS and egress proxies: an HTTPS sandbox whose certificate comes from a CA made
here (trustme), and a real forward proxy on loopback (tests/integration/forward_proxy.py).

TLS is always verified: ``ca_file`` adds CAs to the system's; an untrusted certificate fails
closed (no credentials sent). ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` apply to the API
and the token endpoint alike, and are read once at start-up.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from yarl import URL

from proxy.sandbox import STATE, SandboxConfig, create_sandbox_app
from proxy.settings import SettingsError, load_settings
from proxy.upstream import egress_proxy_for
from tests.conftest import RunningSandbox
from tests.integration.conftest import SANDBOX_SECRET, ProxyFactory, RunningProxy
from tests.integration.forward_proxy import ForwardProxy, forward_proxy
from tests.integration.test_cli import run_cli

DISC = "/v4.0/words/storage/disc"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass
class TLSSandbox:
    url: str
    app: web.Application
    urls: list[str]

    def stats(self) -> dict[str, int]:
        return self.app[STATE].stats.as_dict()


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No egress proxy from the machine's environment; each test sets its own."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    yield monkeypatch


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "extra-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


TLSSandboxFactory = Callable[..., Awaitable[TLSSandbox]]


@pytest.fixture
async def tls_sandbox_factory() -> AsyncIterator[TLSSandboxFactory]:
    """A sandbox (token endpoint and API) over HTTPS: one port per CA given, each with a
    certificate from that CA (``urls`` in the same order)."""
    runners: list[web.AppRunner] = []

    async def start(*cas: trustme.CA) -> TLSSandbox:
        app = create_sandbox_app(SandboxConfig())
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        urls = []
        for ca in cas:
            server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_tls)
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
            await site.start()
            urls.append(f"https://127.0.0.1:{site.port}")
        return TLSSandbox(urls[0], app, urls)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def tls_sandbox(tls_sandbox_factory: TLSSandboxFactory, ca: trustme.CA) -> TLSSandbox:
    return await tls_sandbox_factory(ca)


@pytest.fixture
async def https_egress(clean_proxy_env: pytest.MonkeyPatch) -> AsyncIterator[ForwardProxy]:
    """A forward proxy on loopback, named by ``HTTPS_PROXY``."""
    async with forward_proxy() as egress:
        clean_proxy_env.setenv("HTTPS_PROXY", egress.url)
        yield egress


async def assert_disc_served(proxy: RunningProxy) -> None:
    async with proxy.client.get(proxy.url + DISC) as response:
        assert response.status == 200


async def error_body(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = await response.json()
    assert response.headers["X-Proxy-Error"] == body["Error"]["Code"]
    return body


# -- TLS ------------------------------------------------------------------------------------


async def test_https_upstream_with_ca_file_through_a_connect_tunnel(
    proxy_factory: ProxyFactory,
    tls_sandbox: TLSSandbox,
    ca_file: Path,
    https_egress: ForwardProxy,
) -> None:
    await assert_disc_served(await proxy_factory(tls_sandbox.url, ca_file=ca_file))
    authority = URL(tls_sandbox.url).raw_authority
    # The token endpoint and the API both went through CONNECT tunnels; nothing in the clear.
    assert len(https_egress.connects) >= 2
    assert set(https_egress.connects) == {authority}
    assert https_egress.requests == []
    assert tls_sandbox.stats()["token_requests"] == 1
    assert tls_sandbox.stats()["api_requests"] == 1


async def test_untrusted_token_endpoint_fails_closed_naming_tls(
    proxy_factory: ProxyFactory,
    tls_sandbox: TLSSandbox,
    https_egress: ForwardProxy,
) -> None:
    proxy = await proxy_factory(tls_sandbox.url)  # no ca_file: the test CA is unknown
    async with proxy.client.get(proxy.url + DISC) as response:
        assert response.status == 503
        body = await error_body(response)
    async with proxy.client.get(proxy.url + "/readyz") as ready:
        reason = (await ready.json())["reason"]
    assert body["Error"]["Code"] == "token_unavailable"
    assert "TLS verification failed" in body["Error"]["Message"]
    assert "certificate verify failed" in body["Error"]["Message"]
    assert "TLS verification failed" in reason
    assert https_egress.connects  # the tunnel was opened, the handshake refused
    # No credentials and no request reached the endpoint.
    assert tls_sandbox.stats()["token_requests"] == 0
    assert tls_sandbox.stats()["api_requests"] == 0


async def test_untrusted_api_certificate_gives_502_upstream_tls_error(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tls_sandbox: TLSSandbox
) -> None:
    # A trusted token endpoint (plain HTTP here), an API whose certificate is not trusted.
    proxy = await proxy_factory(tls_sandbox.url, token_url=f"{sandbox.url}/connect/token")
    async with proxy.client.get(proxy.url + DISC) as response:
        assert response.status == 502
        body = await error_body(response)
    assert body["Error"]["Code"] == "upstream_tls_error"
    assert "certificate verify failed" in body["Error"]["Message"]
    assert tls_sandbox.stats()["api_requests"] == 0  # the bearer token was never sent


async def test_ca_file_is_trusted_in_addition_to_the_system_cas(
    proxy_factory: ProxyFactory,
    tls_sandbox_factory: TLSSandboxFactory,
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    # The "system" store is SSL_CERT_FILE (OpenSSL reads it for the default verify paths):
    # the token endpoint's CA is only there, the API's only in ca_file. Both must hold.
    system_ca = trustme.CA()
    system_store = tmp_path / "system.pem"
    system_ca.cert_pem.write_to_path(str(system_store))
    clean_proxy_env.setenv("SSL_CERT_FILE", str(system_store))
    sandbox = await tls_sandbox_factory(system_ca, ca)
    token_url, api_url = sandbox.urls[0] + "/connect/token", sandbox.urls[1]
    await assert_disc_served(await proxy_factory(api_url, token_url=token_url, ca_file=ca_file))
    assert sandbox.stats()["token_requests"] == 1
    assert sandbox.stats()["api_requests"] == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read"), ("not a certificate\n", "holds no PEM CA certificate")],
)
def test_bad_ca_file_is_a_settings_error_naming_ca_file(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError) as error:
        load_settings({"ca_file": str(path)})
    (line,) = error.value.problems
    assert line.startswith("ca_file: ")
    assert problem in line


async def test_check_command_uses_ca_file(tls_sandbox: TLSSandbox, ca_file: Path) -> None:
    env = {
        "ASPOSE_PROXY_TOKEN_URL": f"{tls_sandbox.url}/connect/token",
        "ASPOSE_PROXY_CLIENT_ID": "demo",
        "ASPOSE_PROXY_CLIENT_SECRET": SANDBOX_SECRET,
    }
    for extra, expected, text in ((None, 1, "TLS verification failed"), (ca_file, 0, "ok:")):
        run_env = env | ({"ASPOSE_PROXY_CA_FILE": str(extra)} if extra else {})
        code, out, err = await run_cli("check", env=run_env)
        assert code == expected, err
        assert text in out + err


# -- egress proxies -------------------------------------------------------------------------


async def test_plain_http_upstream_goes_through_http_proxy_in_absolute_form(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    async with forward_proxy() as egress:
        clean_proxy_env.setenv("HTTP_PROXY", egress.url)
        await assert_disc_served(await proxy_factory())
    assert f"POST {sandbox.url}/connect/token" in egress.requests
    assert f"GET {sandbox.url}{DISC}" in egress.requests


async def test_no_proxy_bypasses_the_egress_proxy(
    proxy_factory: ProxyFactory,
    tls_sandbox: TLSSandbox,
    ca_file: Path,
    https_egress: ForwardProxy,
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    clean_proxy_env.setenv("NO_PROXY", "example.com,127.0.0.1")
    await assert_disc_served(await proxy_factory(tls_sandbox.url, ca_file=ca_file))
    assert not https_egress.used
    assert tls_sandbox.stats()["api_requests"] == 1


async def test_egress_proxy_is_resolved_once_at_start_up(
    proxy_factory: ProxyFactory,
    tls_sandbox: TLSSandbox,
    ca_file: Path,
    https_egress: ForwardProxy,
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    proxy = await proxy_factory(tls_sandbox.url, ca_file=ca_file)
    # Looked up per request (aiohttp's trust_env), this would now fail to connect.
    clean_proxy_env.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    clean_proxy_env.setenv("NO_PROXY", "*")
    for _ in range(2):
        await assert_disc_served(proxy)
    assert https_egress.connects


def test_egress_proxy_for_picks_the_scheme_and_honours_no_proxy(
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    proxies = {"https": "http://user:pw@corp-proxy:3128", "http": "corp-proxy:8080"}
    assert egress_proxy_for("https://api.aspose.cloud", proxies) == URL(
        "http://user:pw@corp-proxy:3128"
    )
    assert egress_proxy_for("http://api.aspose.cloud", proxies) == URL("http://corp-proxy:8080")
    assert egress_proxy_for("https://api.aspose.cloud", {}) is None
    clean_proxy_env.setenv("no_proxy", ".aspose.cloud, localhost")
    assert egress_proxy_for("https://api.aspose.cloud", proxies) is None
    assert egress_proxy_for("https://id.aspose.cloud/connect/token", proxies) is None
    assert egress_proxy_for("https://example.com", proxies) is not None
    clean_proxy_env.setenv("https_proxy", "http://from-env:3128")
    assert egress_proxy_for("https://example.com") == URL("http://from-env:3128")
