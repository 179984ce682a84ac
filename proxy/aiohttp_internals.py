"""Every aiohttp private attribute the proxy touches, fenced in this one module.

pyproject pins the aiohttp minor version these are read from (3.14);
``tests/unit/test_aiohttp_internals.py`` is the canary that names the one an upgrade changed.

attribute (aiohttp 3.14)                  used by                   why
----------------------------------------  ------------------------  ----------------------------
ClientSession._retry_connection           disable_connection_retry  aiohttp resends an idempotent
                                                                    request on a stale pooled
                                                                    connection by itself; the send
                                                                    policy (proxy.replay) must be
                                                                    the only one resending, or "at
                                                                    most two sends" breaks
StreamResponse._send_headers_immediately  WholeResponse             a body already here leaves
                                                                    with its headers in one write
BaseRequest._prepare_hook                 LeavingRequest            the one moment every response
                                                                    leaves: Server, X-Request-Id,
                                                                    then the app's hooks
Request._match_info, MatchInfo._apps      set_route,                the pipeline routes without
                                          LeavingRequest            aiohttp's router: request.app,
                                                                    match_info and hooks still work
BaseRequest._state                        LeavingRequest            the Exchange in one dict.get
                                                                    (request.get is two Python
                                                                    calls), for every response
Application._make_request                 GuardedServer             requests as LeavingRequest
AppRunner._make_server                    GuardedRunner             the runner starts the app, then
                                                                    serves it with GuardedServer
Server._kwargs, Server._loop              GuardedServer             the protocol options the app
                                                                    and runner set (parser bounds)
RequestHandler._waiter, _request_count,   GuardedProtocol           whether a request head is
_loop                                                               awaited or was just completed:
                                                                    aiohttp has no head deadline
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
from aiohttp import hdrs, web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler

from proxy.exchange import EXCHANGE, REQUEST_ID_HEADER

SERVER_NAME = "aspose-proxy"  # the proxy's own answers name no versions


def disable_connection_retry(session: aiohttp.ClientSession) -> None:
    """The session never resends on its own: ``proxy.replay`` decides every second send."""
    session._retry_connection = False


class WholeResponse(web.StreamResponse):
    """A response whose body is already here: headers and body leave in one write."""

    _send_headers_immediately = False


def set_route(request: web.Request, match_info: web.UrlMappingMatchInfo) -> None:
    """What aiohttp's router would have recorded: ``request.app``, ``match_info``, hooks."""
    request._match_info = match_info


def route_info(
    app: web.Application, route: web.AbstractRoute, match: dict[str, str]
) -> web.UrlMappingMatchInfo:
    """A frozen match of ``route`` in ``app``, made once and shared by its requests."""
    info = web.UrlMappingMatchInfo(match, route)
    info.add_app(app)
    info.freeze()
    return info


class LeavingRequest(web.Request):
    """aiohttp's ``Request``, whose response hook is where every response leaves.

    aiohttp awaits ``_prepare_hook`` for every response just before its headers are written,
    so this costs no extra coroutine: ``X-Request-Id`` (the id in the logs; upstream's own
    is dropped) and ``Server: aspose-proxy`` on the proxy's own answers (aiohttp has just
    set its default, ``Python/3.x aiohttp/3.y``; a forwarded response keeps upstream's).
    Then the app's ``on_response_prepare`` hooks, as aiohttp's own hook runs them.
    """

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        headers = response.headers
        if headers.get(hdrs.SERVER) is SERVER_SOFTWARE:
            headers[hdrs.SERVER] = SERVER_NAME
        exchange = self._state.get(EXCHANGE)  # one C call; Mapping.get is two Python ones
        if exchange is not None:
            headers[REQUEST_ID_HEADER] = exchange.request_id
        match_info = self._match_info
        if match_info is None:  # an unparsed request: no app, no hooks
            return
        for app in match_info._apps:
            if on_response_prepare := app.on_response_prepare:
                await on_response_prepare.send(self, response)


class ConnectionPolicy(Protocol):
    """What the guarded protocol asks of the connection guards (``proxy.connections``)."""

    head_timeout: float

    def admit(self, address: str) -> bool: ...
    def release(self, address: str) -> None: ...
    def head_late(self, address: str | None) -> None: ...
    def unparsable(
        self, request: web.BaseRequest, exc: BaseException | None, address: str | None
    ) -> web.StreamResponse | None: ...


_parse = RequestHandler.data_received


class GuardedProtocol(RequestHandler):
    """aiohttp's HTTP/1.1 protocol with a per-address admission and a request-head deadline.

    The head timer costs one ``call_at`` per connection and one per request head that does
    not arrive in a single read; a head that arrives whole (the usual case) arms nothing.
    """

    __slots__ = ("_address", "_head_timer", "_heads_at_arm", "_policy")

    def __init__(
        self, manager: GuardedServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._policy = manager.policy
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_at_arm = 0
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):  # a unix socket has no address to count
            if not self._policy.admit(peer[0]):
                self.force_close()
                return
            self._address = peer[0]
        self._arm_head_timer()  # a client that connects and sends nothing runs out too

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._address is not None:
            self._policy.release(self._address)
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
        self._head_timer = loop.call_at(loop.time() + self._policy.head_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._request_count == self._heads_at_arm and self.transport is not None:
            self._policy.head_late(self._address)
            self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = self._policy.unparsable(request, exc, self._address)
        if response is None:
            return super().handle_error(request, status, exc, message)
        return response


class GuardedServer(web.Server):
    """aiohttp's connection manager, making ``GuardedProtocol``s; every request goes to
    ``entry`` (the app's one entry) as a ``LeavingRequest`` of the app."""

    def __init__(
        self,
        app: web.Application,
        plain: web.Server,
        entry: Callable[[web.Request], Awaitable[web.StreamResponse]] | None,
        policy: ConnectionPolicy,
    ) -> None:
        handler: Callable[..., Awaitable[web.StreamResponse]] = entry or plain.request_handler
        super().__init__(
            handler,
            request_factory=functools.partial(app._make_request, _cls=LeavingRequest),
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self.policy = policy

    def __call__(self) -> RequestHandler:
        return GuardedProtocol(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` serving its app through ``GuardedServer``."""

    __slots__ = ("_entry", "_policy")

    def __init__(
        self,
        app: web.Application,
        entry: Callable[[web.Request], Awaitable[web.StreamResponse]] | None,
        policy: ConnectionPolicy,
        **options: Any,
    ) -> None:
        super().__init__(app, **options)
        self._entry = entry
        self._policy = policy

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the app, merges its handler_args
        return GuardedServer(self.app, plain, self._entry, self._policy)
