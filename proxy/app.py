"""``create_app(settings)``: routes, middleware, and the resources that live with the app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from proxy import health, local_tokens
from proxy.handler import Forwarder
from proxy.health import METRICS, TOKENS
from proxy.local_tokens import LOCAL_TOKENS, LocalTokens
from proxy.metrics import Metrics
from proxy.middleware import CLIENT_ID, add_request_id, observe
from proxy.settings import Settings
from proxy.tokens import TokenCache, request_token
from proxy.upstream import create_session

SETTINGS = web.AppKey("settings", Settings)
FORWARDER = web.AppKey("forwarder", Forwarder)


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shared sessions, the token cache and its refresher live as long as the app."""
    settings = app[SETTINGS]
    session = create_session(settings)
    token_session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    tokens = TokenCache(
        lambda: request_token(token_session, settings),
        wait_timeout=settings.token_wait_timeout,
        metrics=app[METRICS],
    )
    app[TOKENS] = tokens
    app[FORWARDER] = Forwarder(settings, session, tokens, app[METRICS])
    refresher = asyncio.create_task(tokens.run_refresher(), name="token-refresher")
    try:
        yield
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await tokens.close()
        await session.close()
        await token_session.close()


async def forward(request: web.Request) -> web.StreamResponse:
    return await request.app[FORWARDER].handle(request)


async def forward_named_client(request: web.Request) -> web.StreamResponse:
    """``forward``, noting which local client sent the request (for the access log)."""
    client_id = request.app[LOCAL_TOKENS].client_of(request.headers.get("Authorization"))
    if client_id is not None:
        request[CLIENT_ID] = client_id
    return await request.app[FORWARDER].handle(request)


async def expect_continue(request: web.Request) -> None:
    await request.app[FORWARDER].expect_continue(request)


def create_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    app = web.Application(middlewares=[observe(metrics)], handler_args={"max_field_size": 65536})
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app.cleanup_ctx.append(_upstream_ctx)
    app.on_response_prepare.append(add_request_id)
    health.add_routes(app)
    handler = forward
    if settings.local_token_endpoint:
        local_tokens.add_routes(app, LocalTokens(settings.local_clients))
        if settings.local_clients:
            handler = forward_named_client
    app.router.add_route("*", "/{tail:.*}", handler, expect_handler=expect_continue)
    return app
