"""The one entry for every request: own route or forwarded, request id, guards, errors,
metrics and one access line.

Every error the proxy makes itself becomes a response here, in one place. The guards run in
one fixed order, each a decision from ``proxy.access``:

    address (allow_from) -> Host/Origin -> client auth -> operation (methods, paths)
    -> (forwarded) origin form -> budget / rate limit -> forward -> count

Probes (/healthz, /readyz) skip every guard; /metrics and the local token endpoints get the
address and Host/Origin guards only (nothing is forwarded from them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.hdrs import AUTHORIZATION, EXPECT, HOST, ORIGIN
from aiohttp.http import HttpVersion11
from aiohttp.typedefs import Handler

from proxy.access import FETCH_SITE, KEY_HEADER, AccessControl, RouteKind
from proxy.aiohttp_internals import route_info, set_route
from proxy.connections import check_http_version
from proxy.errors import BadRequest, ProxyError, error_response
from proxy.exchange import CLIENT_CLOSED, EXCHANGE, Exchange, request_id_of
from proxy.log_setup import CURRENT_REQUEST_ID, access_logger
from proxy.metrics import Metrics

log = structlog.get_logger("proxy.pipeline")

# Read off its class once: on Python 3.11 each ``RouteKind.FORWARD`` read per request costs
# ~850 instructions (``EnumType.__getattr__``, see proxy.replay).
FORWARD = RouteKind.FORWARD


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


class OwnRoutes:
    """The proxy's own paths, a small table matched on the decoded path: exact paths and the
    prefixes of templated ones (everything but the catch-all route in ``router``).

    Only requests that match go through aiohttp's router: skipping the router and the
    middleware chain for forwarded requests saved ~36k instructions of a small request
    (issue 11, docs/benchmarks.md); the table keeps that without a second entry path."""

    def __init__(self, router: web.UrlDispatcher, catch_all: web.AbstractResource) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        for resource in router.resources():
            if resource is catch_all:
                continue
            canonical = resource.canonical
            if "{" in canonical:
                prefixes.append(canonical[: canonical.index("{")])
            else:
                exact.add(canonical)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)

    def match(self, request: web.Request) -> bool:
        """Whether ``request`` may be for one of the proxy's own routes."""
        target = request.raw_path
        path = target.partition("?")[0]
        if "%" in path or target[:1] != "/":
            path = request.path  # decoded (and an absolute-form target's path), as routed
        return path in self._exact or path.startswith(self._prefixes)


def origin_form(target: str) -> bool:
    """Only a path starting with one ``/`` is forwarded (RFC 9112 §3.2.1): never an
    absolute-form (``http://...``), authority-form (CONNECT) or ``//host`` target."""
    return target[:1] == "/" and target[:2] != "//"


def body_size(response: web.StreamResponse, method: str) -> int:
    """The body bytes of one of the proxy's own answers (none to a HEAD request)."""
    if method == "HEAD" or not isinstance(response, web.Response):
        return 0
    return response.content_length or 0


async def _forwarded(request: web.Request) -> web.StreamResponse:
    """The catch-all route's handler: never called (the pipeline forwards by itself)."""
    raise InternalError("The forwarding step is not set up.")


class Pipeline:
    """The one entry for every request, read top to bottom (DESIGN.md "One pipeline"):

    own route? -> request id -> guards -> (forwarded: origin form -> budget -> forward -> count)
    -> errors as the proxy's JSON -> metrics and one access line.

    ``forward`` is the forwarding step inside the usage gate (budget before, count after);
    ``create_app`` sets it once the upstream session exists. The conversion cache's lookup
    is the forwarder's, once the body is read (the key needs it); the body reader takes the
    body timeout and the spool budget. ``X-Request-Id`` and ``Server`` are set where
    responses leave (``aiohttp_internals.LeavingRequest``).
    """

    def __init__(
        self,
        app: web.Application,
        metrics: Metrics,
        guard: Guard,
        route_kinds: dict[object, RouteKind],
    ) -> None:
        self._app = app
        self._router = app.router
        self._guard = guard
        self._kinds = route_kinds
        self._count_request = metrics.count_request
        self._count_error = metrics.count_error
        # The catch-all route, added after the proxy's own: its match is shared by every
        # forwarded request (request.app and the app's hooks work as if routed).
        catch_all = app.router.add_route("*", "/{tail:.*}", _forwarded)
        assert catch_all.resource is not None
        self._own = OwnRoutes(app.router, catch_all.resource)
        self._catch_all = catch_all
        self._forwarded = route_info(app, catch_all, {})
        self.forward: Handler = _forwarded  # until the upstream session exists
        # Bound once, after logging is configured: no lookup per request.
        self._access_log = access_logger()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self._own.match(request):
            # aiohttp's router decides among the proxy's own routes (rare requests): a
            # method the route lacks falls to the catch-all, as it always did.
            match_info = await self._router.resolve(request)
            match_info.add_app(self._app)
            match_info.freeze()
            route = match_info.route
            kind = self._kinds.get(route, FORWARD)
        else:
            match_info, route, kind = self._forwarded, self._catch_all, FORWARD
        set_route(request, match_info)
        request_id, from_client = request_id_of(request)
        exchange = request[EXCHANGE] = Exchange(request_id)
        # Each request runs in its own task with a copy of the server's (clean) context,
        # so setting is enough: nothing from another request is there to clear.
        CURRENT_REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        try:
            if request.version is not HttpVersion11:  # the parser's own object for 1.1
                check_http_version(request.version)  # never an HTTP/0.9 or 2.0 request line
            # address -> Host/Origin -> client auth -> operation
            exchange.client = self._guard(request, kind) or None
            if route is self._catch_all:
                if not origin_form(request.raw_path):
                    raise BadRequest(
                        "Only origin-form requests (a path starting with one /) are forwarded."
                    )
                response = await self.forward(request)  # budget -> forward -> count
            else:
                if EXPECT in request.headers:
                    await match_info.expect_handler(request)  # 100 Continue (or 417)
                response = await route.handler(request)
                exchange.bytes_sent = body_size(response, request.method)
            status = response.status
            return response
        except ProxyError as error:
            status = error.status
            self._count_error(status, error.code)
            log.debug("proxy error", error=error.code, message=error.message)
            refusal = error_response(error, request_id)
            exchange.bytes_sent = body_size(refusal, request.method)
            return refusal
        except web.HTTPException as exc:
            status = exc.status
            raise
        except (asyncio.CancelledError, ConnectionError):
            status = CLIENT_CLOSED
            raise
        except Exception:
            log.exception("unhandled error")
            failure = error_response(InternalError("The proxy failed unexpectedly."), request_id)
            exchange.bytes_sent = body_size(failure, request.method)
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
                    request.remote,
                    request.content.total_bytes,
                    exchange.bytes_sent,
                )
