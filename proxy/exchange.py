"""The per-request record, request ids and the header that carries them: a leaf module.

Every step of a request (guards, usage gate, forwarding, local tokens, the connection guards
answering an unparsable head) reads or fills the same ``Exchange``; keeping it here means
nothing generic imports the pipeline.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets

from aiohttp import web

REQUEST_ID_HEADER = "X-Request-Id"
CLIENT_CLOSED = 499  # nginx's code for a client that went away before the answer

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Unique per process run: 64 random bits, then a counter (cheaper than uuid4 per request).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


def _new_id_prefix() -> None:
    """A forked child (a worker) must not repeat its parent's request ids."""
    global _ID_PREFIX
    _ID_PREFIX = secrets.token_hex(8)


os.register_at_fork(after_in_child=_new_id_prefix)


class Exchange:
    """What the steps of one request tell each other and the access line, in one object: one
    lookup per step, attributes that always exist (``request.get`` on a missing key raises
    and catches a KeyError inside aiohttp, thousands of instructions)."""

    __slots__ = (
        "aborted",
        "bytes_sent",
        "cached",
        "client",
        "request_id",
        "sent_upstream",
        "upstream_status",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        # The client's name: its access key's name or its local client id (None: anonymous).
        self.client: str | None = None
        self.aborted = False  # the response was cut because upstream broke
        # The request was handed to upstream (its head may be on the wire): from here on it is
        # a call, answered or not, even if its client hangs up (issue 16: Aspose bills it).
        self.sent_upstream = False
        self.bytes_sent = 0  # response body bytes written to the client
        # Upstream answered with this status: the request is a call (counted even if the
        # client left before the answer was sent).
        self.upstream_status: int | None = None
        self.cached = False  # answered from the conversion cache: not a call (issue 19)


EXCHANGE = web.RequestKey("exchange", Exchange)


def request_id_for(request: web.BaseRequest) -> str:
    """The client's ``X-Request-Id`` when it is a sane token, else a fresh one."""
    return request_id_of(request)[0]


def request_id_of(request: web.BaseRequest) -> tuple[str, bool]:
    """The request id, and whether the client chose it (then the log line redacts it)."""
    incoming = request.headers.get(REQUEST_ID_HEADER)
    if incoming and _SAFE_ID.fullmatch(incoming):
        return incoming, True
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}", False
