"""A replayable request body: buffered in memory up to a bound, then spilled to a temp file.

Buffering first (as nginx does by default) is what lets the proxy replay a request after a 401.
The temp file is unlinked as soon as it is created, so no path (crash, cancellation, client
disconnect) can leave it behind; closing the handle frees the disk space.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from aiohttp import StreamReader

from proxy.errors import BodyTooLarge

CHUNK = 256 * 1024
SPILL_BATCH = 1024 * 1024


def too_large(size: int, limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"The request body ({size} bytes or more) exceeds the limit of {limit} bytes."
    )


class RequestBody:
    """The bytes of one request body, readable as many times as the request is sent."""

    __slots__ = ("_file", "_memory", "size", "spilled")

    def __init__(self) -> None:
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
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
    ) -> RequestBody:
        """Read ``stream`` to the end; ``BodyTooLarge`` past ``max_size`` bytes."""
        body = cls()
        pending = bytearray()  # spilled bytes not yet written: disk writes go in big batches
        try:
            while chunk := await stream.readany():
                body.size += len(chunk)
                if body.size > max_size:
                    raise too_large(body.size, max_size)
                if body._file is None:
                    body._memory += chunk
                    if len(body._memory) > memory_limit:
                        body._file = await asyncio.to_thread(_open_spool, spool_dir)
                        body.spilled = True
                        pending, body._memory = body._memory, bytearray()
                    continue
                pending += chunk
                if len(pending) >= SPILL_BATCH:
                    await asyncio.to_thread(body._file.write, pending)
                    pending = bytearray()
            if body._file is not None and pending:
                await asyncio.to_thread(body._file.write, pending)
        except BaseException:
            body.close()
            raise
        return body

    @property
    def in_memory(self) -> bytes | None:
        """The whole body when it fits in memory (the fast path), else None."""
        return None if self.spilled else bytes(self._memory)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The spilled body from its start, in chunks, off the event loop."""
        spool = self._file
        if spool is None:
            raise RuntimeError("the spilled body was closed or never spilled")
        await asyncio.to_thread(spool.seek, 0)
        while chunk := await asyncio.to_thread(spool.read, CHUNK):
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _open_spool(spool_dir: Path | None) -> IO[bytes]:
    # TemporaryFile is unlinked at once on POSIX: nothing to clean up, whatever happens.
    return tempfile.TemporaryFile(dir=spool_dir, prefix="aspose-proxy-body-")
