"""Counting calls without slowing them: one dict increment per call, a batched write per second.

The hot path adds one to ``totals[(client, product, kind, status_class)]`` (cumulative since
start; ``/metrics`` reads it at scrape time). A background task writes what grew since the last
write to the store, once per ``usage_flush_interval``, and once more at shutdown. A crash loses
at most the calls of that last interval. A failed write is retried with the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from proxy.paths import normalise
from proxy.usage.rules import OTHER, PRODUCTS
from proxy.usage.store import Row, UsageStore, current_hour, merge

log = structlog.get_logger("proxy.usage")

Key = tuple[str, str, str, str]  # client, product, kind, status class
STATUS_CLASSES = tuple(f"{i}xx" for i in range(10))  # status // 100 -> label value
ERROR_CLASSES = frozenset(STATUS_CLASSES[4:])
STORAGE = "storage"
API = "api"


def classify(raw_path: str) -> tuple[str, str]:
    """``(product, kind)`` of a request target: ``/v4.0/words/storage/x`` -> words, storage.

    Read on the path as ``allow_paths`` reads it (``proxy.paths.normalise``: decoded, case
    folded, dot segments removed), so ``/v4.0/%77ords/x`` is words to both. The product is the
    segment after the version, from a fixed list (else ``other``), so label values stay bounded
    whatever clients send.
    """
    path = normalise(raw_path).path
    parts = path.split("/", 3)
    product = OTHER
    if len(parts) > 2 and parts[1][:1] == "v" and parts[2] in PRODUCTS:
        product = parts[2]
    kind = STORAGE if "/storage/" in path else API
    return product, kind


class UsageCounter:
    """The in-memory totals of this process and their batched way into the store."""

    def __init__(
        self, store: UsageStore, *, flush_interval: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.totals: dict[Key, int] = {}
        # Requests answered by the conversion cache (not calls), per (client, product, kind),
        # cumulative since start, written to the store with the calls (issue 19).
        self.cached: dict[tuple[str, str, str], int] = {}
        self.store = store
        self._written: dict[Key, int] = {}
        self._written_cached: dict[tuple[str, str, str], int] = {}
        self._interval = flush_interval
        self._clock = clock
        self._lock = asyncio.Lock()  # a read never sees a batch both in the store and pending
        self._failing = False

    def record(self, client: str, product: str, kind: str, status: int) -> None:
        """Count one answered call (the gate inlines this on the hot path)."""
        key = (client, product, kind, STATUS_CLASSES[status // 100 % 10])
        self.totals[key] = self.totals.get(key, 0) + 1

    def count_cached(self, client: str, product: str, kind: str) -> None:
        """Count one request answered by the conversion cache (not a call)."""
        key = (client, product, kind)
        self.cached[key] = self.cached.get(key, 0) + 1

    def _pending(
        self, snapshot: dict[Key, int], cached: dict[tuple[str, str, str], int]
    ) -> dict[tuple[str, str, str], tuple[int, int, int]]:
        """(calls, errors, cached) grown since the last write, per (client, product, kind)."""
        written = self._written
        pending: dict[tuple[str, str, str], tuple[int, int, int]] = {}
        for key, total in snapshot.items():
            grown = total - written.get(key, 0)
            if grown:
                short = key[:3]
                calls, errors, hits = pending.get(short, (0, 0, 0))
                pending[short] = (
                    calls + grown,
                    errors + (grown if key[3] in ERROR_CLASSES else 0),
                    hits,
                )
        for short, total in cached.items():
            grown = total - self._written_cached.get(short, 0)
            if grown:
                calls, errors, hits = pending.get(short, (0, 0, 0))
                pending[short] = (calls, errors, hits + grown)
        return pending

    async def flush(self) -> None:
        """Write what was counted since the last write, as one batch of the current hour."""
        async with self._lock:
            snapshot, cached = dict(self.totals), dict(self.cached)
            pending = self._pending(snapshot, cached)
            if not pending:
                return
            hour = current_hour(self._clock())
            await self.store.add({(hour, *key): value for key, value in pending.items()})
            self._written, self._written_cached = snapshot, cached

    async def rows(self, since_hour: int) -> list[Row]:
        """The store's rows since ``since_hour`` plus this process's calls not yet written."""
        async with self._lock:
            stored = await self.store.rows(since_hour)
            return merge(stored, self._pending(dict(self.totals), dict(self.cached)))

    async def run(self) -> None:
        """Flush every interval, forever; a failed write is logged once and retried."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:
                if not self._failing:
                    log.warning(
                        "usage store write failed; counts kept in memory and retried",
                        store=self.store.description,
                        cause=type(exc).__name__,
                    )
                self._failing = True
            else:
                if self._failing:
                    log.info("usage store writes recovered", store=self.store.description)
                self._failing = False

    async def close(self) -> None:
        """The last flush at shutdown (best effort: a broken store is logged, not raised)."""
        try:
            await self.flush()
        except Exception as exc:
            log.error(
                "usage store: the last batch could not be written",
                store=self.store.description,
                cause=type(exc).__name__,
            )
        with contextlib.suppress(Exception):
            await self.store.close()
