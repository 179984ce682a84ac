"""Request middlewares: one access-log line per request, and the guard in front of the API.

The guard is the one place API errors are shaped: bearer check, injected faults, router
404/405s and bad parameters all leave as Words error bodies.
"""

from __future__ import annotations

import time
from typing import Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.sandbox.errors import BadRequestError, words_error
from proxy.sandbox.faults import answer_api_fault, use_once
from proxy.sandbox.state import STATE, SandboxState
from proxy.sandbox.tokens import bearer_token, verify_token
from proxy.token_form import TOKEN_PATHS

CONTROL_PREFIX: Final = "/_sandbox/"


def is_api_path(path: str) -> bool:
    """Everything but the token endpoints and the fault switches needs a bearer token."""
    return path not in TOKEN_PATHS and not path.startswith(CONTROL_PREFIX)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log method, path (never the query or headers: they may carry secrets), status, time."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        structlog.get_logger("sandbox").log(
            request.app[STATE].config.request_log_level,
            "request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )


def _authorize(request: web.Request, state: SandboxState) -> web.Response | None:
    """A 401 for a missing, bad, expired or revoked token; ``None`` when it is good."""
    token = bearer_token(request)
    if token is None:
        return words_error(401, "Authorization has been denied: no bearer token.")
    verdict = verify_token(state, token)
    state.stats.expired_token_requests += verdict.expired
    state.stats.revoked_token_requests += verdict.revoked
    if verdict.valid:
        return None
    return words_error(401, f"Authorization has been denied: {verdict.reason}")


def _from_http_exception(exc: web.HTTPException) -> web.StreamResponse:
    """Router 404s and 405s (and other aiohttp errors) in the Words error shape."""
    if exc.status < 400:
        raise exc
    keep = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return words_error(exc.status, exc.reason, headers=keep)


async def _guarded(
    request: web.Request, handler: Handler, state: SandboxState
) -> web.StreamResponse:
    denied = _authorize(request, state)
    if denied is not None:
        return denied
    applies, used_up = use_once(state.api_fault)
    if applies and state.api_fault is not None:
        fault = state.api_fault
        if used_up:
            state.api_fault = None
        faulty = await answer_api_fault(request, fault)
        if faulty is not None:
            return faulty
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return _from_http_exception(exc)
    except BadRequestError as exc:
        return words_error(400, str(exc), code="BadRequest")


@web.middleware
async def guard_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count API requests and the 401s sent; pass other paths straight through."""
    if not is_api_path(request.path):
        return await handler(request)
    state = request.app[STATE]
    state.stats.api_requests += 1
    response = await _guarded(request, handler, state)
    if response.status == 401:
        state.stats.unauthorized_sent += 1
    return response
