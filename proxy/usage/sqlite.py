"""The default usage store: one SQLite file, written by one thread off the event loop.

WAL lets the ``usage`` command read while the proxy writes; an upsert adds each batch to the
hour's row, so several processes may share the file. Budget counters and rate-limit buckets
live in the same file: every reservation is one ``BEGIN IMMEDIATE`` transaction (SQLite's
write lock, held across processes for the few statements of one check-and-take), so the
workers of ``run --workers N`` and separate ``run`` processes on one host share each budget
and each rate exactly (issue 17). Across hosts, use Redis.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from proxy.usage.store import Batch, Bucket, Ledger, Row, app_key, lease_of, taken, three

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    hour INTEGER NOT NULL,
    application TEXT NOT NULL DEFAULT '',
    client TEXT NOT NULL,
    product TEXT NOT NULL,
    kind TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    cached INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, application, client, product, kind)
) WITHOUT ROWID
"""
UPSERT = """
INSERT INTO usage (hour, application, client, product, kind, calls, errors, cached)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (hour, application, client, product, kind)
DO UPDATE SET calls = calls + excluded.calls, errors = errors + excluded.errors,
    cached = cached + excluded.cached
"""
# A file written before issue 19 has no ``cached`` column: added on open.
ADD_CACHED = "ALTER TABLE usage ADD COLUMN cached INTEGER NOT NULL DEFAULT 0"
# A file written before the counts were kept per application (issue 17) has no
# ``application`` column, and it is part of the primary key: the table is rebuilt on open,
# its rows kept under application '' (read by every application: counted before the upgrade).
ADD_APPLICATION = (
    "ALTER TABLE usage RENAME TO usage_before_applications",
    SCHEMA,
    "INSERT INTO usage (hour, client, product, kind, calls, errors, cached) "
    "SELECT hour, client, product, kind, calls, errors, cached FROM usage_before_applications",
    "DROP TABLE usage_before_applications",
)
# Budget counters and token buckets shared by every process on this file (wall-clock times).
LEDGER_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger (key TEXT PRIMARY KEY, value INTEGER NOT NULL, "
    "expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tokens REAL NOT NULL, "
    "stamp REAL NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
)
SELECT = """
SELECT client, product, kind, SUM(calls), SUM(errors), SUM(cached) FROM usage
WHERE hour >= ? AND (application IN (?, '') OR ? = '*')
GROUP BY client, product, kind
"""


class SqliteStore:
    """``sqlite:///path/usage.db``; every call runs on the store's own single thread. Counts,
    budget counters and rate buckets are ``application``'s own (``store.app_key``): two proxies
    for different applications may share the file (the default path is per user, not per app)."""

    def __init__(self, path: Path, *, create: bool = True, application: str = "") -> None:
        self.path = path
        self._application = application
        self.description = f"sqlite://{path}"
        self._create = create
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="usage-sqlite")
        self._db: sqlite3.Connection | None = None

    @property
    def ledger(self) -> Ledger | None:
        return self  # counters in the file: exact for every process that opens it

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
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others then see it done
        db.execute(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(usage)")}
        if "cached" not in columns:
            db.execute(ADD_CACHED)
        if "application" not in columns:
            for statement in ADD_APPLICATION:
                db.execute(statement)
        for statement in LEDGER_SCHEMA:
            db.execute(statement)
        db.commit()
        self._db = db

    async def add(self, batch: Batch) -> None:
        rows = [
            (hour, self._application, *key, *three(counts))
            for (hour, *key), counts in batch.items()
        ]
        await self._run(lambda: self._add(rows))

    def _add(self, rows: list[tuple[object, ...]]) -> None:
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
        return sorted(
            Row(*values)
            for values in self._db.execute(
                SELECT, (since_hour, self._application, self._application)
            )
        )

    # -- the ledger: budget counters and rate buckets, one transaction each ---------------------

    def _immediate(self) -> sqlite3.Connection:
        """The connection inside a ``BEGIN IMMEDIATE`` (the file's write lock, all processes)."""
        if self._db is None:
            self._open()
        assert self._db is not None
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    async def reserve(
        self, keys: Sequence[str], limits: Sequence[int], ttl: int, most: int = 1
    ) -> list[int]:
        return await self._run(lambda: self._reserve(keys, limits, ttl, most))

    def _reserve(
        self, keys: Sequence[str], limits: Sequence[int], ttl: int, most: int
    ) -> list[int]:
        now = time.time()
        with self._immediate() as db:  # commits, or rolls back on an error
            values = [self._value(db, key, now) for key in keys]
            keys = [self._key(key) for key in keys]
            n = lease_of(values, limits, most)
            if n < 0:
                return [n]
            for key, value in zip(keys, values, strict=True):
                db.execute(
                    "INSERT OR REPLACE INTO ledger VALUES (?, ?, MAX(?, COALESCE("
                    "(SELECT expires FROM ledger WHERE key = ?), 0)))",
                    (key, value + n, now + ttl, key),
                )
            return [n, *(value + n for value in values)]

    def _key(self, key: str) -> str:
        return app_key(self._application, key)

    def _value(self, db: sqlite3.Connection, key: str, now: float) -> int:
        """The count of ``key`` for this application; while it has none, the legacy count."""
        for name in dict.fromkeys((self._key(key), key)):
            row = db.execute("SELECT value, expires FROM ledger WHERE key = ?", (name,)).fetchone()
            if row is not None and row[1] > now:
                return int(row[0])
        return 0

    async def release(self, keys: Sequence[str], count: int = 1) -> None:
        def release() -> None:
            with self._immediate() as db:
                for key in keys:
                    db.execute(
                        "UPDATE ledger SET value = MAX(0, value - ?) WHERE key = ?",
                        (count, self._key(key)),
                    )

        await self._run(release)

    async def seed(self, key: str, value: int, ttl: int) -> None:
        def seed() -> None:
            now = time.time()
            with self._immediate() as db:
                db.execute("DELETE FROM ledger WHERE expires <= ?", (now,))
                db.execute("DELETE FROM buckets WHERE expires <= ?", (now,))
                start = max(value, self._value(db, key, now))  # the legacy count, if larger
                db.execute(
                    "INSERT OR IGNORE INTO ledger VALUES (?, ?, ?)",
                    (self._key(key), start, now + ttl),
                )

        await self._run(seed)

    async def peek(self, keys: Sequence[str]) -> list[int]:
        def peek() -> list[int]:
            if self._db is None:
                self._open()
            assert self._db is not None
            now = time.time()
            return [self._value(self._db, key, now) for key in keys]

        return await self._run(peek)

    async def take(self, buckets: Sequence[Bucket], most: int = 1) -> tuple[int, float]:
        return await self._run(lambda: self._take(buckets, most))

    def _take(self, buckets: Sequence[Bucket], most: int) -> tuple[int, float]:
        now = time.time()
        with self._immediate() as db:
            levels = []
            for bucket in buckets:
                row = db.execute(
                    "SELECT tokens, stamp FROM buckets WHERE key = ? AND expires > ?",
                    (self._key(bucket.key), now),
                ).fetchone()
                levels.append(bucket.level(row, now))
            n, wait = taken(buckets, levels, most)
            if n == 0:
                return 0, wait
            for bucket, level in zip(buckets, levels, strict=True):
                db.execute(
                    "INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)",
                    (self._key(bucket.key), level - n, now, now + bucket.ttl),
                )
        return n, 0.0

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self._run(db.close)
        self._thread.shutdown(wait=True)
