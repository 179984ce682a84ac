"""The disk store: one file per entry, written atomically, evicted least recently used.

An entry file is the body as received, then the metadata as JSON, then the metadata's length
in 8 bytes (a trailer: the body is written as it streams, from offset 0). It is written to a
temporary file, ``fsync``-ed, then renamed into place (POSIX rename is atomic): a
crash leaves a stray temporary file (removed at the next start), never a visible entry with a
short body. Entries survive restarts. The LRU order is the files' modification time (touched
on every hit) and an in-memory index rebuilt from it at start; ``cache_max_size`` counts whole
files (metadata included). Several processes sharing the directory each keep their own index,
so the bound holds per process (docs/cache.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import structlog

from proxy.cache.store import CHUNK, CorruptEntry, EntryMeta, Stats

log = structlog.get_logger("proxy.cache")

PREFIX_BYTES = 8
MAX_META = 64 * 1024
TEMP_DIR = "tmp"


def _entry_path(root: Path, key: str) -> Path:
    return root / key[:2] / key


def _scan(root: Path) -> list[tuple[float, str, int]]:
    """(mtime, key, size) of every entry; stray temporary files are removed."""
    found = []
    temp = root / TEMP_DIR
    if temp.is_dir():
        for stray in temp.iterdir():
            with contextlib.suppress(OSError):
                stray.unlink()
    for shard in root.iterdir() if root.is_dir() else ():
        if shard.name == TEMP_DIR or not shard.is_dir():
            continue
        for entry in os.scandir(shard):
            with contextlib.suppress(OSError):
                info = entry.stat()
                found.append((info.st_mtime, entry.name, info.st_size))
    found.sort()
    return found


def _read_meta(path: Path) -> tuple[BinaryIO, EntryMeta, int] | None:
    """The open file positioned at the body's start, its metadata and the bytes the file
    holds for the body; None when absent or unreadable."""
    try:
        handle = path.open("rb")
    except OSError:
        return None
    try:
        size = os.fstat(handle.fileno()).st_size
        if size < PREFIX_BYTES:
            raise ValueError("too short")
        handle.seek(size - PREFIX_BYTES)
        length = int.from_bytes(handle.read(PREFIX_BYTES), "big")
        if not 0 < length <= min(MAX_META, size - PREFIX_BYTES):
            raise ValueError("bad metadata length")
        handle.seek(size - PREFIX_BYTES - length)
        meta = EntryMeta.from_json(handle.read(length))
        handle.seek(0)
        return handle, meta, size - PREFIX_BYTES - length
    except (OSError, ValueError, KeyError, TypeError):
        handle.close()
        return None


class DiskHit:
    """A found entry on disk; its body is read in a thread, chunk by chunk, hash checked."""

    def __init__(self, store: DiskStore, key: str, handle: BinaryIO, meta: EntryMeta) -> None:
        self.meta = meta
        self._store = store
        self._key = key
        self._handle = handle

    async def body(self) -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        left = self.meta.size
        while left > 0:
            chunk = await asyncio.to_thread(self._handle.read, min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            digest.update(chunk)
            if left == 0 and digest.hexdigest() != self.meta.sha256:
                break  # the last chunk is held back: the client never gets a bad end
            yield chunk
        if left != 0 or digest.hexdigest() != self.meta.sha256:
            await self._store.remove(self._key)
            raise CorruptEntry(f"cache entry {self._key[:12]} does not match its hash")

    async def close(self) -> None:
        await asyncio.to_thread(self._handle.close)


class DiskWriter:
    """A new entry in a temporary file; ``commit`` fsyncs and renames it into place."""

    def __init__(self, store: DiskStore, key: str, handle: BinaryIO, temp: Path) -> None:
        self._store = store
        self._key = key
        self._handle = handle
        self._temp = temp
        self._digest = hashlib.sha256()
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.size += len(chunk)
        await asyncio.to_thread(self._handle.write, chunk)

    async def commit(self, meta: EntryMeta) -> None:
        if meta.size != self.size or meta.sha256 != self._digest.hexdigest():
            await self.abort()
            raise ValueError("the entry's metadata does not describe what was written")
        head = meta.to_json()
        final = _entry_path(self._store.root, self._key)

        def finish() -> int:
            handle = self._handle
            handle.write(head + len(head).to_bytes(PREFIX_BYTES, "big"))
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            final.parent.mkdir(exist_ok=True)
            os.replace(self._temp, final)
            return final.stat().st_size

        try:
            size = await asyncio.to_thread(finish)
        except OSError:
            await self.abort()
            raise
        await self._store.added(self._key, size)

    async def abort(self) -> None:
        def drop() -> None:
            self._handle.close()
            with contextlib.suppress(OSError):
                self._temp.unlink()

        await asyncio.to_thread(drop)


class DiskStore:
    """Entries under ``root``; ``ttl`` seconds, ``max_size`` bytes in all."""

    def __init__(self, root: Path, *, ttl: float, max_size: int) -> None:
        self.root = root
        self.description = f"file://{root}"
        self.ttl = ttl
        self.max_size = max_size
        self.evictions = 0
        self._index: OrderedDict[str, int] = OrderedDict()  # key -> file size, oldest first
        self._bytes = 0

    async def open(self) -> None:
        await asyncio.to_thread((self.root / TEMP_DIR).mkdir, parents=True, exist_ok=True)
        self._index.clear()
        self._bytes = 0
        for _, key, size in await asyncio.to_thread(_scan, self.root):
            self._index[key] = size
            self._bytes += size
        await self._evict()

    async def close(self) -> None:
        return None

    async def get(self, key: str, now: float) -> DiskHit | None:
        path = _entry_path(self.root, key)
        found = await asyncio.to_thread(_read_meta, path)
        if found is None:
            self._forget(key)
            return None
        handle, meta, body_size = found
        if body_size != meta.size or now - meta.stored_at > self.ttl or meta.stored_at > now + 60:
            await asyncio.to_thread(handle.close)
            if body_size != meta.size:
                log.warning("cache entry has the wrong length; removed", key=key[:12])
            await self.remove(key)
            return None
        if key in self._index:
            self._index.move_to_end(key)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(os.utime, path)  # the LRU order survives a restart
        return DiskHit(self, key, handle, meta)

    async def writer(self, key: str) -> DiskWriter:
        temp = self.root / TEMP_DIR / f"{key}.{secrets.token_hex(4)}"

        def create() -> BinaryIO:
            temp.parent.mkdir(parents=True, exist_ok=True)
            return temp.open("wb")

        handle = await asyncio.to_thread(create)
        return DiskWriter(self, key, handle, temp)

    async def added(self, key: str, size: int) -> None:
        self._bytes -= self._index.pop(key, 0)
        self._index[key] = size
        self._bytes += size
        await self._evict()

    async def _evict(self) -> None:
        while self._bytes > self.max_size and self._index:
            key, size = self._index.popitem(last=False)
            self._bytes -= size
            self.evictions += 1
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_entry_path(self.root, key).unlink)

    def _forget(self, key: str) -> None:
        self._bytes -= self._index.pop(key, 0)

    async def remove(self, key: str) -> None:
        self._forget(key)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_entry_path(self.root, key).unlink)

    async def stats(self) -> Stats:
        return Stats(len(self._index), self._bytes)

    async def clear(self) -> int:
        def wipe() -> int:
            removed = 0
            for _, key, _ in _scan(self.root):
                with contextlib.suppress(OSError):
                    _entry_path(self.root, key).unlink()
                    removed += 1
            return removed

        removed = await asyncio.to_thread(wipe)
        self._index.clear()
        self._bytes = 0
        return removed
