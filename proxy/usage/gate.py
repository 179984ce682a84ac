"""The accounting step around the forwarder: rate limit and budget before, count after.

A request is a call once its head was sent upstream (answered or not, its client still there
or not); only one that never left the proxy gives its budget reservation back.

It wraps only the forwarding route, so the proxy's own answers (probes, the status page, the
local token endpoint, every refusal) are never calls. It runs after the access guards (the
client is known) and before the forwarder reads the body (a refused upload costs nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.bounded_cache import BoundedCache
from proxy.errors import ProxyError
from proxy.exchange import CLIENT_CLOSED, EXCHANGE, Exchange
from proxy.settings import Settings
from proxy.token_fingerprints import client_digest
from proxy.usage.budgets import Budgets
from proxy.usage.counter import STATUS_CLASSES, UsageCounter, classify
from proxy.usage.factory import open_store
from proxy.usage.lease import Leases
from proxy.usage.outage import Outage
from proxy.usage.rate_limiter import RateLimiter
from proxy.usage.rules import ANONYMOUS

log = structlog.get_logger("proxy.usage")

CLASSIFIED_MAX = 4096


def charged_status(exchange: Exchange, failure: BaseException) -> int | None:
    """The status a request that ended in ``failure`` is counted with, or None: no call.

    A request counts, and keeps its budget reservation, as soon as its head was sent
    upstream (issue 16: Aspose bills what it received, answered or not): with upstream's
    status when it answered, else the proxy's own (502, 504) or 499 for a client that hung
    up. Only a request that never left the proxy gives its reservation back.
    """
    if exchange.upstream_status is not None:
        return exchange.upstream_status
    if not exchange.sent_upstream:
        return None
    return failure.status if isinstance(failure, ProxyError) else CLIENT_CLOSED


class Usage:
    """What the app keeps for accounting: the store, the counter and the rules in force."""

    def __init__(self, settings: Settings) -> None:
        # Budgets and rate limits are the application's own, keyed by its client_id's
        # fingerprint as the token schedule is: two applications never share them (issue 17).
        self.store = open_store(
            settings.usage_store,
            settings.usage_store_password,
            application=client_digest(settings.client_id),
        )
        self.counter = UsageCounter(self.store, flush_interval=settings.usage_flush_interval)
        self.outage = Outage()  # one log line per store outage, for budgets and rates alike
        shared = self.store.ledger
        # A shared ledger is asked in chunks (usage/lease.py: a round trip per call costs more
        # than the call); without one, budgets and rates live in this process's memory.
        self.leases = Leases(shared) if shared is not None else None
        self._sweep_every = settings.usage_flush_interval
        self.rates = RateLimiter(settings.rate_limits, self.leases, outage=self.outage)
        self.budgets = Budgets(settings.budgets, self.leases, outage=self.outage)
        # Without access keys or local clients no request has a name: skip the lookup.
        self.names_clients = bool(settings.access_keys or settings.local_clients)
        self._runner: asyncio.Task[None] | None = None

    def wrap(self, forward: Handler) -> Handler:
        """``forward`` with the rate limit and budget checks before it and the count after."""
        totals = self.counter.totals
        classes = STATUS_CLASSES
        usage = self
        # (product, kind) per request target: most calls repeat a few paths.
        classified: BoundedCache[str, tuple[str, str]] = BoundedCache(CLASSIFIED_MAX)

        async def accounted(request: web.Request) -> web.StreamResponse:
            exchange = request[EXCHANGE]
            client = (exchange.client or ANONYMOUS) if usage.names_clients else ANONYMOUS
            path = request.raw_path
            attribution = classified.get(path)
            if attribution is None:
                attribution = classified.remember(path, classify(path))
            product, kind = attribution
            budgets = usage.budgets  # read once: a reload may swap it while this call is out
            if usage.rates.active:
                await usage.rates.check(client)
            reserved: tuple[str, ...] = ()
            if budgets.active:
                reserved = await budgets.reserve(client, product)
            try:
                response = await forward(request)
            except BaseException as exc:
                if exchange.cached:  # a hit whose client left: still no call, still counted
                    if reserved:
                        budgets.release(reserved)
                    usage.counter.count_cached(client, product, kind)
                    raise
                status = charged_status(exchange, exc)
                if status is not None:  # it left the proxy: a call, answered or not
                    key = (client, product, kind, classes[status // 100 % 10])
                    totals[key] = totals.get(key, 0) + 1
                elif reserved:  # it never left (refused, no connection): not a call
                    budgets.release(reserved)
                raise
            if exchange.cached:  # answered by the conversion cache: not a call (issue 19)
                if reserved:
                    budgets.release(reserved)
                usage.counter.count_cached(client, product, kind)
                return response
            key = (client, product, kind, classes[response.status // 100 % 10])
            totals[key] = totals.get(key, 0) + 1
            return response

        return accounted

    def reload(self, settings: Settings) -> None:
        """SIGHUP: new budgets and rate limits (the store stays: changing it needs a restart)."""
        self.names_clients = bool(settings.access_keys or settings.local_clients)
        rates = RateLimiter(settings.rate_limits, self.leases, outage=self.outage)
        budgets = Budgets(settings.budgets, self.leases, outage=self.outage)
        seeding = asyncio.ensure_future(budgets.seed(self.counter.rows))

        def swap(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is None:
                self.rates, self.budgets = rates, budgets
                log.info("usage rules reloaded", budgets=len(budgets.rules))
            else:
                log.warning("usage rules not reloaded: the store could not be read")

        seeding.add_done_callback(swap)

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: open the store, seed the budgets, flush every interval and at exit."""
        try:
            await self.store.open()
            await self.budgets.seed(self.counter.rows)
        except Exception as exc:
            log.error(
                "usage store unavailable at start; counting in memory and retrying",
                store=self.store.description,
                cause=type(exc).__name__,
            )
        self._runner = asyncio.create_task(self.counter.run(), name="usage-flush")
        sweeper = asyncio.create_task(self._give_back_idle_leases(), name="usage-leases")
        try:
            yield
        finally:
            for task in (self._runner, sweeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.leases is not None:
                with contextlib.suppress(Exception):  # the store is down: the lease is lost
                    await self.leases.give_back(idle=0)
            await self.counter.close()

    async def _give_back_idle_leases(self) -> None:
        """Every flush interval: unused leased calls go back to the shared budgets."""
        while self.leases is not None:
            await asyncio.sleep(self._sweep_every)
            with contextlib.suppress(Exception):  # the store is down: kept, tried again
                await self.leases.give_back()
