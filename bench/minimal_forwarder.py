"""The honest baseline: the least an aiohttp reverse proxy can do (fixed token, no checks).

One catch-all route, one shared ClientSession, hop-by-hop headers dropped, a FIXED
Authorization header, the response streamed back. No body buffering, no replay, no logging,
no metrics. Prints ``listening on http://HOST:PORT``.

    .venv/bin/python bench/minimal_forwarder.py --upstream http://127.0.0.1:9000 --port 0
"""

import argparse
import asyncio
import sys

import aiohttp
from aiohttp import web
from yarl import URL

HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
}


async def forward(request: web.Request) -> web.StreamResponse:
    up: URL = request.app["upstream"]
    url = URL.build(
        scheme=up.scheme,
        host=up.raw_host or "",
        port=up.explicit_port,
        encoded=True,
        path=request.raw_path.partition("?")[0],
        query_string=request.raw_path.partition("?")[2],
    )
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
    headers.append(("Authorization", request.app["auth"]))
    data = request.content if request.body_exists else None
    async with request.app["session"].request(
        request.method, url, headers=headers, data=data, allow_redirects=False
    ) as up_resp:
        resp = web.StreamResponse(
            status=up_resp.status,
            headers=[(k, v) for k, v in up_resp.headers.items() if k.lower() not in HOP],
        )
        if up_resp.content_length is not None:
            resp.content_length = up_resp.content_length
        await resp.prepare(request)
        async for chunk in up_resp.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    app["session"] = aiohttp.ClientSession(
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        connector=aiohttp.TCPConnector(limit=1024),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    yield
    await app["session"].close()


async def serve(args: argparse.Namespace) -> None:
    app = web.Application()
    app["upstream"], app["auth"] = URL(args.upstream), f"Bearer {args.token}"
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, backlog=1024).start()
    print(f"listening on http://{runner.addresses[0][0]}:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token", default="x.y.z", help="fixed bearer token (default x.y.z)")
    p.add_argument("--asyncio", action="store_true", help="plain asyncio loop, even with uvloop")
    a = p.parse_args()
    factory = None
    if not a.asyncio:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with asyncio.Runner(loop_factory=factory) as r:
            r.run(serve(a))
    except KeyboardInterrupt:
        sys.exit(0)
