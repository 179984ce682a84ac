"""The pipeline's cache step: decide, key, look up, answer a hit, store a miss.

It runs after the access guards and the budget check, before forwarding (DESIGN.md "The
conversion cache"). A request on the allow-list is read whole (no streaming tee) with its key
computed while it is spooled; a hit is answered from the store, streamed with its hash
checked; a miss is forwarded and its 200 answer stored by a ``Fill`` task that owns the
upstream response, so the entry is complete and committed whether or not the client stays
(the server cancels a handler whose client left), and before the client sees the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.cache.flight import Flights
from proxy.cache.key import BodyDigest, KeyInput, cache_key
from proxy.cache.policy import Decision, decide
from proxy.cache.store import CacheStore, CorruptEntry, Hit, Stats
from proxy.exchange import REQUEST_ID_HEADER, Exchange
from proxy.metrics import Metrics
from proxy.paths import normalise
from proxy.settings import Settings

log = structlog.get_logger("proxy.cache")

X_CACHE = "X-Cache"
# Response headers never stored: per-answer or per-connection (RFC 9110 §7.6.1 hop-by-hop are
# already dropped by proxy.headers), the request id (each answer has its own), cookies.
NOT_STORED = frozenset(
    h.lower()
    for h in (
        "Set-Cookie",
        "Date",
        "Age",
        REQUEST_ID_HEADER,
        "Content-Length",
        "Transfer-Encoding",
        X_CACHE,
        "Server",
    )
)
STATS_REFRESH = 30.0  # seconds between the Redis store's gauges updates
_END = object()


def _utc_day() -> int:
    return int(time.time() // 86400)


def stored_headers(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The response headers an entry keeps (pure: Content-Type, Content-Disposition, ...)."""
    return tuple((k, v) for k, v in headers if k.lower() not in NOT_STORED)


