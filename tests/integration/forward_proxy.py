"""A small forward proxy on loopback that records what it saw: ``CONNECT host:port`` tunnels
(for https) and plain-HTTP requests in absolute form, piped on unchanged.

Only what a test needs: one request head read per connection, then bytes copied both ways
(a kept-alive plain-HTTP connection's later requests are recorded from the copied bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.integration.rawhttp import serve_on_loopback

# A request line in absolute form, as a client talking to a forward proxy sends it (not
# anchored: on a kept-alive connection it follows the previous request's body directly).
_ABSOLUTE_FORM = re.compile(
    rb"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (http://\S+) HTTP/1\.[01]\r\n"
)


@dataclass
class ForwardProxy:
    url: str = ""
    connects: list[str] = field(default_factory=list)  # "host:port" of each CONNECT
    requests: list[str] = field(default_factory=list)  # "METHOD absolute-url" of plain HTTP
    plain_bytes: bytearray = field(default_factory=bytearray)  # all plain-HTTP client bytes
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def used(self) -> bool:
        return bool(self.connects or self.requests)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method == "CONNECT":
                self.connects.append(target)
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                self._open.add(up_writer)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await self._pipe(reader, writer, up_reader, up_writer, record=False)
                return
            host, _, port = target.split("/")[2].partition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port or 80))
            self._open.add(up_writer)
            up_writer.write(head)
            self._record(head)
            await self._pipe(reader, writer, up_reader, up_writer, record=True)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    def _record(self, data: bytes) -> None:
        self.plain_bytes += data
        self.requests[:] = [
            f"{m.group(1).decode()} {m.group(2).decode()}"
            for m in _ABSOLUTE_FORM.finditer(self.plain_bytes)
        ]

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        *,
        record: bool,
    ) -> None:
        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, rec: bool) -> None:
            with contextlib.suppress(OSError):
                while chunk := await src.read(65536):
                    if rec:
                        self._record(chunk)
                    dst.write(chunk)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer, record), copy(up_reader, writer, False))


@contextlib.asynccontextmanager
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    proxy = ForwardProxy()
    server, port = await serve_on_loopback(proxy._handle)
    proxy.url = f"http://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        server.close()
        for writer in proxy._open:
            writer.close()
        await server.wait_closed()
