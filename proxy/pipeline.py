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
import time
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.hdrs import AUTHORIZATION, HOST, ORIGIN
from aiohttp.typedefs import Handler, Middleware

from proxy.access import FETCH_SITE, KEY_HEADER, AccessControl, RouteKind
from proxy.connections import check_http_version
from proxy.errors import BadRequest, ProxyError, error_response
from proxy.exchange import (
    CLIENT_CLOSED,
    EXCHANGE,
    REQUEST_ID_HEADER,
    Exchange,
    request_id_of,
)
from proxy.log_setup import CURRENT_REQUEST_ID, access_logger
from proxy.metrics import Metrics

log = structlog.get_logger("proxy.pipeline")


class InternalError(ProxyError):
    """A bug: the client gets a generic sentence, the log gets the traceback."""


# The guards: raise the first refusal, else return the client's name (None: anonymous).
Guard = Callable[[web.Request, RouteKind], str | None]


def access_guard(access: AccessControl) -> Guard:
    """The access guards in their fixed order; raises the first refusal as a ``ProxyError``.

    The rules are read from ``access`` once per request, so a reload swaps them whole.
    """
    identify = access.identify
    forward, probe, metrics = RouteKind.FORWARD, RouteKind.PROBE, RouteKind.METRICS

    def guard(request: web.Request, kind: RouteKind) -> str | None:
        if kind is probe:
            return None  # kubelet probes come from the node's address
        rules = access.rules
        # The remembered "allowed" answers are looked up here: a call only on a miss or a no.
        if not rules.everyone and rules.address_answers.get(request.remote) is not True:
            rules.check_address(request.remote, metrics=kind is metrics)
        # Header names as istr constants: multidict skips case-folding them (half the lookup).
        headers = request.headers
        host = headers.get(HOST)
        if rules.host_answers.get(host) is not True:
            rules.check_host_header(host)
        origin = headers.get(ORIGIN)
        if origin is not None or FETCH_SITE in headers:
            rules.check_browser(origin, headers.get(FETCH_SITE))
        if kind is not forward:
            return None
        client = None
        if rules.identifies_clients:
            client = identify(
                rules, headers.get(KEY_HEADER), headers.get(AUTHORIZATION), request.remote
            )
        if rules.limits_operations:
            rules.check_operation(request.method, request.raw_path)
        return client

    return guard


async def _odd_target(request: web.Request) -> web.StreamResponse:
    # The catch-all route takes every origin-form path: a router miss means an absolute-form,
    # authority-form (CONNECT) or otherwise odd target.
    raise BadRequest("Only origin-form requests (a path starting with /) are forwarded.")


class Observer:
    """Per-request bookkeeping around a handler: request id, guards, errors, metrics, one line.

    ``middleware()`` applies it to the routes of the app (the proxy's own endpoints); the
    server hands forwarded requests to ``answer`` without routing (``app._dispatch``): same
    steps, same order, same line.
    """

    def __init__(
        self,
        metrics: Metrics,
        guard: Guard | None = None,
        route_kinds: dict[object, RouteKind] | None = None,
    ) -> None:
        # Bound once, after logging is configured: no lookup per request.
        self._access_log = access_logger()
        self._count_request = metrics.count_request
        self._count_error = metrics.count_error
        self._guard = guard
        self.route_kinds = route_kinds if route_kinds is not None else {}

    async def answer(
        self, request: web.Request, handler: Handler, kind: RouteKind
    ) -> web.StreamResponse:
        request_id, from_client = request_id_of(request)
        exchange = request[EXCHANGE] = Exchange(request_id)
        # Each request runs in its own task with a copy of the server's (clean) context,
        # so setting is enough: nothing from another request is there to clear.
        CURRENT_REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        try:
            check_http_version(request.version)  # never an HTTP/0.9 or HTTP/2.0 request line
            if self._guard is not None:
                # address -> Host/Origin -> client auth -> operation
                exchange.client = self._guard(request, kind) or None
            # Next in the fixed order: rate limit / budget, then the count once upstream
            # answered: proxy/usage/gate.py wraps the forwarding handler, so only forwarded
            # requests pass it.
            response = await handler(request)
            status = response.status
            return response
        except ProxyError as error:
            status = error.status
            self._count_error(status, error.code)
            log.debug("proxy error", error=error.code, message=error.message)
            refusal = error_response(error, request_id)
            refusal.headers[REQUEST_ID_HEADER] = request_id
            return refusal
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
            failure = error_response(InternalError("The proxy failed unexpectedly."), request_id)
            failure.headers[REQUEST_ID_HEADER] = request_id
            return failure
        finally:
            self._count_request(status)
            access_log = self._access_log
            if access_log.enabled:
                access_log.request(
                    request_id,
                    request.method,
                    request.raw_path.partition("?")[0],  # as sent; the query stays out
                    status,
                    (time.perf_counter() - started) * 1000,
                    exchange.client,
                    exchange.aborted,
                    from_client,
                )

    def middleware(self) -> Middleware:
        """The app's middleware: the route's kind picks the guards."""
        answer, kinds, forward = self.answer, self.route_kinds, RouteKind.FORWARD

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            match_info = request.match_info
            if match_info.http_exception is not None:
                handler = _odd_target
            return await answer(request, handler, kinds.get(match_info.route, forward))

        return middleware


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response carries the id that is in the logs."""
    exchange = request.get(EXCHANGE)
    if exchange is not None:
        response.headers[REQUEST_ID_HEADER] = exchange.request_id
