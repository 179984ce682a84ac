"""Test endpoints under ``/v4.0/sandbox/``: echo, sized, compressed, slow and odd responses.

They exist so proxy tests can check what was forwarded and how responses are relayed.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from typing import Final

from aiohttp import web

from proxy.sandbox.errors import BadRequestError, words_error

PREFIX: Final = "/v4.0/sandbox"
PATTERN: Final = bytes(range(256))
CHUNK: Final = 256 * 1024  # a multiple of 256, so every chunk starts the pattern afresh
MAX_SIZE: Final = 16 * 1024**3
MAX_SECONDS: Final = 600.0
GZIP_TEXT: Final = "hello from the sandbox\n" * 100
GZIP_BODY: Final = gzip.compress(GZIP_TEXT.encode(), mtime=0)


class BadParameter(BadRequestError):
    """A query parameter is missing or out of range: 400."""


def pattern_bytes(size: int) -> bytes:
    """The first ``size`` bytes of ``bytes(range(256))`` repeated, what ``bytes`` sends."""
    return (PATTERN * (size // 256 + 1))[:size]


def _int(request: web.Request, name: str, default: int | None, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise BadParameter(f"The {name} parameter is required.")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(f"{name} must be an integer.") from None
    if not 0 <= value <= high:
        raise BadParameter(f"{name} must be between 0 and {high}.")
    return value


def _seconds(request: web.Request, default: float) -> float:
    raw = request.query.get("seconds")
    try:
        value = default if raw is None else float(raw)
    except ValueError:
        raise BadParameter("seconds must be a number.") from None
    if not 0 <= value <= MAX_SECONDS:
        raise BadParameter(f"seconds must be between 0 and {MAX_SECONDS:g}.")
    return value


def credential_fingerprint(credential: bytes) -> str:
    """What the echo shows of a credential: enough to tell which token was sent, not the token."""
    return "sha256:" + hashlib.sha256(credential).hexdigest()


def _shown(name: bytes, value: bytes) -> str:
    """A header value as the echo returns it; ``Authorization`` as its scheme and a fingerprint
    of the credential, never the value (issue 16: a page reading the echo gets no token)."""
    if name.lower() != b"authorization":
        return value.decode("latin-1")
    scheme, space, credential = value.partition(b" ")
    if not space:
        return credential_fingerprint(value)
    return f"{scheme.decode('latin-1')} {credential_fingerprint(credential)}"


async def echo(request: web.Request) -> web.Response:
    """Describe the request as received: raw path and query, headers in order, body digest.

    Header bytes are decoded as Latin-1 so every byte survives the trip into JSON.
    """
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    path, _, query = request.raw_path.partition("?")
    headers = [[k.decode("latin-1"), _shown(k, v)] for k, v in request.raw_headers]
    return web.json_response(
        {
            "method": request.method,
            "path": path,
            "query": query,
            "headers": headers,
            "body_length": length,
            "body_sha256": digest.hexdigest(),
        }
    )


async def sized_bytes(request: web.Request) -> web.StreamResponse:
    """``size`` deterministic bytes, streamed with a Content-Length."""
    size = _int(request, "size", None, MAX_SIZE)
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    response.content_length = size
    await response.prepare(request)
    block = pattern_bytes(CHUNK)
    remaining = size
    while remaining > 0:
        step = min(remaining, CHUNK)
        await response.write(block[:step])
        remaining -= step
    await response.write_eof()
    return response


async def gzipped(request: web.Request) -> web.Response:
    """A body already gzip-compressed; decompressed it is :data:`GZIP_TEXT`."""
    return web.Response(
        body=GZIP_BODY,
        content_type="text/plain",
        charset="utf-8",
        headers={"Content-Encoding": "gzip"},
    )


async def redirect(request: web.Request) -> web.Response:
    target = request.query.get("to")
    if not target:
        raise BadParameter("The to parameter is required.")
    return web.Response(status=302, headers={"Location": target})


async def delay(request: web.Request) -> web.Response:
    """Sleep before sending anything, to trip the caller's header timeout."""
    seconds = _seconds(request, 1.0)
    await asyncio.sleep(seconds)
    return web.json_response({"delayed": seconds})


async def drip(request: web.Request) -> web.StreamResponse:
    """Headers at once, then ``size`` bytes in up to 10 pieces spread over ``seconds``."""
    seconds = _seconds(request, 1.0)
    size = _int(request, "size", 10, 1024**2)
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    response.content_length = size
    await response.prepare(request)
    body = pattern_bytes(size)
    pieces = max(1, min(size, 10))
    for index in range(pieces):
        await asyncio.sleep(seconds / pieces)
        await response.write(body[index * size // pieces : (index + 1) * size // pieces])
    await response.write_eof()
    return response


async def status(request: web.Request) -> web.Response:
    """Answer the status in the path: Words error shape from 400 up, empty for 204 and 304."""
    try:
        code = int(request.match_info["code"])
    except ValueError:
        raise BadParameter("The status must be an integer.") from None
    if not 200 <= code <= 599:
        raise BadParameter("The status must be between 200 and 599.")
    if code in (204, 304):
        return web.Response(status=code)
    if code >= 400:
        return words_error(code, f"Status {code} as requested.")
    return web.json_response({"status": code}, status=code)


async def hop_headers(request: web.Request) -> web.Response:
    """Hop-by-hop headers (RFC 9110 §7.6.1), including one named only in ``Connection``.

    aiohttp keeps a ``Connection`` header a handler sets, and sends the rest as given.
    """
    headers = {
        "Connection": "X-Secret-Hop",
        "Keep-Alive": "timeout=5",
        "Proxy-Authenticate": "Basic",
        "Trailer": "X-Foo",
        "Upgrade": "h2c",
        "X-Secret-Hop": "1",
        "X-Kept": "yes",
    }
    return web.json_response({"hop_headers": True}, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_route("*", f"{PREFIX}/echo/{{tail:.*}}", echo)
    app.router.add_get(f"{PREFIX}/bytes", sized_bytes, allow_head=False)
    app.router.add_get(f"{PREFIX}/gzip", gzipped, allow_head=False)
    app.router.add_get(f"{PREFIX}/redirect", redirect, allow_head=False)
    app.router.add_get(f"{PREFIX}/delay", delay, allow_head=False)
    app.router.add_get(f"{PREFIX}/drip", drip, allow_head=False)
    app.router.add_route("*", f"{PREFIX}/status/{{code}}", status)
    app.router.add_get(f"{PREFIX}/hop-headers", hop_headers, allow_head=False)
