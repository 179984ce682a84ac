"""Per-request bookkeeping: request id, access guards, one canonical log line, metrics, errors.

Every error the proxy makes itself becomes a response here, in one place. The guards run in
one fixed order (DESIGN.md "The next layer"), each a decision from ``proxy.access``:

    address (allow_from) -> Host/Origin -> client auth -> operation (methods, paths)
    -> budget / rate limit -> handler

Probes (/healthz, /readyz) skip every guard; /metrics and the local token endpoints get the
address and Host/Origin guards only (nothing is forwarded from them).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.access import KEY_HEADER, AccessControl, RouteKind
from proxy.errors import BadRequest, ProxyError, error_response
from proxy.logging import access_logger
from proxy.metrics import Metrics

log = structlog.get_logger("proxy.access")

REQUEST_ID_HEADER = "X-Request-Id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Unique per process run: 64 random bits, then a counter (cheaper than uuid4 per request).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


def _new_id_prefix() -> None:
    """A forked child (a worker) must not repeat its parent's request ids."""
    global _ID_PREFIX
    _ID_PREFIX = secrets.token_hex(8)


os.register_at_fork(after_in_child=_new_id_prefix)
CLIENT_CLOSED = 499  # nginx's code for a client that went away before the answer

REQUEST_ID = web.RequestKey("request_id", str)
# The client's name: its access key's name or its local client id (absent = anonymous).
CLIENT_ID = web.RequestKey("client_id", str)
ABORTED = web.RequestKey("aborted", bool)  # the response was cut because upstream broke
# Upstream answered with this status: the request is a call (counted even if the client left).
UPSTREAM_STATUS = web.RequestKey("upstream_status", int)


class InternalError(ProxyError):
    """A bug: the client gets a generic sentence, the log gets the traceback."""


def request_id_for(request: web.BaseRequest) -> str:
    """The client's ``X-Request-Id`` when it is a sane token, else a fresh one."""
    incoming = request.headers.get(REQUEST_ID_HEADER)
    if incoming and _SAFE_ID.fullmatch(incoming):
        return incoming
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


Guard = Callable[[web.Request], None]


def access_guard(access: AccessControl) -> Guard:
    """The access guards in their fixed order; raises the first refusal as a ``ProxyError``.

    The rules are read from ``access`` once per request, so a reload swaps them whole.
    """
    kinds = access.route_kinds
    client_of = access.local_client_of
    forward, probe, metrics = RouteKind.FORWARD, RouteKind.PROBE, RouteKind.METRICS

    def guard(request: web.Request) -> None:
        kind = kinds.get(request.match_info.route, forward)
        if kind is probe:
            return  # kubelet probes come from the node's address
        rules = access.rules
        # The remembered "allowed" answers are looked up here: a call only on a miss or a no.
        if not rules.everyone and rules.address_answers.get(request.remote) is not True:
            rules.check_address(request.remote, metrics=kind is metrics)
        headers = request.headers
        if rules.check_host:
            host = headers.get("Host")
            if rules.host_answers.get(host) is not True:
                rules.check_host_header(host)
        origin = headers.get("Origin")
        if origin is not None:
            rules.check_origin(origin)
        if kind is not forward:
            return
        if rules.identifies_clients:
            client = rules.client(headers.get(KEY_HEADER), headers.get("Authorization"), client_of)
            if client:
                request[CLIENT_ID] = client
        if rules.limits_operations:
            rules.check_operation(request.method, request.raw_path)

    return guard


def observe(metrics: Metrics, guard: Guard | None = None) -> Middleware:
    """The middleware: binds the request id, applies the guards, answers ProxyErrors, logs one
    line per request."""

    # Bound once, after logging is configured: no lazy-proxy lookup per request.
    access_log = access_logger()
    log_requests = access_log.is_enabled_for(logging.INFO)
    count_request = metrics.count_request
    count_error = metrics.count_error
    bind = structlog.contextvars.bind_contextvars

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = request_id_for(request)
        request[REQUEST_ID] = request_id
        # Each request runs in its own task with a copy of the server's (clean) context,
        # so binding is enough: nothing from another request is there to clear.
        bind(request_id=request_id)
        started = time.perf_counter()
        status = 500
        try:
            if guard is not None:
                guard(request)  # address -> Host/Origin -> client auth -> operation
            # Next in the fixed order: rate limit / budget, then the count once upstream answered:
            # proxy/usage/gate.py wraps the forwarding route, so only forwarded requests pass it.
            if request.match_info.http_exception is not None:
                # The catch-all route takes every origin-form path: a miss means an
                # absolute-form, authority-form (CONNECT) or otherwise odd target.
                raise BadRequest(
                    "Only origin-form requests (a path starting with /) are forwarded."
                )
            response = await handler(request)
            status = response.status
            return response
        except ProxyError as error:
            status = error.status
            count_error(status, error.code)
            log.debug("proxy error", error=error.code, message=error.message)
            return error_response(error, request_id)
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        except ConnectionError:
            status = CLIENT_CLOSED
            raise
        except Exception:
            log.exception("unhandled error")
            return error_response(InternalError("The proxy failed unexpectedly."), request_id)
        finally:
            count_request(status)
            if log_requests:
                fields: dict[str, object] = {}
                if request.get(ABORTED):
                    fields["aborted"] = True
                client = request.get(CLIENT_ID)
                if client:
                    fields["client"] = client
                access_log.info(
                    "request",
                    request_id=request_id,
                    method=request.method,
                    path=request.raw_path.partition("?")[0],  # as sent; the query stays out
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    **fields,
                )

    return middleware


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response carries the id that is in the logs."""
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
