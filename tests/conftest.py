"""Shared fixtures: the offline Aspose sandbox on 127.0.0.1, on a free port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.sandbox import STATE, SandboxConfig, create_sandbox_app

pytest_plugins = ("tests.redis_server",)  # the redis_server / redis_url fixtures


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ASPOSE_PROXY_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("ASPOSE_PROXY_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _usage_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test's proxies keep their default usage store (under $XDG_STATE_HOME) in a temp
    dir of their own, never in ~/.local/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@dataclass
class RunningSandbox:
    """A sandbox serving on loopback: its base URL, config and helpers for the switches."""

    url: str
    config: SandboxConfig
    app: web.Application
    session: aiohttp.ClientSession = field(repr=False)

    @property
    def data_dir(self) -> Path:
        """Where the storages live; each named storage is a subfolder."""
        return self.app[STATE].storage_dir()

    async def control(self, name: str, body: dict[str, Any] | None = None) -> Any:
        """``POST /_sandbox/{name}`` with a JSON body; returns the JSON answer."""
        async with self.session.post(f"{self.url}/_sandbox/{name}", json=body or {}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def token_fault(self, **spec: Any) -> Any:
        return await self.control("token-fault", spec)

    async def api_fault(self, **spec: Any) -> Any:
        return await self.control("api-fault", spec)

    async def reset(self) -> Any:
        return await self.control("reset")

    async def stats(self) -> dict[str, int]:
        async with self.session.get(f"{self.url}/_sandbox/stats") as resp:
            assert resp.status == 200
            result: dict[str, int] = await resp.json()
            return result

    async def token(self) -> str:
        """A fresh access token from ``/connect/token`` with the configured credentials."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.config.client_id,
            "client_secret": self.app[STATE].client_secret,
        }
        async with self.session.post(f"{self.url}/connect/token", data=form) as resp:
            assert resp.status == 200, await resp.text()
            token: str = (await resp.json())["access_token"]
            return token

    async def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token()}"}


SandboxFactory = Callable[..., Awaitable[RunningSandbox]]


@pytest.fixture
async def sandbox_factory() -> AsyncIterator[SandboxFactory]:
    """Start sandboxes with a custom :class:`SandboxConfig`; all are stopped at teardown."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(config: SandboxConfig | None = None, **overrides: Any) -> RunningSandbox:
        config = config or SandboxConfig(**overrides)
        app = create_sandbox_app(config)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        session = aiohttp.ClientSession()
        sessions.append(session)
        return RunningSandbox(f"http://{host}:{port}", config, app, session)

    yield start
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def sandbox(sandbox_factory: SandboxFactory) -> RunningSandbox:
    """A sandbox with the default config (``demo`` / ``demo-secret``, temp data dir)."""
    return await sandbox_factory()
