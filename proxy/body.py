"""Replayable request bodies: what lets the proxy send a request again after a 401.

Two shapes, one interface (``in_memory``, ``chunks()``, ``size``, ``close()``):

- ``RequestBody.read``: the whole body first, in memory up to a bound, then in a temp file
  (as nginx buffers). Used for small bodies and for chunked uploads, which are forwarded
  with a ``Content-Length`` once complete.
- ``TeeBody``: a big body with a declared length goes upstream *while it arrives* and is
  copied to a temp file at the same time, so the common case (no 401) never waits for the
  whole body; the copy is only read for a replay.

Spool writes run on the event loop while they are fast (a page-cache copy, well under a
millisecond per chunk) and move to a thread, for the rest of that body, once two were not (the
disk pushing back; one alone may be the process being preempted on a busy machine). A thread
round-trip per batch cost ~15-20% more CPU per GiB, with ten times the wake-ups and several
times the page faults (issue #11, bench/upload_cpu.py), and on a pinned core the thread never
ran beside the loop anyway. nginx writes its temp files on its event loop too.

Temp files are unlinked as soon as they are created, so no path (crash, cancellation, client
disconnect) can leave one behind; closing the handle frees the disk space. When the spool
cannot be written (directory missing, unwritable, disk full), the request fails with 507
``insufficient_storage`` and the log names the directory and what to fix.

Two bounds against a slow or greedy client (issue 16):

- ``BodyDeadline``: a body that sends no byte for ``request_body_timeout`` while the proxy
  waits for one ends with 408 ``request_timeout`` (the connection closed, the spool file
  closed; a tee'd upload stops short of its ``Content-Length``, so upstream never has a whole
  request). One timer per body, re-armed lazily: a read costs one clock reading.
- ``SpoolSpace``: the bytes this process's spool files hold at once stay under
  ``spool_max_size``; a tee'd body takes its declared length before anything is read, a
  spilled one takes what it writes; past the bound, 507 ``insufficient_storage``.
"""

from __future__ import annotations

import asyncio
import errno
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

import structlog
from aiohttp import StreamReader

from proxy.errors import BodyTooLarge, InsufficientStorage, RequestTimeout

log = structlog.get_logger("proxy.body")

CHUNK = 256 * 1024
SPILL_BATCH = 1024 * 1024  # in a thread, the disk gets big batches
# A spool write on the loop slower than this stalled every other request; after SLOW_WRITES of
# them, that body's next writes go to a thread. A 750 KB chunk into the page cache: ~0.2 ms.
SLOW_WRITE = 0.01
SLOW_WRITES = 2

_FIXES = {
    errno.ENOENT: "it does not exist: create it (writable by the proxy) or change spool_dir",
    errno.ENOTDIR: "it is not a directory: change spool_dir",
    errno.EACCES: "the proxy may not write there: fix its permissions or change spool_dir",
    errno.EPERM: "the proxy may not write there: fix its permissions or change spool_dir",
    errno.EROFS: "it is on a read-only file system: change spool_dir",
    errno.ENOSPC: "its file system is full: free space, give it more, or lower max_body_size",
    errno.EDQUOT: "the disk quota is used up: raise it or lower max_body_size",
    errno.EFBIG: "a file size limit (ulimit -f) was hit: raise it or lower max_body_size",
}


