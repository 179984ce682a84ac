"""The conversions the proxy may cache (proxy/cache/policy.py), imitated.

Each answers a deterministic transformation of its input (the body's bytes mapped through a
fixed table, streamed) behind a first line naming the operation, the call's time and a serial
number, so two identical calls differ as real outputs do (PDFs carry their creation time).
``conversions`` in ``/_sandbox/stats`` counts the conversions performed: what a cache hit saves.
"""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web

from proxy.sandbox.state import STATE

CHUNK: Final = 256 * 1024
# A fixed byte permutation: the output depends on every input byte, and only on them.
_TABLE: Final = bytes((b * 7 + 3) % 256 for b in range(256))
CONTENT_TYPES: Final = {"pdf": "application/pdf", "png": "image/png", "json": "application/json"}

ROUTES: Final = (
    ("PUT", "/v4.0/words/convert"),
    ("PUT", "/v4.0/cells/convert/spreadsheet"),
    ("PUT", "/v4.0/cells/convert/spreadsheet/{format}"),
    ("PUT", "/v4.0/cells/convert/{kind:(worksheet|range|table|chart)}/{format}"),
    ("PUT", "/v3.0/cells/convert"),
    ("POST", "/v3.0/slides/convert/{format}"),
    ("POST", "/v3.0/pdf/convert/xlsx"),
    ("POST", "/v3.0/imaging/{operation}"),
    ("POST", "/v3.0/imaging/tiff/toFax"),
    ("POST", "/v3.0/imaging/frames/{frame}"),
    ("GET", "/v4.0/barcode/generate/{type}"),
    ("POST", "/v4.0/barcode/{operation:(generate|recognize|scan)-(body|multipart)}"),
)


def _output_format(request: web.Request) -> str:
    return (
        request.match_info.get("format")
        or request.query.get("format")
        or request.query.get("Format")
        or ("xlsx" if request.path.endswith("/xlsx") else "pdf")
    ).lower()


async def convert(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.stats.conversions += 1
    serial = state.stats.conversions
    fmt = _output_format(request)
    head = (
        f"ASPOSE-SANDBOX {request.method} {request.path} format={fmt} serial={serial} "
        f"time={time.time():.6f}\n"
    ).encode()
    response = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPES.get(fmt, "application/octet-stream"),
            "Content-Disposition": f'attachment; filename="converted.{fmt}"',
        }
    )
    length = request.content_length
    if length is not None:  # a known length lets the proxy decide before the body
        response.content_length = len(head) + length
    await response.prepare(request)
    await response.write(head)
    if request.query.get("text"):  # barcode generate takes its input in the query
        await response.write(request.query["text"].encode().translate(_TABLE))
    while chunk := await request.content.read(CHUNK):
        await response.write(chunk.translate(_TABLE))
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    for method, path in ROUTES:
        app.router.add_route(method, path, convert)
