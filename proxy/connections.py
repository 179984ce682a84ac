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

aiohttp has no setting for a request-head deadline: the protocol that carries these
decisions out subclasses aiohttp's, in ``proxy.aiohttp_internals`` (with every other private
attribute the proxy touches).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http import HttpProcessingError, HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import LineTooLong
from aiohttp.typedefs import Handler

from proxy.aiohttp_internals import GuardedRunner
from proxy.errors import BadRequest, HeadTooLarge, ProxyError, UnsupportedVersion, error_response
from proxy.exchange import EXCHANGE, Exchange, request_id_for

log = structlog.get_logger("proxy.connections")


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
# Set by an app that answers every request through one function of its own (the proxy's
# pipeline) instead of aiohttp's router and middleware chain.
ENTRY: web.AppKey[Handler] = web.AppKey("entry")


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
PROCESS = ""  # in ClientConnections' warnings: the process-wide cap, not one client's
_IPV4_MAPPED = bytes(10) + b"\xff\xff"
_IPV6_LOOPBACK = bytes(15) + b"\x01"


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
    try:  # inet_pton: a tenth of ipaddress's cost, paid once per connection
        packed = socket.inet_pton(socket.AF_INET6, address.partition("%")[0])
    except OSError:
        return address
    if packed[:12] == _IPV4_MAPPED:  # ::ffff:a.b.c.d from a dual-stack listener
        return client_of(socket.inet_ntop(socket.AF_INET, packed[12:]))
    if packed == _IPV6_LOOPBACK:
        return LOOPBACK
    return socket.inet_ntop(socket.AF_INET6, packed[:8] + bytes(8)) + "/64"


class ClientConnections:
    """How many connections each client and the whole process hold; refuses those beyond
    ``max_connections_per_client`` or ``max_connections``."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self._limit = limits.max_connections_per_client
        self._total_limit = limits.max_connections
        self._refused = limits.on_refused
        self._total = 0
        self._counts: dict[str, int] = {}
        # Warned about once until it drops below its cap (PROCESS: max_connections).
        self._at_cap: set[str] = set()

    def admit(self, address: str) -> bool:
        if self._total >= self._total_limit:
            self._refuse(
                "max_connections", "process at max_connections: closing new connections", PROCESS
            )
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
        self._at_cap.discard(PROCESS)

    def _refuse(self, cap: str, warning: str, client: str) -> None:
        """Count the refusal; warn once per client (or for the process) until it is below."""
        if self._refused is not None:
            self._refused(cap)
        if client not in self._at_cap:
            self._at_cap.add(client)
            if client is PROCESS:
                log.warning(warning, limit=self._total_limit)
            else:
                log.warning(warning, client=client, limit=self._limit)


class ConnectionGuards:
    """The decisions ``GuardedProtocol`` asks for: admit an address, a late head, an
    unparsable one (the mechanism, on aiohttp's protocol, is in ``proxy.aiohttp_internals``)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.head_timeout = limits.request_header_timeout
        self.clients = ClientConnections(limits)
        self.admit = self.clients.admit
        self.release = self.clients.release

    def head_late(self, address: str | None) -> None:
        log.info(
            "request head not received within request_header_timeout; closing",
            client_address=address,
        )

    def unparsable(
        self, request: web.BaseRequest, exc: BaseException | None, address: str | None
    ) -> web.StreamResponse | None:
        """A request aiohttp could not parse gets the proxy's JSON error, logged without the
        offending bytes (aiohttp's page and log line quote them; they may be a credential).
        None: aiohttp's own answer (a failure after the response began)."""
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return None
        error: ProxyError
        if isinstance(exc, LineTooLong) or exc.message == "Too many headers received":
            limits = self.limits
            error = HeadTooLarge(
                f"The request line may have up to {limits.max_line_size} bytes, a header field "
                f"up to {limits.max_field_size} bytes, and there may be {limits.max_headers} "
                "header fields at most."
            )
        else:
            error = BadRequest("The request is not valid HTTP/1.1.")
        request_id = request_id_for(request)
        request[EXCHANGE] = Exchange(request_id)  # the response hook names it
        log.info(
            "unparsable request",
            request_id=request_id,
            status=error.status,
            error=error.code,
            cause=type(exc).__name__,
            client_address=address,
        )
        response = error_response(error, request_id)
        response.force_close()
        return response


def guarded_runner(app: web.Application, limits: ConnectionLimits, **options: Any) -> web.AppRunner:
    """A runner serving ``app`` with ``limits`` on every connection and every request sent
    to the app's ``ENTRY`` (when it set one) instead of aiohttp's router."""
    return GuardedRunner(
        app,
        app.get(ENTRY),
        ConnectionGuards(limits),
        max_line_size=limits.max_line_size,
        max_field_size=limits.max_field_size,
        max_headers=limits.max_headers,
        keepalive_timeout=limits.idle_timeout,
        **options,
    )
