"""The proxy's own endpoints: liveness, readiness (a valid token is held) and metrics."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.metrics import CONTENT_TYPE_LATEST
from proxy.state import STATE

# What /readyz tells callers outside allow_from: the detail names the client_id and the token
# endpoint (help for someone triggering the failed-login lockout, issue 16). The token cache
# logs the detail on every failed fetch, and /_proxy/ (behind the guards) shows it.
GENERIC_REASON = "no valid access token; the reason is in the proxy's log and on /_proxy/"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Probes skip the access guards (kubelet calls from the node): only callers admitted by
    ``allow_from`` and the Host and browser rules read why the proxy is not ready."""
    state = request.app[STATE]
    tokens = state.tokens
    reason = tokens.not_ready_reason if tokens else "starting"
    admitted = state.admits(request)
    answer: dict[str, Any] = {"status": "ready"}
    if reason is not None:
        answer = {"status": "not ready", "reason": reason}
        if reason != "starting" and not admitted:
            answer["reason"] = GENERIC_REASON
    if tokens is not None and admitted:
        # Token request failures or a 429 block, whichever worker or replica met them.
        standing = await tokens.schedule_standing()
        if standing is not None:
            answer["token_schedule"] = standing
    return web.json_response(answer, status=200 if reason is None else 503)


async def metrics(request: web.Request) -> web.Response:
    instruments = request.app[STATE].metrics
    response = web.Response(
        body=instruments.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
    if instruments.per_worker:
        # A scraper's kept-alive connection would stay with one worker for ever; a new
        # connection per scrape lands on any of them (SO_REUSEPORT hashes the source port).
        response.force_close()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
