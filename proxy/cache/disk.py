"""The disk store: one file per entry, written atomically, evicted least recently used.

An entry file is the body as received, then the metadata as JSON, then the metadata's length
in 8 bytes (a trailer: the body is written as it streams, from offset 0). It is written to a
temporary file, ``fsync``-ed, then renamed into place (POSIX rename is atomic): a
crash leaves a stray temporary file (removed at the next start), never a visible entry with a
short body. Entries survive restarts. The LRU order is the files' modification time (set on
every hit); the size bound, shared by every process on the directory, is ``disk_space``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import structlog
from aiohttp import web

from proxy.cache import disk_space
from proxy.cache.disk_space import TEMP_DIR, entry_path
from proxy.cache.store import CorruptEntry, EntryMeta, Stats, body_digest

log = structlog.get_logger("proxy.cache")

PREFIX_BYTES = 8
READ_CHUNK = 1024 * 1024  # a hit's reads: fewer thread round trips than CHUNK
SENDFILE_MIN = 256 * 1024  # smaller bodies are streamed (sendfile's set-up costs more)
TAIL = 64 * 1024  # the bytes held back until the hash matched
MAX_META = 64 * 1024


def _touch(path: Path) -> None:
    """Set the LRU order: the modification time from the precise clock (the kernel stamps
    files from a coarse one, a few ms, which tied entries written or hit close together)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _remove_strays(root: Path) -> None:
    """Temporary files left by a crash mid-write: those nobody holds the ``flock`` of (a
    writer holds its file's until it is renamed into place; a crash releases it), so a
    process starting on a shared directory leaves another's write alone."""
    temp = root / TEMP_DIR
    if temp.is_dir():
        for stray in temp.iterdir():
            with contextlib.suppress(OSError), stray.open("rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: being written
                stray.unlink()


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
        """The body in READ_CHUNK pieces, each read and hashed in a thread while the one
        before it is sent; the last is held back until the hash matched."""
        digest = body_digest()
        handle = self._handle

        def read(size: int) -> bytes:
            chunk = handle.read(size)
            digest.update(chunk)
            return chunk

        left = self.meta.size
        pending = asyncio.ensure_future(asyncio.to_thread(read, min(READ_CHUNK, left)))
        try:
            while left > 0:
                chunk = await pending
                if not chunk:
                    break
                left -= len(chunk)
                if left > 0:
                    pending = asyncio.ensure_future(asyncio.to_thread(read, min(READ_CHUNK, left)))
                elif digest.hexdigest() != self.meta.digest:
                    break  # the last chunk is held back: the client never gets a bad end
                yield chunk
        finally:
            if not pending.done():  # the answer stopped early: the thread finishes its read
                with contextlib.suppress(Exception):
                    await pending  # before the file is closed
        if left != 0 or digest.hexdigest() != self.meta.digest:
            await self._store.remove(self._key)
            raise CorruptEntry(f"cache entry {self._key[:12]} does not match its hash")

    async def send(self, request: web.Request, response: web.StreamResponse) -> None:
        """Write the body to the prepared ``response``: all but its last TAIL bytes with
        ``sendfile`` (no copy through Python) while a thread reads the file and hashes it;
        the tail only once the hash matched (else ``CorruptEntry`` and the entry is removed,
        and the client never gets a complete-looking answer). Small bodies are streamed."""
        size = self.meta.size
        transport = request.transport
        if size <= SENDFILE_MIN or transport is None:
            async for chunk in self.body():
                await response.write(chunk)
            return
        fd = self._handle.fileno()
        head = size - TAIL
        checking = asyncio.ensure_future(self._verify(fd))
        try:
            await asyncio.get_running_loop().sendfile(transport, self._handle, 0, head)
        except NotImplementedError:  # a transport without sendfile (TLS): plain writes
            await _write_range(response, fd, 0, head)
        finally:
            intact = await checking  # the threads are done with the file before it closes
        tail = await asyncio.to_thread(os.pread, fd, TAIL, head)
        if not intact or len(tail) != TAIL:
            await self._store.remove(self._key)
            raise CorruptEntry(f"cache entry {self._key[:12]} does not match its hash")
        await response.write(tail)

    async def _verify(self, fd: int) -> bool:
        """Does the file hold the recorded body? Hashed in one thread while sendfile runs:
        with BLAKE3 the hash of 50 MiB (10 ms of CPU) finishes before the send does; with
        SHA-256, even split over two threads, a big hit waited on it (bench/cache.py)."""
        meta = self.meta
        return await asyncio.to_thread(_digest_of, fd, meta.size) == meta.digest

    async def close(self) -> None:
        # Closed in place, not in a thread: closing a file we only read does not block, and an
        # await here, after the answer is complete, let a client that hangs up at once (curl)
        # cancel the handler, which logged a complete hit as 499 and skipped its count.
        self._handle.close()


def _digest_of(fd: int, count: int) -> str:
    """The body digest of the first ``count`` bytes of ``fd``, read into one reused buffer
    (``os.preadv``: the file position, which sendfile moves, is not touched; a fresh 1 MiB
    bytes per read cost a page fault per 4 KiB)."""
    digest = body_digest()
    view = memoryview(bytearray(READ_CHUNK))
    offset = 0
    while offset < count:
        got = os.preadv(fd, [view[: min(READ_CHUNK, count - offset)]], offset)
        if not got:
            return ""
        digest.update(view[:got])
        offset += got
    return digest.hexdigest()


async def _write_range(response: web.StreamResponse, fd: int, offset: int, count: int) -> None:
    end = offset + count
    while offset < end:
        chunk = await asyncio.to_thread(os.pread, fd, min(READ_CHUNK, end - offset), offset)
        if not chunk:
            return
        offset += len(chunk)
        await response.write(chunk)


class DiskWriter:
    """A new entry in a temporary file; ``commit`` fsyncs and renames it into place."""

    def __init__(self, store: DiskStore, key: str, handle: BinaryIO, temp: Path) -> None:
        self._store = store
        self._key = key
        self._handle = handle
        self._temp = temp
        self._digest = body_digest()
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)

        def write_and_hash() -> None:  # off the loop, both (blake3 releases the GIL)
            self._digest.update(chunk)
            self._handle.write(chunk)

        await asyncio.to_thread(write_and_hash)

    async def commit(self, status: int, headers: tuple[tuple[str, str], ...]) -> None:
        meta = EntryMeta(status, headers, self.size, self._digest.hexdigest(), time.time())
        head = meta.to_json()
        store = self._store

        def finish() -> disk_space.Usage:
            handle = self._handle
            try:
                handle.write(head + len(head).to_bytes(PREFIX_BYTES, "big"))
                handle.flush()
                os.fsync(handle.fileno())
                _touch(self._temp)
                return disk_space.install(store.root, self._temp, self._key, store.max_size)
            finally:
                handle.close()  # its flock held until renamed: never taken for a stray

        try:
            usage = await asyncio.to_thread(finish)
        except OSError:
            await self.abort()
            raise
        store.counted_as(usage)

    async def abort(self) -> None:
        def drop() -> None:
            self._handle.close()
            with contextlib.suppress(OSError):
                self._temp.unlink()

        await asyncio.to_thread(drop)


