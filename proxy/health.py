"""The proxy's own endpoints: liveness, readiness (a valid token is held) and metrics."""

from __future__ import annotations

from aiohttp import web

from proxy.metrics import CONTENT_TYPE_LATEST, Metrics
from proxy.tokens import TokenCache

TOKENS = web.AppKey("tokens", TokenCache)
METRICS = web.AppKey("metrics", Metrics)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    tokens = request.app.get(TOKENS)
    reason = tokens.not_ready_reason if tokens else "starting"
    if reason is None:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready", "reason": reason}, status=503)


async def metrics(request: web.Request) -> web.Response:
    instruments = request.app[METRICS]
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
