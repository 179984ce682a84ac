"""Connection-level guards, applied before any request reaches the pipeline.

An app that sets ``CONNECTION_LIMITS`` (the proxy) is served (by ``proxy.server``) with:

- per-client connection cap: a client holding ``max_connections_per_client`` connections
  has further ones closed as soon as they are accepted; other clients are unaffected. A
  client is an IPv4 address, an IPv6 /64, or the whole of loopback (``client_of``);
- process-wide connection cap: beyond ``max_connections`` open connections, new ones are
  closed as soon as they are accepted, and counted in ``/metrics``;
- request-head deadline: the whole request head (request line and headers) must arrive within
  ``request_header_timeout`` of the connection being accepted or, on a kept-alive connection,
  of the first byte of the next request, else the connection is closed (slowloris);
- parser bounds: request line, header field size and header count; an oversized or
  malformed head gets the proxy's JSON error (431 or 400) instead of aiohttp's text page,
  and is logged without the offending bytes (they may hold a credential).

aiohttp has no setting for a request-head deadline, so ``GuardedRequestHandler`` subclasses
its protocol and reads a few of its private attributes (``_waiter``, ``_request_count``):
pyproject pins the aiohttp minor version it is tested with.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http import (
    SERVER_SOFTWARE,
    HttpProcessingError,
    HttpVersion,
    HttpVersion10,
    HttpVersion11,
)
from aiohttp.http_exceptions import LineTooLong
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from proxy.errors import BadRequest, HeadTooLarge, ProxyError, UnsupportedVersion, error_response
from proxy.exchange import REQUEST_ID_HEADER, request_id_for

log = structlog.get_logger("proxy.connections")

SERVER_NAME = "aspose-proxy"  # the proxy's own answers name no versions


@dataclass(frozen=True)
class ConnectionLimits:
    """Connection-level bounds for an app: ``create_app`` sets them, ``start_server`` applies."""

    request_header_timeout: float = 10.0
    max_connections_per_client: int = 256
    max_connections: int = 1024  # open connections of this process, all clients together
    # Told the cap ("max_connections" or "max_connections_per_client") of each refusal.
    on_refused: Callable[[str], None] | None = field(default=None, compare=False)
    # aiohttp's parser bounds. There is no bound on a whole head, so it is at most
    # max_headers * max_field_size (1.6 MB; Go's net/http allows 1 MB).
    max_line_size: int = 8190  # the request line (nginx: 8 KiB)
    max_field_size: int = 16384  # one header field, name and value
    max_headers: int = 100
    # An idle kept-alive connection is closed after this long (nginx's keepalive_timeout);
    # aiohttp's default is an hour.
    idle_timeout: float = 75.0


CONNECTION_LIMITS = web.AppKey("connection_limits", ConnectionLimits)
# Set by an app that answers some requests without aiohttp's routing: given the app's own
# (routed) handler, it returns the handler the server calls for every request.
REQUEST_DISPATCH: web.AppKey[Callable[[Handler], Handler]] = web.AppKey("request_dispatch")


class _NamedRequest(web.Request):
    """aiohttp's ``Request``; its response hook also says ``Server: aspose-proxy`` on the
    proxy's own answers. aiohttp has just set its default (``Python/3.x aiohttp/3.y``) when a
    response had none; a forwarded response carries upstream's own value (another object),
    kept. Done in the hook aiohttp already awaits for every response (the body below is
    aiohttp 3.14's), so it costs no extra coroutine per request.
    """

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        headers = response.headers
        if headers.get(hdrs.SERVER) is SERVER_SOFTWARE:
            headers[hdrs.SERVER] = SERVER_NAME
        match_info = self._match_info
        if match_info is None:  # an unparsed request: no app, no signals
            return
        for app in match_info._apps:
            if on_response_prepare := app.on_response_prepare:
                await on_response_prepare.send(self, response)


# aiohttp's parser takes a request line without a version (HTTP/0.9) and "HTTP/2.0" (or 0.9)
# as requests; the proxy answers HTTP/1.0 and 1.1 only (issue 16).
HTTP_VERSIONS = frozenset({HttpVersion10, HttpVersion11})


def check_http_version(version: HttpVersion) -> None:
    """400 ``bad_request``, the connection closed, for any other HTTP version: never
    forwarded (upstream might read such a request line differently)."""
    if version not in HTTP_VERSIONS:
        raise UnsupportedVersion(
            f"HTTP/{version.major}.{version.minor} requests are not answered; use HTTP/1.1."
        )


LOOPBACK = "loopback"


def client_of(address: str) -> str:
    """The client a connection from ``address`` counts against (issue 16).

    All of loopback (127.0.0.0/8 and ``::1``) is one client: any local user can pick
    127.0.0.2, .3, ... An IPv6 address counts by its /64 (a host or a site holds a whole /64
    and picks addresses in it freely), an IPv4 address by itself.
    """
    if address.startswith("127.") or address == "::1":
        return LOOPBACK
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d from a dual-stack listener
        return client_of(str(ip.ipv4_mapped))
    if ip.is_loopback:
        return LOOPBACK
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


class ClientConnections:
    """How many connections each client and the whole process hold; refuses those beyond
    ``max_connections_per_client`` or ``max_connections``."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self._limit = limits.max_connections_per_client
        self._total_limit = limits.max_connections
        self._refused = limits.on_refused
        self._total = 0
        self._counts: dict[str, int] = {}
        self._at_cap: set[str] = set()  # warned about once until it drops below the cap

    def admit(self, address: str) -> bool:
        if self._total >= self._total_limit:
            self._refuse("max_connections", "process at max_connections: closing new connections")
            return False
        client = client_of(address)
        count = self._counts.get(client, 0)
        if count >= self._limit:
            self._refuse(
                "max_connections_per_client",
                "client at max_connections_per_client: closing its new connections",
                client,
            )
            return False
        self._counts[client] = count + 1
        self._total += 1
        return True

    def release(self, address: str) -> None:
        client = client_of(address)
        count = self._counts.pop(client, 1) - 1
        if count > 0:
            self._counts[client] = count
        self._total -= 1
        self._at_cap.discard(client)
        self._at_cap.discard("")

    def _refuse(self, cap: str, warning: str, client: str = "") -> None:
        """Count the refusal; warn once per client (``""``: the process) until it is below."""
        if self._refused is not None:
            self._refused(cap)
        if client not in self._at_cap:
            self._at_cap.add(client)
            limit = self._limit if client else self._total_limit
            log.warning(warning, client=client or None, limit=limit)


_parse = RequestHandler.data_received


class GuardedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol with the connection caps and the request-head deadline.

    The head timer costs one ``call_at`` per connection and one per request head that does
    not arrive in a single read; a head that arrives whole (the usual case) arms nothing.
    """

    __slots__ = (
        "_address",
        "_clients",
        "_head_timeout",
        "_head_timer",
        "_heads_at_arm",
        "_limits",
    )

    def __init__(
        self, manager: _GuardedServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._clients = manager.clients
        self._limits = manager.limits
        self._head_timeout = manager.limits.request_header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_at_arm = 0
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):  # a unix socket has no address to count
            if not self._clients.admit(peer[0]):
                self.force_close()
                return
            self._address = peer[0]
        self._arm_head_timer()  # a client that connects and sends nothing runs out too

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._address is not None:
            self._clients.release(self._address)
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Called for every read: the base method is called directly (cheaper than super()).
        timer = self._head_timer
        if timer is not None:
            _parse(self, data)
            if self._request_count != self._heads_at_arm:  # the head is complete
                timer.cancel()
                self._head_timer = None
            return
        # start() waits for the next request: these bytes begin its head. When they do not
        # complete it, its deadline starts now. (While a request is being handled, bytes
        # may be its body; a head pipelined behind it is bounded by idle_timeout.)
        waiter = self._waiter
        _parse(self, data)
        if waiter is not None and not waiter.done():
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._heads_at_arm = self._request_count
        loop = self._loop
        self._head_timer = loop.call_at(loop.time() + self._head_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._request_count == self._heads_at_arm and self.transport is not None:
            log.info(
                "request head not received within request_header_timeout; closing",
                client_address=self._address,
            )
            self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse gets the proxy's JSON error, logged without the
        offending bytes (aiohttp's page and log line quote them; they may be a credential)."""
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        error: ProxyError
        if isinstance(exc, LineTooLong) or exc.message == "Too many headers received":
            limits = self._limits
            error = HeadTooLarge(
                f"The request line may have up to {limits.max_line_size} bytes, a header field "
                f"up to {limits.max_field_size} bytes, and there may be {limits.max_headers} "
                "header fields at most."
            )
        else:
            error = BadRequest("The request is not valid HTTP/1.1.")
        request_id = request_id_for(request)
        log.info(
            "unparsable request",
            request_id=request_id,
            status=error.status,
            error=error.code,
            cause=type(exc).__name__,
            client_address=self._address,
        )
        response = error_response(error, request_id)
        # No app hooks run for an unparsed request: set what they would have.
        response.headers[REQUEST_ID_HEADER] = request_id
        response.force_close()
        return response


class _GuardedServer(web.Server):
    """aiohttp's connection manager, making ``GuardedRequestHandler`` protocols."""

    def __init__(self, app: web.Application, plain: web.Server, limits: ConnectionLimits) -> None:
        # The plain server's handler and protocol options, as the app set them; the app's
        # requests as _NamedRequest.
        # Every request is a web.Request (the app's request factory below).
        handler: Callable[..., Awaitable[web.StreamResponse]] = plain.request_handler
        dispatch = app.get(REQUEST_DISPATCH)
        if dispatch is not None:
            handler = dispatch(handler)
        super().__init__(
            handler,
            request_factory=functools.partial(app._make_request, _cls=_NamedRequest),
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self.limits = limits
        self.clients = ClientConnections(limits)

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose server applies ``ConnectionLimits``."""

    __slots__ = ("_limits",)

    def __init__(self, app: web.Application, limits: ConnectionLimits, **options: Any) -> None:
        super().__init__(
            app,
            max_line_size=limits.max_line_size,
            max_field_size=limits.max_field_size,
            max_headers=limits.max_headers,
            keepalive_timeout=limits.idle_timeout,
            **options,
        )
        self._limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the app, merges its handler_args
        return _GuardedServer(self.app, plain, self._limits)
