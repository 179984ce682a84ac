"""The real proxy in front of the real sandbox, both on 127.0.0.1, and the rendered log output.

Every integration test runs with the production logging chain writing JSON to a buffer; at
teardown no configured secret or token may appear in it.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from pydantic import SecretStr

from proxy.app import create_app
from proxy.log_setup import configure_logging
from proxy.server import Server, start_server
from proxy.settings import Settings
from proxy.state import STATE
from proxy.tokens import TokenCache
from tests.conftest import RunningSandbox

SANDBOX_SECRET = "demo-secret"
# A JWT (or its start), or a bearer credential that is not redacted.
LEAK = re.compile(r"eyJ[A-Za-z0-9_-]{4,}|Bearer (?!\[REDACTED\])\S+|demo-secret")


@dataclass
class LogCapture:
    stream: io.StringIO = field(default_factory=io.StringIO)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self, name: str) -> list[str]:
        return [line for line in self.text.splitlines() if f'"event": "{name}"' in line]


@pytest.fixture(autouse=True)
def logs() -> Iterator[LogCapture]:
    """The real processor chain, JSON, to a buffer; checked for leaks after every test."""
    capture = LogCapture()
    configure_logging(
        "json", "debug", secrets=[SANDBOX_SECRET], stream=capture.stream, flush_interval=0
    )
    yield capture
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    structlog.reset_defaults()
    leaks = LEAK.findall(capture.text)
    assert not leaks, f"secret or token in the logs: {leaks[:3]}"


@dataclass
class RunningProxy:
    url: str
    settings: Settings
    server: Server
    client: aiohttp.ClientSession

    async def stop(self) -> None:
        await self.server.stop()


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


def proxy_settings(upstream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "upstream_url": upstream,
        "client_id": "demo",
        "client_secret": SecretStr(SANDBOX_SECRET),
        "port": 0,
        "shutdown_grace": 5,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def proxy_factory(sandbox: RunningSandbox) -> AsyncIterator[ProxyFactory]:
    """Start proxies in front of ``sandbox`` (or another upstream); all stopped at teardown."""
    started: list[RunningProxy] = []

    async def start(upstream: str | None = None, **overrides: Any) -> RunningProxy:
        settings = proxy_settings(upstream or sandbox.url, **overrides)
        server = await start_server(create_app(settings), "127.0.0.1", 0, shutdown_grace=5)
        client = aiohttp.ClientSession(auto_decompress=False)
        proxy = RunningProxy(server.url, settings, server, client)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.client.close()
        await proxy.stop()


@pytest.fixture
async def proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    """A proxy with default settings in front of the default sandbox."""
    return await proxy_factory()


def held_tokens(app: web.Application) -> TokenCache:
    """A started proxy's token cache (it exists once the upstream sessions do)."""
    tokens = app[STATE].tokens
    assert tokens is not None, "the proxy has not started"
    return tokens