class SpoolSpace:
    """The bytes this process's spool files may hold at once (``spool_max_size``)."""

    __slots__ = ("_warned", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._warned = False

    def fits(self, size: int) -> bool:
        return self.used + size <= self.limit

    def take(self, size: int) -> None:
        """Take ``size`` bytes, or raise 507 ``insufficient_storage`` (nothing taken)."""
        if self.used + size > self.limit:
            raise self.full(size)
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size
        if self.used < self.limit // 2:
            self._warned = False

    def full(self, size: int) -> InsufficientStorage:
        if not self._warned:  # once until the spool is half empty again
            self._warned = True
            log.warning(
                "spool_max_size reached: refusing request bodies that do not fit",
                spool_max_size=self.limit,
                in_use=self.used,
                refused=size,
            )
        return InsufficientStorage(
            "The proxy's spool for request bodies is full (spool_max_size): try again later."
        )


class _Stalled(TimeoutError):
    """What the client's stream raises after the deadline. A ``TimeoutError``: aiohttp's
    lingering read of an unfinished body, after the 408 went out, takes it as one and closes
    the connection (any other exception there is logged as an unhandled error)."""


class BodyDeadline:
    """Ends a request body that sends no byte for ``timeout`` seconds while it is awaited.

    The stream gets an exception, so whichever read is waiting (the spooling read, the tee's
    send upstream, the tee's completion) raises ``RequestTimeout``. Time spent not reading
    (upstream pushing back on the tee) is not the client's: the timer then re-arms.
    """

    __slots__ = ("_loop", "_stream", "_timeout", "_timer", "_waiting_since")

    def __init__(self, stream: StreamReader, timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._waiting_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        if not stream.is_eof():  # a body that came whole with its head needs no timer
            self._timer = self._loop.call_at(self._loop.time() + timeout, self._check)

    async def read(self) -> bytes:
        """The next chunk (``b""`` at the end), as ``StreamReader.readany``."""
        self._waiting_since = self._loop.time()
        try:
            return await self._stream.readany()
        except _Stalled as stalled:
            # aiohttp's waiter keeps it, and its traceback holds that waiter and this frame.
            stalled.__traceback__ = None
            raise RequestTimeout(
                f"No byte of the request body arrived for {self._timeout:g} seconds."
            ) from None
        finally:
            self._waiting_since = None

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        since, now = self._waiting_since, self._loop.time()
        if since is not None and now - since >= self._timeout:
            self._timer = None
            log.info("no request body byte within request_body_timeout; ending the request")
            self._stream.set_exception(_Stalled())
            return
        start = since if since is not None else now
        self._timer = self._loop.call_at(start + self._timeout, self._check)


DEFAULT_BODY_TIMEOUT = 30.0  # request_body_timeout's default, for readers without settings


async def read_up_to(stream: StreamReader, limit: int, body_timeout: float) -> bytes:
    """A small body whole (a form), or its first ``limit`` bytes or a little more when it is
    larger (the caller refuses it); ``RequestTimeout`` after ``body_timeout`` seconds without
    a byte."""
    deadline = BodyDeadline(stream, body_timeout)
    parts: list[bytes] = []
    size = 0
    try:
        while size < limit and (chunk := await deadline.read()):
            parts.append(chunk)
            size += len(chunk)
    finally:
        deadline.stop()
    return b"".join(parts)


def too_large(size: int, limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"The request body ({size} bytes or more) exceeds the limit of {limit} bytes."
    )


def spool_failure(exc: OSError, spool_dir: Path | None) -> InsufficientStorage:
    """Log what broke and how to fix it; the client gets a sentence without local paths."""
    where = str(spool_dir) if spool_dir is not None else tempfile.gettempdir()
    fix = _FIXES.get(exc.errno or 0, "check the directory")
    log.error(
        "cannot spool the request body",
        spool_dir=where,
        error=exc.strerror or type(exc).__name__,
        fix=f"spool_dir {where}: {fix}",
    )
    return InsufficientStorage(
        "The proxy cannot store this request body for a possible replay (its spool "
        "directory is missing, unwritable or full); bodies up to body_memory_limit still pass."
    )


class RequestBody:
    """The bytes of one request body, readable as many times as the request is sent."""

    __slots__ = (
        "_claimed",
        "_file",
        "_memory",
        "_memory_size",
        "_space",
        "_whole",
        "size",
        "spilled",
    )

    # A body read in full never fails after the fact; TeeBody overrides this per instance.
    failure: BaseException | None = None

    def __init__(self) -> None:
        # Kept as the chunks came and joined once when sent: one copy of the body, where a
        # growing bytearray and a bytes() per send made three (32 concurrent 1 MiB uploads
        # peaked at 133 MiB RSS, issue 11).
        self._memory: list[bytes] = []
        self._memory_size = 0
        self._whole: bytes | None = None
        self._file: IO[bytes] | None = None
        self._space: SpoolSpace | None = None
        self._claimed = 0  # bytes of the spool space this body holds
        self.spilled = False
        self.size = 0

    @classmethod
    async def read(
        cls,
        stream: StreamReader,
        *,
        memory_limit: int,
        max_size: int,
        spool_dir: Path | None,
        observe: Callable[[bytes], None] | None = None,
        body_timeout: float | None = None,
        space: SpoolSpace | None = None,
    ) -> RequestBody:
        """Read ``stream`` to the end; ``BodyTooLarge`` past ``max_size`` bytes,
        ``InsufficientStorage`` when a body that must spill cannot be written or would pass
        ``space``, ``RequestTimeout`` after ``body_timeout`` seconds without a byte. ``observe``
        sees every chunk as it is spooled (the cache key's hash: no second read)."""
        body = cls()
        body._space = space
        deadline = BodyDeadline(stream, body_timeout) if body_timeout is not None else None
        next_chunk = deadline.read if deadline is not None else stream.readany
        slow_writes = 0  # spool writes go on the loop until SLOW_WRITES were slow,
        pending = bytearray()  # then bytes not yet written: the thread gets big batches
        try:
            while chunk := await next_chunk():
                body.size += len(chunk)
                if body.size > max_size:
                    raise too_large(body.size, max_size)
                if observe is not None:
                    observe(chunk)
                if body._file is None:
                    body._memory.append(chunk)
                    body._memory_size += len(chunk)
                    if body._memory_size > memory_limit:
                        body._claim(body._memory_size)
                        body._file = await asyncio.to_thread(_open_spool, spool_dir)
                        body.spilled = True
                        held = b"".join(body._memory)
                        body._memory, body._memory_size = [], 0
                        slow_writes += _write_timed(body._file, held, slow_writes)
                    continue
                body._claim(len(chunk))
                if slow_writes < SLOW_WRITES:
                    slow_writes += _write_timed(body._file, chunk, slow_writes)
                    continue
                pending += chunk
                if len(pending) >= SPILL_BATCH:
                    await asyncio.to_thread(body._file.write, pending)
                    pending = bytearray()
            if body._file is not None and pending:
                await asyncio.to_thread(body._file.write, pending)
        except OSError as exc:
            body.close()
            raise spool_failure(exc, spool_dir) from None
        except BaseException:
            body.close()
            raise
        finally:
            if deadline is not None:
                deadline.stop()
        return body

    def _claim(self, size: int) -> None:
        """Count ``size`` more spooled bytes against the process's spool space (507 past it)."""
        if self._space is not None:
            self._space.take(size)
            self._claimed += size

    def _give_back_space(self) -> None:
        if self._space is not None and self._claimed:
            self._space.give_back(self._claimed)
            self._claimed = 0

    @property
    def in_memory(self) -> bytes | None:
        """The whole body when it fits in memory (the fast path), else None."""
        if self.spilled:
            return None
        whole = self._whole
        if whole is None:  # joined once, for the send and a replay alike
            whole = self._whole = b"".join(self._memory)
            self._memory = [whole]
        return whole

    async def chunks(self) -> AsyncIterator[bytes]:
        """The spilled body from its start, in chunks, off the event loop."""
        spool = self._file
        if spool is None:
            raise RuntimeError("the spilled body was closed or never spilled")
        await asyncio.to_thread(spool.seek, 0)
        while chunk := await asyncio.to_thread(spool.read, CHUNK):
            yield chunk

    def close(self) -> None:
        self._give_back_space()
        if self._file is not None:
            self._file.close()
            self._file = None


class TeeBody(RequestBody):
    """A body sent upstream as it arrives, copied to the spool file on the way for a replay.

    ``stream()`` feeds the first send. If that send ends before the body did (a 401 or a
    stale connection while the client is still uploading), ``finish()`` reads the rest into
    the copy; ``chunks()`` then replays the whole body. Each chunk is written to the copy
    before it is handed on, on the loop while writes are fast; after SLOW_WRITES slow ones, in a
    thread, one batch while the next fills. Memory stays bounded: one client chunk on the loop,
    two batches plus one chunk in a thread.

    If the copy cannot be written, ``stream()`` raises ``InsufficientStorage``: aiohttp then
    closes the upstream connection short of the declared ``Content-Length``, so upstream never
    receives a complete request. The same holds for a client that goes away mid-upload.
    """

    __slots__ = (
        "_complete",
        "_deadline",
        "_idle",
        "_loop",
        "_next_chunk",
        "_pending",
        "_pending_size",
        "_slow_writes",
        "_spool_dir",
        "_stream",
        "_writing",
        "failure",
    )

    def __init__(self, stream: StreamReader, spool_dir: Path | None) -> None:
        super().__init__()
        self.spilled = True
        self.failure = None
        self._stream = stream
        self._spool_dir = spool_dir
        # Chunks not yet written, kept as they came (no copy): the writer thread gets the list.
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._writing: asyncio.Future[None] | None = None
        self._complete = False
        self._slow_writes = 0  # spool writes go on the loop until SLOW_WRITES were slow
        self._idle = asyncio.Event()  # set while stream() does not hold the client stream
        self._idle.set()
        self._loop = asyncio.get_running_loop()
        self._deadline: BodyDeadline | None = None
        self._next_chunk = stream.readany

    @classmethod
    async def open(
        cls,
        stream: StreamReader,
        *,
        spool_dir: Path | None,
        size: int = 0,
        body_timeout: float | None = None,
        space: SpoolSpace | None = None,
    ) -> TeeBody:
        """Take ``size`` (the declared length) of ``space`` and open the spool file before
        anything is read or goes upstream: a full spool, a missing or unwritable
        ``spool_dir`` fail here, with nothing sent. ``body_timeout``: see ``BodyDeadline``."""
        body = cls(stream, spool_dir)
        body._space = space
        body._claim(size)
        try:
            body._file = await asyncio.to_thread(_open_spool, spool_dir)
        except OSError as exc:
            body.close()
            raise spool_failure(exc, spool_dir) from None
        except BaseException:
            body.close()
            raise
        if body_timeout is not None:
            body._deadline = BodyDeadline(stream, body_timeout)
            body._next_chunk = body._deadline.read
        return body

    async def stream(self) -> AsyncIterator[bytes]:
        """The first send's body: each client chunk as it arrives, once it is in the copy."""
        self._idle.clear()
        try:
            while chunk := await self._next_chunk():
                if self._take(chunk):
                    await self._flush()
                self._idle.set()
                yield chunk
                self._idle.clear()
            self._stop_deadline()
            await self._settle()
            self._complete = True
        except Exception as exc:  # the handler re-raises it: 507, 413, or the client's error
            self.failure = exc
            raise
        finally:
            self._idle.set()

    async def finish(self) -> None:
        """Complete the copy after the first send stopped early; then ``chunks()`` replays."""
        await self._idle.wait()  # the cancelled first send has let go of the client stream
        if self.failure is not None:
            raise self.failure
        if self._complete:
            return
        while chunk := await self._next_chunk():
            if self._take(chunk):
                await self._flush()
        self._stop_deadline()
        await self._settle()
        self._complete = True

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.stop()
            self._deadline = None

    def _take(self, chunk: bytes) -> bool:
        """Add ``chunk`` to the copy; True when a batch is ready for the thread."""
        self.size += len(chunk)
        if self._slow_writes < SLOW_WRITES:
            assert self._file is not None
            try:
                self._slow_writes += _write_timed(self._file, chunk, self._slow_writes)
            except OSError as exc:
                raise spool_failure(exc, self._spool_dir) from None
            return False
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        return self._pending_size >= SPILL_BATCH

    async def _flush(self) -> None:
        """Wait for the previous batch (the disk sets the pace, memory stays bounded), then
        start writing this one."""
        await self._wait()
        self._start_write()

    def _start_write(self) -> None:
        assert self._file is not None
        batch, self._pending, self._pending_size = self._pending, [], 0
        self._writing = self._loop.run_in_executor(None, self._file.writelines, batch)

    async def _wait(self) -> None:
        """Wait for the write in flight; shielded, so a cancelled send never loses track of
        whether a batch reached the file."""
        writing = self._writing
        if writing is None:
            return
        try:
            await asyncio.shield(writing)
        except OSError as exc:
            self._writing = None
            raise spool_failure(exc, self._spool_dir) from None
        self._writing = None

    async def _settle(self) -> None:
        """Everything taken so far is in the file."""
        while self._writing is not None or self._pending:
            await self._wait()
            if self._pending:
                self._start_write()

    def close(self) -> None:
        # The failure's traceback holds stream()'s frame (which holds this body, the client's
        # stream and its buffers) and aiohttp's body writer, which keeps the failure as the
        # cause of its own error: cycles only a full collection would free. Cut both here.
        if self.failure is not None:
            self.failure.__traceback__ = None
            self.failure = None
        self._stop_deadline()
        self._give_back_space()
        writing, spool = self._writing, self._file
        self._file = None
        if spool is None:
            return
        if writing is not None and not writing.done():
            # A thread still writes to it: close the file when that write is over.
            writing.add_done_callback(lambda done: _close_after(done, spool))
            return
        if writing is not None and not writing.cancelled():
            writing.exception()  # retrieved: a late write error is no news
        spool.close()


def _close_after(done: asyncio.Future[None], spool: IO[bytes]) -> None:
    if not done.cancelled():
        done.exception()
    spool.close()


def _write_timed(spool: IO[bytes], data: bytes | bytearray, slow_before: int) -> int:
    """Write ``data`` on the loop; 1 when that was slow (the caller counts them), else 0."""
    started = time.perf_counter()
    spool.write(data)
    took = time.perf_counter() - started
    if took <= SLOW_WRITE:
        return 0
    last = slow_before + 1 >= SLOW_WRITES
    log.info(
        "slow spool write",
        ms=round(took * 1e3, 1),
        then="the rest of this body is copied in a thread" if last else "still on the loop",
    )
    return 1


def _open_spool(spool_dir: Path | None) -> IO[bytes]:
    # TemporaryFile is unlinked at once on POSIX: nothing to clean up, whatever happens.
    return tempfile.TemporaryFile(dir=spool_dir, prefix="aspose-proxy-body-")