class _CacheCollector(Collector):
    """``aspose_proxy_cache_bytes``/``_entries`` (last known) and ``_evictions_total``."""

    def __init__(self, cache: ConversionCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        stats = self._cache.stats
        yield GaugeMetricFamily("aspose_proxy_cache_bytes", "Bytes held by the cache.", stats.bytes)
        yield GaugeMetricFamily(
            "aspose_proxy_cache_entries", "Entries held by the cache.", stats.entries
        )
        yield CounterMetricFamily(
            "aspose_proxy_cache_evictions",
            "Cache entries evicted to stay under cache_max_size.",
            self._cache.store.evictions,
        )


@dataclass(slots=True)
class Ticket:
    """One request's cache state, from the decision to the stored entry."""

    decision: Decision
    key: str | None = None
    leading: bool = False  # this request's forward is the single flight for its key
    fill: Fill | None = None

    @property
    def label(self) -> str:
        return "BYPASS" if self.decision is Decision.BYPASS else "MISS"


class ConversionCache:
    """The cache step of one app: the store, the flights in progress, the counters."""

    def __init__(self, settings: Settings, store: CacheStore, metrics: Metrics) -> None:
        self.store = store
        self.flights = Flights()
        self._last_stats = Stats(0, 0)  # a store that counts only on request (Redis)
        self._upstream = settings.upstream_url
        self._client_id = settings.client_id
        self._per_client = settings.cache_scope == "client"
        self.max_entry_size = settings.cache_max_entry_size
        self._refresher: asyncio.Task[None] | None = None
        requests = Counter(
            "aspose_proxy_cache_requests",
            "Requests on the cache's allow-list, by result (hit, miss, bypass).",
            ["result"],
            registry=metrics.registry,
        )
        self._count_hit = requests.labels("hit").inc
        self._count_miss = requests.labels("miss").inc
        self.count_bypass = requests.labels("bypass").inc
        self._day = _utc_day()
        self._hits_today = self._misses_today = 0
        metrics.registry.register(_CacheCollector(self))
        self._fills: set[asyncio.Task[bool]] = set()
        self._store_down = False

    def count_hit(self) -> None:
        self._count_hit()
        self._roll()
        self._hits_today += 1

    def count_miss(self) -> None:
        self._count_miss()
        self._roll()
        self._misses_today += 1

    def _roll(self) -> None:
        day = _utc_day()
        if day != self._day:
            self._day, self._hits_today, self._misses_today = day, 0, 0

    def today(self) -> tuple[int, int]:
        """Hits and misses of this process since 00:00 UTC (the status page's ratio)."""
        self._roll()
        return self._hits_today, self._misses_today

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: open the store, keep its gauges fresh, let fills finish at exit."""
        try:
            await self.store.open()
            await self.refresh_stats()
        except Exception as exc:
            log.error(
                "cache store unavailable at start; requests are forwarded",
                store=self.store.description,
                cause=type(exc).__name__,
            )
        self._refresher = asyncio.create_task(self._refresh_forever(), name="cache-stats")
        try:
            yield
        finally:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            if self._fills:
                await asyncio.wait(self._fills, timeout=10)
            await self.store.close()

    @property
    def stats(self) -> Stats:
        """Entries and bytes: the disk store's own index, else the last periodic count."""
        return self.store.counted() or self._last_stats

    async def refresh_stats(self) -> None:
        self._last_stats = await self.store.stats()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(STATS_REFRESH)
            with contextlib.suppress(Exception):
                await self.refresh_stats()

    def ticket(self, request: web.Request) -> Ticket | None:
        """None for a request off the allow-list (untouched, no X-Cache header)."""
        normal = normalise(request.raw_path)
        path = normal.path if normal.clear else None
        decision = decide(request.method, path, request.query.keys(), request.headers)
        if decision is Decision.NONE:
            return None
        if decision is Decision.BYPASS:
            self.count_bypass()
        return Ticket(decision)

    def key(self, request: web.Request, client: str | None, body: BodyDigest) -> str:
        headers = request.headers
        normal = normalise(request.raw_path)
        return cache_key(
            KeyInput(
                upstream=self._upstream,
                client_id=self._client_id,
                scope_client=(client or "") if self._per_client else None,
                method=request.method,
                path=normal.path,
                query=list(request.query.items()),
                content_type=headers.get("Content-Type"),
                accept=headers.get("Accept"),
                accept_encoding=headers.get("Accept-Encoding"),
                content_encoding=headers.get("Content-Encoding"),
            ),
            body.fields(),
        )

    async def _get(self, key: str) -> Hit | None:
        """The store's entry; a broken store is a miss, never a failed request, logged once
        when it breaks and once when it answers again (not once per request)."""
        try:
            hit = await self.store.get(key, time.time())
        except Exception as exc:
            self.store_failed(exc)
            return None
        if self._store_down:
            self._store_down = False
            log.info("cache store reachable again", store=self.store.description)
        return hit

    def store_failed(self, exc: Exception) -> None:
        if not self._store_down:
            self._store_down = True
            log.warning(
                "cache store failing: conversions are forwarded and not stored until it is back",
                store=self.store.description,
                cause=type(exc).__name__,
            )

    async def lookup(self, ticket: Ticket, key: str) -> Hit | None:
        """The entry for ``key``, waiting for an identical request in flight first; None:
        forward (leading the flight when no one else does)."""
        ticket.key = key
        if ticket.decision is Decision.REFRESH:
            self.count_miss()
            return None
        hit = await self._get(key)
        if hit is None:
            flight = self.flights.lead(key)
            if flight is None:
                ticket.leading = True
            elif await asyncio.shield(flight):
                hit = await self._get(key)
        if hit is None:
            self.count_miss()
        else:
            self.count_hit()
        return hit

    def done(self, ticket: Ticket) -> None:
        """The request is over (answered, failed or cancelled: its client left): its fill
        stops queueing for it and finishes alone; a leader that started no fill tells its
        waiters to forward."""
        if ticket.fill is not None:
            ticket.fill.abandon()
        elif ticket.leading and ticket.key is not None:
            self.flights.land(ticket.key, stored=False)

    async def answer(
        self, request: web.Request, hit: Hit, exchange: Exchange
    ) -> web.StreamResponse:
        """Answer from the store: stored status and headers, ``X-Cache: HIT`` and ``Age``."""
        meta = hit.meta
        try:
            response = web.StreamResponse(status=meta.status, headers=list(meta.headers))
            response.headers[X_CACHE] = "HIT"
            response.headers["Age"] = str(max(0, int(time.time() - meta.stored_at)))
            response.content_length = meta.size
            await response.prepare(request)
            try:
                await hit.send(request, response)
            except ConnectionError:
                raise  # the client left: the pipeline counts it
            except Exception as exc:  # a bad hash, or the store failed mid-body
                # The headers are out: the client must see a broken answer, not a short one
                # that looks complete (as when upstream breaks mid-body).
                log.warning(
                    "cache entry could not be served to the end; aborting the answer",
                    cause="hash mismatch" if isinstance(exc, CorruptEntry) else type(exc).__name__,
                )
                exchange.aborted = True
                if request.transport is not None:
                    request.transport.close()
                return response
            exchange.bytes_sent = meta.size
            await response.write_eof()
            return response
        finally:
            await hit.close()

    def start_fill(
        self,
        ticket: Ticket,
        upstream: aiohttp.ClientResponse,
        headers: list[tuple[str, str]],
        chunks: AsyncIterator[bytes],
    ) -> Fill | None:
        """Take over a 200 answer's body: stream it to the client and into the store."""
        key = ticket.key
        if key is None or upstream.status != 200:
            return None
        declared = upstream.content_length
        storable = declared is None or declared <= self.max_entry_size
        fill = Fill(self, key, stored_headers(headers), storable, ticket.leading, upstream)
        task = asyncio.create_task(fill.run(chunks), name="cache-fill")
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)
        ticket.fill = fill
        return fill


