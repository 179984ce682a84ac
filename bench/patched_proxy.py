"""EXPERIMENT, not a product: ``aspose-proxy`` with proposed per-request savings patched in.

Runs ``proxy.cli.main`` unchanged except for the monkeypatches named in BENCH_PATCHES
(comma list; default all). It exists so bench/throughput.py can measure the fixes proposed
in docs/benchmarks.md before anyone edits proxy/:

  cache-logger  structlog.configure(cache_logger_on_first_use=True) after configure_logging:
                ``log.info`` on a module-level lazy logger then stops building a new
                WriteLogger + BoundLogger on every call (it does so even when filtered out).
  oneshot       when the whole upstream body arrived with the headers (small answers), send
                headers + body in one write (StreamResponse with _send_headers_immediately
                False, write_eof(body)); no iter_body generator, no read-timeout timer.
  reqid         request ids from a random per-process prefix + a counter, not uuid4()
                (uuid4 reads os.urandom per call).

    BENCH_PATCHES=cache-logger,oneshot .venv/bin/python bench/patched_proxy.py run
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict

import proxy.cli
import proxy.middleware
from proxy.handler import NO_BODY_STATUSES, Forwarder
from proxy.headers import outbound_response_headers

ALL = ("cache-logger", "oneshot", "reqid")


class _OneShot(web.StreamResponse):
    """Headers go out with the body (one send), as web.Response does."""

    _send_headers_immediately = False


def patch_cache_logger() -> None:
    original = proxy.cli.configure_logging

    def configure(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        structlog.configure(cache_logger_on_first_use=True)

    proxy.cli.configure_logging = configure  # type: ignore[assignment]


def patch_oneshot() -> None:
    original = Forwarder._stream_back

    async def stream_back(self: Forwarder, request: web.Request, upstream: Any) -> Any:
        content = upstream.content
        if (
            request.method != "HEAD"
            and upstream.status not in NO_BODY_STATUSES
            and content.is_eof()  # the whole body is already buffered
        ):
            body = content.read_nowait()
            response = _OneShot(
                status=upstream.status,
                reason=upstream.reason,
                headers=CIMultiDict(outbound_response_headers(upstream.headers.items())),
            )
            response.content_length = len(body)
            await response.prepare(request)
            await response.write_eof(body)
            return response
        return await original(self, request, upstream)

    Forwarder._stream_back = stream_back  # type: ignore[method-assign]


def patch_reqid() -> None:
    prefix = os.urandom(6).hex()
    counter = itertools.count()
    safe = proxy.middleware._SAFE_ID
    header = proxy.middleware.REQUEST_ID_HEADER

    def request_id_for(request: web.BaseRequest) -> str:
        incoming = request.headers.get(header)
        if incoming and safe.fullmatch(incoming):
            return incoming
        return f"{prefix}{next(counter):010x}"

    proxy.middleware.request_id_for = request_id_for


def main() -> int:
    if sys.argv[1:] in (["-h"], ["--help"]):
        print(__doc__)
        print("Everything else is aspose-proxy's own command line (aspose-proxy --help).")
        return 0
    wanted = [p for p in os.environ.get("BENCH_PATCHES", ",".join(ALL)).split(",") if p]
    for name in wanted:
        if name not in ALL:
            sys.stderr.write(f"unknown patch {name!r}; known: {', '.join(ALL)}\n")
            return 2
        {"cache-logger": patch_cache_logger, "oneshot": patch_oneshot, "reqid": patch_reqid}[name]()
    return proxy.cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
