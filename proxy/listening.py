"""Listening on an address, or the one line a user sees when that fails: no traceback.

Port in use, an address this machine does not have, a privileged port: each gets its cause and
the next step (issue 18), for ``run``, ``run --workers N``, ``sandbox`` and ``demo``.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module for CannotListen; the server comes when used
    from aiohttp import web

    from proxy.server import Server

_NEXT_STEP = {
    errno.EADDRINUSE: "another program (or another aspose-proxy) listens there; "
    "choose another --port, or try --port 0 for a free one",
    errno.EADDRNOTAVAIL: "this machine has no such address; use --host 127.0.0.1 "
    "(this machine only) or --host 0.0.0.0 (every address)",
    errno.EACCES: "ports below 1024 need privileges; choose --port 8080, or try --port 0",
}


class CannotListen(Exception):
    """Binding ``host:port`` failed; ``str()`` is the whole message, cause and next step."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        self.host = host
        self.port = port
        self.cause = cause
        super().__init__(describe(host, port, cause))

    @property
    def in_use(self) -> bool:
        return self.cause.errno == errno.EADDRINUSE


def describe(host: str, port: int, cause: OSError) -> str:
    """``cannot listen on HOST:PORT: <cause>; <next step>``."""
    shown = f"[{host}]" if ":" in host else host
    if isinstance(cause, socket.gaierror):
        return (
            f"cannot listen on {shown}:{port}: the host name cannot be resolved "
            f"({cause.strerror}); use an address such as --host 127.0.0.1"
        )
    # asyncio wraps the OS's words in its own sentence: take them from the errno.
    reason = (os.strerror(cause.errno) if cause.errno else str(cause)).lower()
    step = _NEXT_STEP.get(cause.errno or 0, "check --host and --port")
    return f"cannot listen on {shown}:{port}: {reason}; {step}"


async def listen(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False, **options: Any
) -> Server:
    """``start_server``, with a bind failure turned into :class:`CannotListen`.

    The address is tried before the app starts: an app that cannot listen must not start its
    background work (the proxy's first token request, whose error line would come before the
    one that says why it stopped). A worker shares its supervisor's port, so only binds.
    """
    from proxy.server import start_server

    try:
        if not reuse_port:
            bind_socket(host, port).close()
        return await start_server(app, host, port, reuse_port=reuse_port, **options)
    except OSError as exc:
        raise CannotListen(host, port, exc) from None


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound on ``host:port`` as a listener binds it (``SO_REUSEADDR``), not listening;
    ``OSError`` when the address is taken or not this machine's."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (the demo then picks a free one)."""
    if port == 0:
        return False
    try:
        bind_socket(host, port).close()
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    return False
