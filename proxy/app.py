"""``create_app(settings)``: routes, middleware, and the resources that live with the app."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from aiohttp.hdrs import HOST, ORIGIN

from proxy import health, local_tokens, reload, status_page
from proxy.access import (
    FETCH_SITE,
    NO_LOCAL_CLIENTS,
    AccessControl,
    AccessRules,
    RouteKind,
    startup_warnings,
)
from proxy.auth_failures import AuthFailures
from proxy.cache.engines import open_cache_store
from proxy.cache.step import ConversionCache
from proxy.connections import CONNECTION_LIMITS, ENTRY, ConnectionLimits
from proxy.credentials import Credentials, CredentialsSource
from proxy.forward import Forwarder
from proxy.local_tokens import LocalTokens
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline, access_guard
from proxy.reload import RELOAD_HOOKS
from proxy.settings import Settings
from proxy.state import STATE, ProxyState
from proxy.token_client import request_token
from proxy.token_form import TOKEN_PATHS
from proxy.token_schedule import open_schedule
from proxy.tokens import TokenCache
from proxy.upstream import Egress, create_session, create_token_session
from proxy.usage.gate import Usage

log = structlog.get_logger("proxy.app")


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shared sessions, the token cache and its refresher live as long as the app."""
    state = app[STATE]
    settings = state.settings
    egress = Egress.from_settings(settings)  # TLS trust and egress proxies, resolved once
    session = create_session(settings, egress)
    token_session = create_token_session(egress)
    tokens = TokenCache(
        lambda credentials: request_token(token_session, settings, credentials),
        wait_timeout=settings.token_wait_timeout,
        credentials=Credentials.from_settings(settings),
        schedule=state.token_schedule or open_schedule(settings, state.schedule_policy),
        metrics=state.metrics,
    )
    state.tokens = tokens
    credentials = CredentialsSource(settings, tokens.set_credentials)
    app[RELOAD_HOOKS].append(credentials.reload)
    secret_watch = asyncio.create_task(credentials.watch(), name="secret-file-watch")
    forwarder = Forwarder(settings, session, tokens, state.metrics, state.cache)
    # The forwarded request's steps after the guards: budget, (cache,) forward, count.
    state.pipeline.forward = state.usage.wrap(forwarder.handle)
    refresher = asyncio.create_task(tokens.run_refresher(), name="token-refresher")
    try:
        yield
    finally:
        for task in (refresher, secret_watch):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await tokens.close()
        await session.close()
        await token_session.close()


def _route_kinds(router: web.UrlDispatcher) -> dict[object, RouteKind]:
    """Which guards each of the proxy's own routes gets; anything else is forwarded."""
    kinds: dict[object, RouteKind] = {}
    for route in router.routes():
        if route.handler in (health.healthz, health.readyz):
            kinds[route] = RouteKind.PROBE
        elif route.handler is health.metrics:
            kinds[route] = RouteKind.METRICS
        elif route.resource is not None and route.resource.canonical in TOKEN_PATHS:
            kinds[route] = RouteKind.LOCAL
    return kinds


def create_app(settings: Settings, *, local_token_key: bytes | None = None) -> web.Application:
    """The proxy app; ``local_token_key`` is shared by the workers of ``run --workers N``."""
    # Several workers answer /metrics on one port: each labels its series with its pid.
    metrics = Metrics({"pid": str(os.getpid())} if settings.workers != 1 else None)
    failures = AuthFailures(metrics.count_auth_failure)
    issuer = (
        LocalTokens(
            settings.local_clients,
            local_token_key,
            failures.record,
            body_timeout=settings.request_body_timeout,
        )
        if settings.local_token_endpoint
        else None
    )
    access = AccessControl(
        AccessRules.from_settings(settings),
        issuer.client_of if issuer else NO_LOCAL_CLIENTS,
        failed=failures.record,
    )
    app = web.Application()
    reload.setup(app, settings)  # the hook list (with the log level) and SIGHUP
    app[RELOAD_HOOKS].append(access.reload)
    for warning in startup_warnings(settings):
        log.warning(warning)
    usage = Usage(settings)
    metrics.watch_calls(lambda: usage.counter.totals)
    app[RELOAD_HOOKS].append(usage.reload)
    app.cleanup_ctx.append(usage.run)  # first in, last out: the final flush after the rest
    store = open_cache_store(settings)
    # cache_store = "off" (the default): no cache step at all
    cache = ConversionCache(settings, store, metrics) if store is not None else None
    app.cleanup_ctx.append(_upstream_ctx)
    if cache is not None:  # after the session: at exit, fills finish before it closes
        app.cleanup_ctx.append(cache.run)
    # Applied by server.start_server to every connection (with the parser's bounds).
    app[CONNECTION_LIMITS] = ConnectionLimits(
        request_header_timeout=settings.request_header_timeout,
        max_connections_per_client=settings.max_connections_per_client,
        max_connections=settings.max_connections,
        on_refused=metrics.count_refused_connection,
    )
    health.add_routes(app)
    status_page.add_routes(app, settings.upstream_url, metrics)
    if issuer is not None:
        local_tokens.add_routes(app, issuer)
    access.route_kinds.update(_route_kinds(app.router))
    # After the proxy's own routes: the pipeline adds the catch-all and reads the table.
    pipeline = Pipeline(app, metrics, access_guard(access), access.route_kinds)
    app[ENTRY] = pipeline.handle  # every request, without aiohttp's router and middleware
    app[STATE] = ProxyState(
        settings=settings,
        metrics=metrics,
        usage=usage,
        pipeline=pipeline,
        admits=lambda request: access.rules.admits(
            request.remote,
            request.headers.get(HOST),
            request.headers.get(ORIGIN),
            request.headers.get(FETCH_SITE),
        ),  # the rules in force
        cache=cache,
    )
    return app
