"""Errors the proxy answers itself, each with its HTTP status and a stable code.

    ProxyError                      (base: status, code, a human sentence)
     ├── BadRequest           400   bad_request: a request the proxy will not forward
     │    └── UnsupportedVersion      ... not HTTP/1.0 or 1.1; the connection is closed
     ├── ClientAuthRequired   401   client_auth_required: require_client_auth is on and the
     │                              request has no valid X-Proxy-Key or local bearer token
     ├── AddressNotAllowed    403   address_not_allowed: the client address is not in allow_from
     ├── OriginNotAllowed     403   origin_not_allowed: a web page's request (Origin header)
     │                              from an origin not in allow_origins, or one without Origin
     │                              marked Sec-Fetch-Site: cross-site or same-site
     ├── OperationNotAllowed  403   operation_not_allowed: method or path outside allow_methods /
     │                              allow_paths, or a path that could mean another one
     ├── HostNotAllowed       421   host_not_allowed: a Host that is not localhost, an IP
     │                              literal, this machine's name nor in allow_hosts (DNS
     │                              rebinding; on every listener)
     ├── RequestTimeout       408   request_timeout: no body byte for request_body_timeout;
     │                              the connection is closed
     ├── BodyTooLarge         413   body_too_large: the body exceeds max_body_size
     ├── HeadTooLarge         431   request_head_too_large: request line, a header field or
     │                              the number of header fields beyond the parser's bounds
     ├── InsufficientStorage  507   insufficient_storage: a big body cannot be spooled
     │                              (spool_dir missing, unwritable or full, or the spool
     │                              files would pass spool_max_size)
     ├── NotFound             404   not_found: a path under /_proxy/ the proxy has no page for
     ├── RateLimited          429   rate_limited: the client's rate_limits bucket is empty;
     │                              carries Retry-After
     ├── BudgetExhausted      429   budget_exhausted: a budget's calls for this period are
     │                              spent; Retry-After = seconds until the period resets
     ├── UsageStoreUnavailable 503  usage_store_unavailable: a budget applies but its shared
     │                              counter (Redis) cannot be reached; carries Retry-After
     ├── TokenUnavailable     503   token_unavailable: no valid token (credentials rejected,
     │                              token endpoint failing); carries Retry-After
     ├── UpstreamUnreachable  502   upstream_unreachable: cannot connect, or the exchange broke
     ├── UpstreamTLSError     502   upstream_tls_error: upstream's TLS certificate is not trusted
     │                              (or the handshake failed); nothing was sent
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
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers, e.g. a 401 challenge
    closes_connection = False  # the answer ends the connection (the request is not over)

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"
    description = "The proxy only forwards origin-form requests to its configured upstream."


class UnsupportedVersion(BadRequest):
    description = "The proxy answers HTTP/1.0 and HTTP/1.1 requests only."
    closes_connection = True


class ClientAuthRequired(ProxyError):
    status = 401
    code = "client_auth_required"
    description = (
        "The proxy requires client authentication: X-Proxy-Key with an access key, or "
        "Authorization: Bearer with a token from the proxy's local token endpoint."
    )
    # RFC 9110 §15.5.2: a 401 carries a challenge.
    headers = (("WWW-Authenticate", 'Bearer realm="aspose-proxy"'),)


class AddressNotAllowed(ProxyError):
    status = 403
    code = "address_not_allowed"
    description = "The client's address is not in the proxy's allow_from setting."


class OriginNotAllowed(ProxyError):
    status = 403
    code = "origin_not_allowed"
    description = "Requests from web pages are refused unless their origin is in allow_origins."


class OperationNotAllowed(ProxyError):
    status = 403
    code = "operation_not_allowed"
    description = "The method or path is outside the proxy's allow_methods or allow_paths."


class HostNotAllowed(ProxyError):
    # RFC 9110 §15.5.20 421 Misdirected Request: this server does not answer for that
    # authority. A DNS-rebound page names its own host; nothing is forwarded.
    status = 421
    code = "host_not_allowed"
    description = (
        "The proxy only answers the Host names localhost, IP addresses, its machine's name and "
        "those listed in allow_hosts (ASPOSE_PROXY_ALLOW_HOSTS)."
    )


class RequestTimeout(ProxyError):
    status = 408
    code = "request_timeout"
    description = "The client sent no byte of the request body for request_body_timeout seconds."
    closes_connection = True  # the rest of the body may still come: it must not be a request


class BodyTooLarge(ProxyError):
    status = 413
    code = "body_too_large"
    description = "The request body is larger than the proxy's max_body_size setting."


class HeadTooLarge(ProxyError):
    status = 431  # RFC 6585 §5
    code = "request_head_too_large"
    description = "The request line or header fields are larger than the proxy accepts."


class InsufficientStorage(ProxyError):
    status = 507
    code = "insufficient_storage"
    description = (
        "The proxy could not keep a copy of the request body on disk (needed to replay it "
        "after a 401); smaller bodies are not affected."
    )


class NotFound(ProxyError):
    status = 404
    code = "not_found"
    description = "The proxy has no page of its own at this path (see /_proxy/)."


class RateLimited(ProxyError):
    status = 429
    code = "rate_limited"
    description = "The client sent more requests per second than its rate_limits entry allows."


class BudgetExhausted(ProxyError):
    status = 429
    code = "budget_exhausted"
    description = "A budget for this client and product has no calls left in this period."


class UsageStoreUnavailable(ProxyError):
    status = 503
    code = "usage_store_unavailable"
    description = "A budget applies, but the shared usage store that counts it is unreachable."


class TokenUnavailable(ProxyError):
    status = 503
    code = "token_unavailable"
    description = "The proxy could not obtain an access token from the Aspose token endpoint."


class UpstreamUnreachable(ProxyError):
    status = 502
    code = "upstream_unreachable"
    description = "The proxy could not complete the exchange with the upstream API."


class UpstreamTLSError(ProxyError):
    status = 502
    code = "upstream_tls_error"
    description = (
        "The upstream API's TLS certificate could not be verified, so nothing was sent. Behind "
        "a TLS-inspecting proxy, set ca_file to its CA certificate."
    )


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
    headers = {ERROR_HEADER: error.code, **dict(error.headers)}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    response = web.Response(
        status=error.status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )
    if error.closes_connection:
        response.force_close()
    return response
