"""The catch-all route: buffer the body, rewrite headers, send with a token, stream back.

Everything that can be computed once (URL parts, timeouts, limits) is computed in
``__init__``; the per-request path does only what depends on the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from proxy.body import RequestBody, SpoolSpace, TeeBody, too_large
from proxy.cache.key import BodyDigest
from proxy.cache.policy import Decision
from proxy.cache.step import X_CACHE, ConversionCache, Ticket
from proxy.errors import BadRequest, ProxyError
from proxy.exchange import EXCHANGE, REQUEST_ID_HEADER, Exchange
from proxy.headers import outbound_request_headers, outbound_response_headers
from proxy.metrics import Metrics
from proxy.replay import send_with_token
from proxy.settings import Settings
from proxy.tokens import TokenCache
from proxy.upstream import (
    UpstreamTarget,
    is_stale_connection,
    iter_body,
    map_client_error,
    never_sent,
)

log = structlog.get_logger("proxy.forward")

FORWARDED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# RFC 9110 §9.2.2: safe to send twice when a connection broke before the answer.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
NO_BODY_STATUSES = frozenset({204, 304})
URLS_REMEMBERED = 1024
EMPTY_BODY = RequestBody()


class _WholeResponse(web.StreamResponse):
    """A response whose body is already here: headers and body leave in one write."""

    _send_headers_immediately = False


def _status(response: aiohttp.ClientResponse) -> int:
    return response.status


def _release(response: aiohttp.ClientResponse) -> None:
    response.release()


class Forwarder:
    """Forwards one request to the configured upstream and streams the answer back."""

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        tokens: TokenCache,
        metrics: Metrics,
        cache: ConversionCache | None = None,
    ) -> None:
        self._cache = cache
        self._session = session
        self._tokens = tokens
        self._metrics = metrics
        self._target = UpstreamTarget(settings.upstream_url)
        # Upstream URL per request target: clients repeat a few paths, and a URL reused keeps
        # what yarl and aiohttp cache on it. Cleared when full (endless distinct paths cost a
        # URL.build each, as without it, not memory).
        self._urls: dict[str, URL] = {}
        self._read_timeout = settings.read_timeout
        self._memory_limit = settings.body_memory_limit
        self._max_body = settings.max_body_size
        self._spool_dir = settings.spool_dir
        self._body_timeout = settings.request_body_timeout
        self._spool = SpoolSpace(settings.spool_max_size)  # this process's, all bodies together
        self._count_replay = metrics.replays.inc
        self._count_stale_retried = metrics.stale_connections.labels("retried").inc
        self._count_stale_failed = metrics.stale_connections.labels("failed").inc
        # Looked up once: on Python 3.11 every get_running_loop() is a getpid() syscall.
        self._loop = asyncio.get_running_loop()

    async def expect_continue(self, request: web.Request) -> None:
        """Answer ``Expect: 100-continue`` ourselves, only for a body we will accept.

        An oversized declared body, or one the spool has no room for, gets no 100 Continue:
        the handler answers 413 or 507 before the client sends it. ``Expect`` itself is never
        forwarded.
        """
        try:
            self._refuse_declared(request.content_length)
        except ProxyError:
            return
        if (
            request.version >= aiohttp.HttpVersion11
            and request.headers.get("Expect", "").lower() == "100-continue"
        ):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_target = request.raw_path
        if request.method not in FORWARDED_METHODS:
            raise BadRequest(f"The method {request.method} is not forwarded.")
        if not raw_target.startswith("/") or raw_target.startswith("//"):
            raise BadRequest(
                "Only origin-form request targets (a path starting with one /) are forwarded."
            )
        declared = request.content_length
        self._refuse_declared(declared)

        exchange = request[EXCHANGE]
        cache = self._cache
        ticket = cache.ticket(request) if cache is not None else None
        # A cacheable request is read whole, its key computed on the way (no streaming tee).
        digest = None
        if ticket is not None and ticket.decision is not Decision.BYPASS:
            digest = BodyDigest(request.headers.get("Content-Type"))
        body = EMPTY_BODY
        if request.body_exists:
            if digest is None and declared is not None and declared > self._memory_limit:
                # Big, with a known length: streamed upstream as it arrives, copied for a replay.
                body = await TeeBody.open(
                    request.content,
                    spool_dir=self._spool_dir,
                    size=declared,
                    body_timeout=self._body_timeout,
                    space=self._spool,
                )
            else:
                body = await RequestBody.read(
                    request.content,
                    memory_limit=self._memory_limit,
                    max_size=self._max_body,
                    spool_dir=self._spool_dir,
                    observe=digest.update if digest is not None else None,
                    body_timeout=self._body_timeout,
                    space=self._spool,
                )
        try:
            if cache is not None and ticket is not None and digest is not None:
                key = cache.key(request, exchange.client, digest)
                hit = await cache.lookup(ticket, key)
                if hit is not None:
                    exchange.cached = True
                    return await cache.answer(request, hit, exchange)
            upstream = await self._send(request, raw_target, body)
            exchange.upstream_status = upstream.status
            try:
                return await self._stream_back(request, upstream, exchange, ticket)
            finally:
                if ticket is None or ticket.fill is None:  # a fill releases it when done
                    upstream.release()
        finally:
            if ticket is not None and ticket.fill is not None:
                ticket.fill.after(body.close)  # upstream may still read it while it answers
            else:
                body.close()
            if cache is not None and ticket is not None:
                cache.done(ticket)

    def _refuse_declared(self, length: int | None) -> None:
        """413 or 507 for a declared length the proxy will not take, before a byte is read."""
        if length is None:
            return
        if length > self._max_body:
            raise too_large(length, self._max_body)
        if length > self._memory_limit and not self._spool.fits(length):
            raise self._spool.full(length)  # a body this big is spooled

    async def _send(
        self, request: web.Request, raw_target: str, body: RequestBody
    ) -> aiohttp.ClientResponse:
        url = self._urls.get(raw_target)
        if url is None:
            if len(self._urls) >= URLS_REMEMBERED:
                self._urls.clear()
            url = self._urls[raw_target] = self._target.url_for(raw_target)
        in_headers = request.headers
        length: list[tuple[str, str]] = []
        tee = None
        if body is EMPTY_BODY:
            # No body; a declared "Content-Length: 0" is kept (aiohttp sends it for b"").
            data: bytes | None = b"" if "Content-Length" in in_headers else None
            spilled = False
        else:
            data = body.in_memory
            spilled = data is None
            if spilled:
                # Streamed (from the client or the disk), so say its length ourselves (aiohttp
                # does for bytes); a tee body's length is the one the client declared.
                tee = body if isinstance(body, TeeBody) else None
                size = request.content_length if tee else body.size
                length = [("Content-Length", str(size))]
            elif not data and "Content-Length" not in in_headers:
                data = None  # a chunked upload of nothing: send no body at all
        method = request.method
        exchange = request[EXCHANGE]
        idempotent = method in IDEMPOTENT_METHODS
        session = self._session
        loop = self._loop
        observe_latency = self._metrics.observe_upstream_latency
        sends = 0  # a request goes upstream at most twice: after a 401 or a stale connection

        async def send(token: str) -> aiohttp.ClientResponse:
            nonlocal sends, length
            while True:
                sends += 1
                payload: object = data
                if spilled:
                    if tee is None:
                        payload = body.chunks()
                    elif sends == 1:
                        payload = tee.stream()
                    else:  # the replay: the whole body from the copy
                        await tee.finish()
                        length = [("Content-Length", str(tee.size))]
                        payload = tee.chunks()
                out = outbound_request_headers(in_headers, token) + length
                started = loop.time()
                exchange.sent_upstream = True  # a client hanging up from here on still pays
                try:
                    response = await session.request(
                        method, url, headers=out, data=payload, allow_redirects=False
                    )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    if sends == 1 and never_sent(exc):
                        exchange.sent_upstream = False  # no connection: not a call
                    if body.failure is not None:  # the client's side broke, or the spool
                        raise body.failure from None
                    if is_stale_connection(exc):
                        if idempotent and sends == 1:
                            self._count_stale_retried()
                            log.info("upstream connection was stale: resending once")
                            continue
                        self._count_stale_failed()
                    error = map_client_error(exc, "sending the request")
                    log.warning(
                        "upstream request failed", error=error.code, cause=type(exc).__name__
                    )
                    raise error from None
                observe_latency(loop.time() - started)
                return response

        def may_replay() -> bool:
            return sends < 2

        return await send_with_token(
            self._tokens, send, _status, _release, self._on_replay, may_replay
        )

    def _on_replay(self) -> None:
        self._count_replay()
        log.info("upstream answered 401: replaying once with a renewed token")

    async def _stream_back(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        exchange: Exchange,
        ticket: Ticket | None = None,
    ) -> web.StreamResponse:
        status, reason = upstream.status, upstream.reason
        headers = outbound_response_headers(upstream.headers)
        headers.append((REQUEST_ID_HEADER, exchange.request_id))  # upstream's own is dropped
        length = upstream.headers.get("Content-Length")
        has_body = request.method != "HEAD" and status not in NO_BODY_STATUSES
        chunks = None
        if ticket is not None:
            headers.append((X_CACHE, ticket.label))
            if has_body and self._cache is not None:
                fill = self._cache.start_fill(ticket, upstream, headers, self._body(upstream))
                chunks = fill.chunks() if fill is not None else None
        content = upstream.content
        if chunks is None and has_body and content.is_eof():
            # The whole body came with the headers (most API answers): one write, no loop.
            body = content.read_nowait()
            whole = _WholeResponse(status=status, reason=reason, headers=headers)
            if length is not None:
                whole.content_length = len(body)
            await whole.prepare(request)
            await whole.write_eof(body)
            return whole
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        if length is not None and length.isdigit():
            response.content_length = int(length)
        await response.prepare(request)
        if not has_body:
            return response
        try:
            async for chunk in chunks or self._body(upstream):
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The client must see a broken response, not a complete-looking one: close the
            # connection without the final chunk (or short of Content-Length).
            log.warning("upstream broke mid-body; aborting the response", cause=type(exc).__name__)
            exchange.aborted = True
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _body(self, upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        return iter_body(upstream, self._read_timeout, self._loop)
