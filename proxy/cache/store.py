"""The one interface of the cache's stores (disk, Redis), and what an entry is.

An entry is a complete 200 answer: status, the response headers that matter to the client,
the body bytes as received, their length and SHA-256, and when it was stored. A store checks
the length before it serves an entry (wrong: a miss, the entry removed) and the hash while
the body streams (wrong: ``CorruptEntry`` mid-body, the entry removed), so a crash or a
damaged file never serves a wrong body.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

CHUNK = 256 * 1024
SEGMENT = 4 * 1024 * 1024


class Segments:
    """SHA-256 of the whole body and of each SEGMENT bytes of it, fed in any chunk sizes."""

    __slots__ = ("_current", "_filled", "digest", "done")

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self._current = hashlib.sha256()
        self._filled = 0
        self.done: list[str] = []

    def update(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        view = memoryview(chunk)
        while view:
            take = min(len(view), SEGMENT - self._filled)
            self._current.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == SEGMENT:
                self.done.append(self._current.hexdigest())
                self._current, self._filled = hashlib.sha256(), 0

    def segments(self) -> tuple[str, ...]:
        tail = [self._current.hexdigest()] if self._filled else []
        return (*self.done, *tail)


class CorruptEntry(Exception):
    """An entry's body did not match its recorded hash; the entry has been removed."""


@dataclass(frozen=True, slots=True)
class EntryMeta:
    status: int
    headers: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    stored_at: float
    # SHA-256 of each SEGMENT bytes of the body (disk): verified by two threads at once.
    segments: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "status": self.status,
                "headers": [list(pair) for pair in self.headers],
                "size": self.size,
                "sha256": self.sha256,
                "stored_at": self.stored_at,
                "segments": list(self.segments),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> EntryMeta:
        data = json.loads(raw)
        return cls(
            int(data["status"]),
            tuple((str(k), str(v)) for k, v in data["headers"]),
            int(data["size"]),
            str(data["sha256"]),
            float(data["stored_at"]),
            tuple(str(d) for d in data.get("segments", ())),
        )


@dataclass(frozen=True, slots=True)
class Stats:
    entries: int
    bytes: int


class Hit(Protocol):
    """A found entry: its metadata now, its body streamed (hash checked) once."""

    meta: EntryMeta

    def body(self) -> AsyncIterator[bytes]: ...

    async def send(self, request: web.Request, response: web.StreamResponse) -> None:
        """Write the body to the prepared ``response``; ``CorruptEntry`` on a bad hash
        (before the last bytes are sent)."""

    async def close(self) -> None: ...


class EntryWriter(Protocol):
    """A new entry, written as the answer streams; visible to readers only after ``commit``,
    which records the status and headers with the length and SHA-256 of what was written."""

    size: int

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self, status: int, headers: tuple[tuple[str, str], ...]) -> None: ...

    async def abort(self) -> None: ...


class CacheStore(Protocol):
    description: str
    evictions: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, key: str, now: float) -> Hit | None:
        """The entry, or None (absent, expired, or the wrong length: then removed)."""

    async def writer(self, key: str) -> EntryWriter: ...

    async def stats(self) -> Stats: ...

    def counted(self) -> Stats | None:
        """Entries and bytes when the store knows them without asking anyone (disk: its
        index), else None (Redis: ``stats()`` scans, so it runs every 30 s)."""

    async def clear(self) -> int:
        """Remove every entry; how many there were."""
