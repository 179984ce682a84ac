"""Assemble the sandbox: state, middlewares, routes, and the data directory's lifetime."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from proxy.sandbox import control, conversions, diagnostics, storage
from proxy.sandbox.config import SandboxConfig
from proxy.sandbox.middleware import access_log, guard_api
from proxy.sandbox.state import STATE, SandboxState
from proxy.sandbox.tokens import token_endpoint
from proxy.token_form import TOKEN_PATHS


async def _data_dir(app: web.Application) -> AsyncIterator[None]:
    """Use the configured data directory, or a temporary one removed on clean-up."""
    state = app[STATE]
    given = state.config.data_dir
    if given is not None:
        await asyncio.to_thread(given.mkdir, parents=True, exist_ok=True)
        state.data_dir = given
        yield
        return
    temp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="aspose-sandbox-"))
    state.data_dir = temp
    try:
        yield
    finally:
        state.data_dir = None
        await asyncio.to_thread(shutil.rmtree, temp, ignore_errors=True)


def create_sandbox_app(config: SandboxConfig | None = None) -> web.Application:
    """An aiohttp app imitating Aspose Cloud's token endpoints and Words storage API."""
    app = web.Application(
        middlewares=[access_log, control.browser_guard, guard_api, control.spec_errors]
    )
    app[STATE] = SandboxState.from_config(config or SandboxConfig())
    app.cleanup_ctx.append(_data_dir)
    for path in TOKEN_PATHS:
        app.router.add_post(path, token_endpoint)
    storage.add_routes(app)
    conversions.add_routes(app)
    diagnostics.add_routes(app)
    control.add_routes(app)
    return app
