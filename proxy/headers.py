"""Header rules In -> Out, after Go's ``httputil.ReverseProxy``.

Pure functions over lists of (name, value) pairs so that repeated headers keep their order.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

Pairs = list[tuple[str, str]]
# aiohttp's request or response headers, or (in tests) a list of pairs.
Headers = CIMultiDictProxy[str] | CIMultiDict[str] | Iterable[tuple[str, str]]
_MULTIDICTS = (CIMultiDictProxy, CIMultiDict)  # a tuple: "A | B" builds a union per call

# RFC 9110 §7.6.1: hop-by-hop headers, plus the legacy ones Go's ReverseProxy also drops.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded upstream: the client's credentials are replaced (and its X-Proxy-Key, the
# proxy's own access key, stays here), Host is the upstream's, Expect is answered by the proxy
# itself, and Content-Length is set from the buffered body (a chunked upload gets one too, as
# nginx does).
# Method and URL overrides are never forwarded (issue 16): frameworks behind the upstream
# (ASP.NET, IIS URL Rewrite) would act on a method or path other than the one the guards saw.
OVERRIDES = frozenset(
    {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
    }
)
REQUEST_DROPPED = (
    HOP_BY_HOP | OVERRIDES | {"authorization", "x-proxy-key", "host", "expect", "content-length"}
)
# aiohttp's server sets these itself from the body it sends; Content-Length is re-added
# by the handler when upstream sent one. X-Request-Id is the proxy's (the one in its logs).
RESPONSE_DROPPED = HOP_BY_HOP | {"content-length", "x-request-id"}


def connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Header names listed in ``Connection`` (RFC 9110 §7.6.1: they are hop-by-hop too)."""
    names: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(names)


def filter_headers(headers: Headers, dropped: frozenset[str]) -> Pairs:
    """Copy ``headers`` without ``dropped`` names and without those named in ``Connection``.

    One list comprehension with one ``lower()`` per header: this runs twice per request and a
    comprehension is the cheapest Python loop. Whether a ``Connection`` header is there is
    one C lookup in aiohttp's headers (a plain list of pairs, in tests, is searched).
    """
    if isinstance(headers, _MULTIDICTS):
        pairs: Iterable[tuple[str, str]] = headers.items()
        connection = "Connection" in headers
    else:
        pairs = list(headers)
        connection = any(name.lower() == "connection" for name, _ in pairs)
    out = [(name, value) for name, value in pairs if name.lower() not in dropped]
    if connection:
        named = connection_tokens(pairs)
        out = [(name, value) for name, value in out if name.lower() not in named]
    return out


def outbound_request_headers(headers: Headers, token: str) -> Pairs:
    """The request headers to send upstream: filtered, with our bearer token."""
    out = filter_headers(headers, REQUEST_DROPPED)
    out.append(("Authorization", f"Bearer {token}"))
    return out


def outbound_response_headers(headers: Headers) -> Pairs:
    """The response headers to send back to the client."""
    return filter_headers(headers, RESPONSE_DROPPED)
