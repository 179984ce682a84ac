"""Errors the proxy answers itself, each with its HTTP status and a stable code.

    ProxyError                      (base: status, code, a human sentence)
     ├── BadRequest           400   bad_request: a request the proxy will not forward
     ├── BodyTooLarge         413   body_too_large: the body exceeds max_body_size
     ├── TokenUnavailable     503   token_unavailable: no valid token (credentials rejected,
     │                              token endpoint failing); carries Retry-After
     ├── UpstreamUnreachable  502   upstream_unreachable: cannot connect, or the exchange broke
     └── UpstreamTimeout      504   upstream_timeout: connected, but no response headers in time

The body has the shape of Aspose's own errors, so the official SDKs parse and show it
(the Words Python SDK raises KeyError on any other JSON shape).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from aiohttp import web

ERROR_HEADER = "X-Proxy-Error"


class ProxyError(Exception):
    """A failure the client is told about; ``message`` is safe to show (no secrets)."""

    status = 500
    code = "internal_error"
    description = "The proxy failed to handle the request."

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"
    description = "The proxy only forwards origin-form requests to its configured upstream."


class BodyTooLarge(ProxyError):
    status = 413
    code = "body_too_large"
    description = "The request body is larger than the proxy's max_body_size setting."


class TokenUnavailable(ProxyError):
    status = 503
    code = "token_unavailable"
    description = "The proxy could not obtain an access token from the Aspose token endpoint."


class UpstreamUnreachable(ProxyError):
    status = 502
    code = "upstream_unreachable"
    description = "The proxy could not complete the exchange with the upstream API."


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"
    description = "The upstream API did not send response headers within upstream_timeout."


def error_response(error: ProxyError, request_id: str) -> web.Response:
    """Render ``error`` as the JSON body Aspose's SDKs expect, with ``X-Proxy-Error``."""
    body = {
        "RequestId": request_id,
        "Error": {
            "Code": error.code,
            "Message": error.message,
            "Description": error.description,
            "DateTime": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        },
    }
    headers = {ERROR_HEADER: error.code}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return web.Response(
        status=error.status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )
