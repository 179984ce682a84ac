"""Forwarding: body -> (cache lookup) -> headers -> send policy (proxy.replay) -> stream back.

Everything that can be computed once (URL parts, timeouts, limits) is computed in
``__init__``; the per-request path does only what depends on the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from aiohttp.hdrs import EXPECT
from yarl import URL

from proxy.aiohttp_internals import WholeResponse
from proxy.body import RequestBody, SpoolSpace, TeeBody, too_large
from proxy.bounded_cache import BoundedCache
from proxy.cache.key import BodyDigest
from proxy.cache.policy import Decision
from proxy.cache.step import X_CACHE, ConversionCache, Ticket
from proxy.errors import BadRequest, ProxyError
from proxy.exchange import EXCHANGE, Exchange
from proxy.headers import outbound_request_headers, outbound_response_headers
from proxy.metrics import Metrics
from proxy.replay import ANSWERED, REPLAY, RESEND, STALE, UNAUTHORIZED, next_send
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


def _body_to_send(
    body: RequestBody, declared: int | None, has_length: bool
) -> tuple[bytes | None, list[tuple[str, str]], bool]:
    """How aiohttp gets the body: bytes (None: no body at all), the Content-Length header the
    proxy must add, and whether the body is streamed (from the client or the spool) instead."""
    if body is EMPTY_BODY:
        # No body; a declared "Content-Length: 0" is kept (aiohttp sends it for b"").
        return (b"" if has_length else None), [], False
    data = body.in_memory
    if data is None:
        # Streamed, so say its length ourselves (aiohttp does for bytes); a tee body's length
        # is the one the client declared.
        size = declared if isinstance(body, TeeBody) else body.size
        return None, [("Content-Length", str(size))], True
    if not data and not has_length:
        return None, [], False  # a chunked upload of nothing: send no body at all
    return data, [], False


async def _stream(body: RequestBody, first: bool) -> AsyncIterator[bytes]:
    """A streamed body for one send: a tee body goes on from the client the first time, then
    (a resend or a replay) whole from its copy."""
    if not isinstance(body, TeeBody):
        return body.chunks()
    if first:
        return body.stream()
    await body.finish()
    return body.chunks()


def _failure(exc: BaseException) -> ProxyError:
    """The proxy's error for a failed send, logged."""
    error = map_client_error(exc, "sending the request")
    log.warning("upstream request failed", error=error.code, cause=type(exc).__name__)
    return error


async def _continue(request: web.Request) -> None:
    """Answer ``Expect: 100-continue`` ourselves, once the request is admitted and its
    declared size accepted (a refusal gets no 100 Continue: the client sends no body).
    ``Expect`` itself is never forwarded."""
    if (
        request.version >= aiohttp.HttpVersion11
        and request.headers.get(EXPECT, "").lower() == "100-continue"
    ):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


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
        self._target = UpstreamTarget(settings.upstream_url)
        # Upstream URL per request target: clients repeat a few paths, and a URL reused keeps
        # what yarl and aiohttp cache on it. Cleared when full (endless distinct paths cost a
        # URL.build each, as without it, not memory).
        self._urls: BoundedCache[str, URL] = BoundedCache(URLS_REMEMBERED)
        self._read_timeout = settings.read_timeout
        self._memory_limit = settings.body_memory_limit
        self._max_body = settings.max_body_size
        self._spool_dir = settings.spool_dir
        self._body_timeout = settings.request_body_timeout
        self._spool = SpoolSpace(settings.spool_max_size)  # this process's, all bodies together
        self._observe_latency = metrics.observe_upstream_latency
        self._metrics = metrics
        # Looked up once: on Python 3.11 every get_running_loop() is a getpid() syscall.
        self._loop = asyncio.get_running_loop()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Body, cache lookup, headers, send policy, stream back (the target is origin-form:
        the pipeline checked it)."""
        if request.method not in FORWARDED_METHODS:
            raise BadRequest(f"The method {request.method} is not forwarded.")
        declared = request.content_length
        self._refuse_declared(declared)  # before any 100 Continue
        if EXPECT in request.headers:
            await _continue(request)

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
            upstream = await self._send(request, body, declared, exchange)
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
        self, request: web.Request, body: RequestBody, declared: int | None, exchange: Exchange
    ) -> aiohttp.ClientResponse:
        """Carry out the send policy (``proxy.replay``): at most two sends. ``declared``: the
        request's Content-Length, as ``handle`` read it."""
        raw_target = request.raw_path
        url = self._urls.get(raw_target)
        if url is None:
            url = self._urls.remember(raw_target, self._target.url_for(raw_target))
        in_headers = request.headers
        method = request.method
        data, length, streamed = _body_to_send(body, declared, "Content-Length" in in_headers)
        idempotent = method in IDEMPOTENT_METHODS
        tokens = self._tokens
        # The held token when it is valid (nearly always: no coroutine), else wait for one.
        token = tokens.valid_token() or await tokens.get()
        session, loop = self._session, self._loop
        sends = 0
        while True:
            sends += 1
            if streamed:
                data_or_stream: object = await _stream(body, first=sends == 1)
                if sends > 1 and isinstance(body, TeeBody):
                    length = [("Content-Length", str(body.size))]  # the copy, complete now
            else:
                data_or_stream = data
            out = outbound_request_headers(in_headers, token.value) + length
            started = loop.time()
            exchange.sent_upstream = True  # a client hanging up from here on still pays
            try:
                response = await session.request(
                    method, url, headers=out, data=data_or_stream, allow_redirects=False
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                if sends == 1 and never_sent(exc):
                    exchange.sent_upstream = False  # no connection: not a call
                if body.failure is not None:  # the client's side broke, or the spool
                    exc.__cause__ = None  # aiohttp's wrapper of it, now its context: no cycle
                    raise body.failure from None
                stale = is_stale_connection(exc)
                if stale and next_send(STALE, sends, idempotent) is RESEND:
                    self._metrics.stale_connections.labels("retried").inc()
                    log.info("upstream connection was stale: resending once")
                    continue
                if stale:
                    self._metrics.stale_connections.labels("failed").inc()
                raise _failure(exc) from None  # no local holds it: no frame <-> error cycle
            self._observe_latency(loop.time() - started)
            outcome = UNAUTHORIZED if response.status == 401 else ANSWERED
            if next_send(outcome, sends, idempotent) is not REPLAY:
                return response  # done: the answer goes back (a second 401 as it is)
            fresh = await tokens.renew(token)
            if fresh is None:  # no new token now (renewal cap, or it failed): the 401 as is
                return response
            response.release()  # a replayed 401 is never shown to the client
            token = fresh
            self._metrics.replays.inc()
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
            whole = WholeResponse(status=status, reason=reason, headers=headers)
            if length is not None:
                whole.content_length = len(body)
            await whole.prepare(request)
            await whole.write_eof(body)
            exchange.bytes_sent = len(body)
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
                exchange.bytes_sent += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The client must see a broken response, not a complete-looking one: close the
            # connection without the final chunk (or short of Content-Length).
            log.warning("upstream broke mid-body; aborting the response", cause=type(exc).__name__)
            # aiohttp keeps the exception on the upstream response, which this frame holds:
            # its traceback (this frame) would make a cycle only a full collection frees.
            exc.__traceback__ = None
            exchange.aborted = True
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _body(self, upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        return iter_body(upstream, self._read_timeout, self._loop)