@dataclass(slots=True, eq=False)
class Fill:
    """Reads one upstream answer to its end, into the store and onto a queue for the client.

    It runs in its own task: a client that leaves cancels the handler, not the fill, so a
    complete answer is still stored. It holds the last chunk back until the entry is
    committed, so once the client has the whole body the next identical request is a hit.
    """

    cache: ConversionCache
    key: str
    headers: tuple[tuple[str, str], ...]
    storable: bool
    leading: bool
    upstream: aiohttp.ClientResponse
    queue: asyncio.Queue[object] = field(default_factory=lambda: asyncio.Queue(maxsize=8))
    gone: bool = False
    finished: bool = False
    _after: list[Callable[[], None]] = field(default_factory=list)

    def after(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the fill is over (now if it is): the request body must live
        until then, since upstream may still be reading it while it answers."""
        if self.finished:
            callback()
        else:
            self._after.append(callback)

    async def run(self, chunks: AsyncIterator[bytes]) -> bool:
        cache, stored, failure = self.cache, False, None
        writer, held = None, None
        try:
            if self.storable:
                try:
                    writer = await cache.store.writer(self.key)
                except Exception as exc:
                    cache.store_failed(exc)
            size = 0
            async for chunk in chunks:
                size += len(chunk)
                if writer is not None:
                    if size > cache.max_entry_size:
                        await writer.abort()
                        writer = None
                    else:
                        try:
                            await writer.write(chunk)
                        except Exception as exc:
                            log.warning("cache write failed", cause=type(exc).__name__)
                            with contextlib.suppress(Exception):
                                await writer.abort()
                            writer = None
                if held is not None and not self.gone:
                    await self.queue.put(held)
                held = chunk  # the last chunk waits for the commit: then the client is done
            if writer is not None:
                try:
                    await writer.commit(200, self.headers)
                    stored = True
                    writer = None
                except Exception as exc:
                    log.warning("cache commit failed", cause=type(exc).__name__)
        except BaseException as exc:  # upstream broke mid-body: a partial answer, never stored
            failure = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    await writer.abort()
            self.upstream.release()
            self.finished = True
            for callback in self._after:
                callback()
            if self.leading:
                cache.flights.land(self.key, stored)
            if not self.gone:
                if held is not None and failure is None:
                    await self.queue.put(held)
                await self.queue.put(failure if failure is not None else _END)
        return stored

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body for the client; re-raises upstream's failure; ``abandon`` on the way out."""
        try:
            while True:
                item = await self.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            self.abandon()

    def abandon(self) -> None:
        """The client is gone (or done): the fill stops queueing and finishes on its own."""
        self.gone = True
        while not self.queue.empty():
            self.queue.get_nowait()
