"""A fast static upstream for throughput benchmarks (aiohttp on uvloop).

    GET|POST|... /anything      -> 200, a fixed small JSON body (a request body is drained
                                   chunk by chunk and dropped, so 1 GiB uploads cost no memory)
    GET /bytes?size=N           -> N bytes, streamed in 256 KiB chunks, with Content-Length
    GET /v4.0/barcode/generate/{type}?size=N -> the same N bytes on a path the conversion
                                   cache may store (bench/cache.py)
    POST /connect/token         -> {"access_token":"x.y.z","expires_in":86400}
    GET /_bench/served          -> how many requests the catch-all route answered

It checks nothing (unlike the sandbox, which verifies a JWT per request), so what the
benchmark measures is the proxy in front of it. Prints ``listening on http://HOST:PORT``.

    .venv/bin/python bench/upstream.py --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web

SMALL = b'{"Exists":true,"IsFolder":false,"Size":1024,"Name":"bench.docx"}'
TOKEN = b'{"access_token":"x.y.z","expires_in":86400,"token_type":"Bearer"}'
CHUNK = 256 * 1024
BLOCK = bytes(range(256)) * (CHUNK // 256)
MAX_SIZE = 16 * 1024**3


SERVED = web.AppKey("served", list[int])


async def small(request: web.Request) -> web.Response:
    """The fixed answer; a request body (any size: uploads end here) is read and dropped."""
    request.app[SERVED][0] += 1
    if request.can_read_body:
        content = request.content
        while await content.readany():
            pass
    return web.Response(body=SMALL, content_type="application/json")


async def token(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=TOKEN, content_type="application/json")


async def sized(request: web.Request) -> web.StreamResponse:
    try:
        size = int(request.query.get("size", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="size must be an integer") from None
    if not 0 <= size <= MAX_SIZE:
        raise web.HTTPBadRequest(text="size out of range")
    if size <= CHUNK:
        return web.Response(body=BLOCK[:size], content_type="application/octet-stream")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    left = size
    while left:
        piece = BLOCK if left >= CHUNK else BLOCK[:left]
        await response.write(piece)
        left -= len(piece)
    await response.write_eof()
    return response


async def served(request: web.Request) -> web.Response:
    """How many requests the catch-all route answered: the requests a proxy in front forwarded
    (bench/instructions.py divides by it, exact where a client's own count is not)."""
    return web.Response(text=str(request.app[SERVED][0]))


def create_app() -> web.Application:
    app = web.Application()
    app[SERVED] = [0]
    app.router.add_get("/_bench/served", served)
    app.router.add_post("/connect/token", token)
    app.router.add_get("/bytes", sized)
    app.router.add_get("/v4.0/barcode/generate/{type}", sized)
    app.router.add_route("*", "/{tail:.*}", small)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(create_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
    await site.start()
    bound = runner.addresses[0]
    sys.stdout.write(f"listening on http://{bound[0]}:{bound[1]}\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner, __import__("contextlib").suppress(KeyboardInterrupt):
        runner.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
