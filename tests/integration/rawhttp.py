"""A few bytes on a socket: for what an HTTP client library would not send as written."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from yarl import URL


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def open_to(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parsed = URL(url)
    return await asyncio.open_connection(parsed.host, parsed.port)


async def serve_on_loopback(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int]:
    """A TCP server on 127.0.0.1, on a free port: the server and its port."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
    return status, [(k, v) for k, v in headers]


async def exchange(url: str, request: bytes, timeout: float = 10) -> RawResponse:
    """Send ``request`` as is and read one response (Content-Length or close-delimited)."""
    reader, writer = await open_to(url)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            status, headers = await read_head(reader)
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
            body = await reader.readexactly(length) if length is not None else await reader.read()
        return RawResponse(status, headers, body)
    finally:
        writer.close()
