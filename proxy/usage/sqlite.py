"""The default usage store: one SQLite file, written by one thread off the event loop.

WAL lets the ``usage`` command read while the proxy writes; an upsert adds each batch to the
hour's row, so several processes may share the file (their budgets are per process, though:
use Redis for budgets shared between processes).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from proxy.usage.store import Batch, Ledger, Row

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    hour INTEGER NOT NULL,
    client TEXT NOT NULL,
    product TEXT NOT NULL,
    kind TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, client, product, kind)
) WITHOUT ROWID
"""
UPSERT = """
INSERT INTO usage (hour, client, product, kind, calls, errors) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (hour, client, product, kind)
DO UPDATE SET calls = calls + excluded.calls, errors = errors + excluded.errors
"""
SELECT = """
SELECT client, product, kind, SUM(calls), SUM(errors) FROM usage WHERE hour >= ?
GROUP BY client, product, kind
"""


class SqliteStore:
    """``sqlite:///path/usage.db``; every call runs on the store's own single thread."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self.description = f"sqlite://{path}"
        self._create = create
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="usage-sqlite")
        self._db: sqlite3.Connection | None = None

    @property
    def ledger(self) -> Ledger | None:
        return None

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if not self._create and not self.path.exists():
            return  # the usage command on a machine where the proxy never ran: no rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        db.execute(SCHEMA)
        db.commit()
        self._db = db

    async def add(self, batch: Batch) -> None:
        rows = [(*key, calls, errors) for key, (calls, errors) in batch.items()]
        await self._run(lambda: self._add(rows))

    def _add(self, rows: list[tuple[int, str, str, str, int, int]]) -> None:
        if self._db is None:
            self._open()  # it failed at start (say, a directory made writable since)
        assert self._db is not None
        with self._db:  # one transaction per batch
            self._db.executemany(UPSERT, rows)

    async def rows(self, since_hour: int) -> list[Row]:
        return await self._run(lambda: self._rows(since_hour))

    def _rows(self, since_hour: int) -> list[Row]:
        if self._db is None:
            self._open()
        if self._db is None:
            return []
        return sorted(Row(*values) for values in self._db.execute(SELECT, (since_hour,)))

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self._run(db.close)
        self._thread.shutdown(wait=True)