class DiskStore:
    """Entries under ``root``; ``ttl`` seconds, ``max_size`` bytes in all (every process)."""

    def __init__(self, root: Path, *, ttl: float, max_size: int) -> None:
        self.root = root
        self.description = f"file://{root}"
        self.ttl = ttl
        self.max_size = max_size
        self.evictions = 0
        self._usage = disk_space.Usage(0, 0)  # as of this process's last change or look

    async def open(self) -> None:
        await asyncio.to_thread((self.root / TEMP_DIR).mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(_remove_strays, self.root)
        self.counted_as(await asyncio.to_thread(disk_space.rescan, self.root, self.max_size))

    async def close(self) -> None:
        return None

    async def get(self, key: str, now: float) -> DiskHit | None:
        path = entry_path(self.root, key)
        found = await asyncio.to_thread(_read_meta, path)
        if found is None:
            return None
        handle, meta, body_size = found
        if body_size != meta.size or now - meta.stored_at > self.ttl or meta.stored_at > now + 60:
            await asyncio.to_thread(handle.close)
            if body_size != meta.size:
                log.warning("cache entry has the wrong length; removed", key=key[:12])
            await self.remove(key)
            return None
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_touch, path)  # the LRU order survives a restart
        return DiskHit(self, key, handle, meta)

    async def writer(self, key: str) -> DiskWriter:
        temp = self.root / TEMP_DIR / f"{key}.{secrets.token_hex(4)}"

        def create() -> BinaryIO:
            temp.parent.mkdir(parents=True, exist_ok=True)
            handle = temp.open("wb")
            fcntl.flock(handle, fcntl.LOCK_EX)  # "being written" to _remove_strays
            return handle

        handle = await asyncio.to_thread(create)
        return DiskWriter(self, key, handle, temp)

    def counted_as(self, usage: disk_space.Usage) -> None:
        self._usage = usage
        self.evictions += usage.evicted

    async def remove(self, key: str) -> None:
        with contextlib.suppress(OSError):
            usage = await asyncio.to_thread(disk_space.remove, self.root, key, self.max_size)
            self.counted_as(usage)

    async def stats(self) -> Stats:
        self.counted_as(await asyncio.to_thread(disk_space.current, self.root, self.max_size))
        return self.counted()

    def counted(self) -> Stats:
        return Stats(self._usage.entries, self._usage.bytes)

    async def clear(self) -> int:
        removed = await asyncio.to_thread(disk_space.clear, self.root, self.max_size)
        self._usage = disk_space.Usage(0, 0)
        return removed
