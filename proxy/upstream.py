"""The client side: one shared session to ``upstream_url``, target URLs, timeouts, errors.

The session never follows redirects (the token must not go to another host), never
decompresses, stores no cookies and adds no header the client did not send.

Both sessions (API and token endpoint) share one ``Egress``: TLS is always verified, against
the system's CAs plus ``ca_file``; ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` are read once
at start-up (aiohttp's ``trust_env`` looks them up, and reads ``~/.netrc``, on every request).
Without ``ca_file`` the sessions use aiohttp's own verified context, built when aiohttp is
imported: a second copy of the system's CAs would cost ~0.7 MiB and ~50 ms (issue 11).
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal

import aiohttp
import structlog
from yarl import URL

from proxy.aiohttp_internals import disable_connection_retry
from proxy.errors import ProxyError, UpstreamTimeout, UpstreamTLSError, UpstreamUnreachable
from proxy.settings import Settings

log = structlog.get_logger("proxy.upstream")

# aiohttp's client adds these on its own unless told not to.
SKIP_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


def egress_proxy_for(url: str, proxies: Mapping[str, str] | None = None) -> URL | None:
    """The forward proxy for ``url`` from ``*_PROXY`` / ``NO_PROXY`` (urllib's reading of
    them: lowercase first, ``NO_PROXY`` host names, domain suffixes or ``*``), or None."""
    target = URL(url)
    proxies = urllib.request.getproxies() if proxies is None else proxies
    proxy = proxies.get(target.scheme or "")
    if not proxy or not target.raw_host:
        return None
    if urllib.request.proxy_bypass(f"{target.raw_host}:{target.port}"):
        return None
    return URL(proxy if "://" in proxy else f"http://{proxy}")


@dataclass(frozen=True)
class Egress:
    """TLS trust and forward proxies for the API and the token endpoint, resolved once."""

    tls: ssl.SSLContext | Literal[True]  # True: aiohttp's verified default, the system's CAs
    api_proxy: URL | None
    token_proxy: URL | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Egress:
        # Verification is always on: the system's CAs, plus ca_file (a TLS-inspecting proxy).
        tls: ssl.SSLContext | Literal[True] = True
        if settings.ca_file is not None:
            tls = ssl.create_default_context()
            tls.load_verify_locations(cafile=settings.ca_file)
        egress = cls(
            tls, egress_proxy_for(settings.upstream_url), egress_proxy_for(settings.token_url)
        )
        for target, proxy in (("api", egress.api_proxy), ("token endpoint", egress.token_proxy)):
            if proxy is not None:  # without its credentials, if the URL has any
                log.info("egress proxy", target=target, proxy=str(proxy.with_user(None)))
        return egress


def create_session(settings: Settings, egress: Egress) -> aiohttp.ClientSession:
    """The pooled keep-alive session every forwarded request shares."""
    # An idle pooled connection is dropped after upstream_keepalive_timeout, well before a load
    # balancer's idle timeout (AWS ALB: 60 s) closes it under us (a stale connection).
    connector = aiohttp.TCPConnector(
        limit=1024,
        ttl_dns_cache=300,
        keepalive_timeout=settings.upstream_keepalive_timeout,
        ssl=egress.tls,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        proxy=egress.api_proxy,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        # connect_timeout opens a connection (a pool wait is not counted). sock_read is the
        # longest silence from upstream: upstream_timeout bounds the wait for response headers
        # (a slow conversion); the shorter read_timeout between body chunks is applied by
        # iter_body. aiohttp's own timer costs less than an asyncio.timeout per request.
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.upstream_timeout
        ),
    )
    # aiohttp silently resends idempotent requests whose connection broke (RFC 9112 §9.3.1);
    # the send policy does that itself (once, counted, body replayed from its copy) so that a
    # request reaches upstream at most twice. aiohttp has no public switch for this.
    disable_connection_retry(session)
    return session


def create_token_session(egress: Egress) -> aiohttp.ClientSession:
    """The token endpoint's session: same TLS trust, its own egress proxy, no cookies."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=egress.tls),
        proxy=egress.token_proxy,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class UpstreamTarget:
    """Builds upstream URLs from the client's raw target, byte for byte."""

    def __init__(self, upstream_url: str) -> None:
        base = URL(upstream_url)
        self._scheme = base.scheme
        self._host = base.raw_host or ""
        self._port = base.explicit_port
        self._prefix = base.raw_path.rstrip("/")

    def url_for(self, raw_target: str) -> URL:
        """``raw_target`` is origin-form (checked by the caller): path and query as sent."""
        path, _, query = raw_target.partition("?")
        return URL.build(
            scheme=self._scheme,
            host=self._host,
            port=self._port,
            path=self._prefix + path,
            query_string=query,
            encoded=True,
        )


def is_stale_connection(exc: BaseException) -> bool:
    """The connection broke before any response header: the pooled connection had been closed
    by upstream (or a load balancer) as the request went out, or upstream dropped it unanswered.
    Failing to connect at all is not this: nothing was sent."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return True  # closed before the answer; or found closing as the request was written
    return isinstance(exc, aiohttp.ClientOSError) and not isinstance(
        exc, aiohttp.ClientConnectorError
    )


def never_sent(exc: BaseException) -> bool:
    """No connection was made (refused, unreachable, TLS handshake failed, connect timeout):
    the request never left the proxy, so it is no call (issue 16)."""
    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


def describe_tls_error(exc: aiohttp.ClientSSLError) -> str:
    """What failed in the TLS handshake, e.g. ``certificate verify failed: self-signed
    certificate in certificate chain`` (OpenSSL's words; no secrets in them)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        reason = getattr(cert_error, "verify_message", None) or getattr(cert_error, "reason", "")
        return f"certificate verify failed: {reason}" if reason else "certificate verify failed"
    return str(getattr(exc.os_error, "reason", None) or "TLS handshake failed")


def map_client_error(exc: BaseException, phase: str) -> ProxyError:
    """One place that turns client-side failures into the proxy's errors."""
    if isinstance(exc, aiohttp.ClientSSLError):  # fails closed: nothing was sent
        return UpstreamTLSError(
            f"TLS verification of the upstream API failed ({describe_tls_error(exc)})."
        )
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return UpstreamUnreachable(f"Cannot connect to the upstream API ({phase}).")
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("The upstream API sent no response headers in time.")
    return UpstreamUnreachable(f"The upstream API broke the exchange ({phase}).")


async def iter_body(
    response: aiohttp.ClientResponse, read_timeout: float, loop: asyncio.AbstractEventLoop
) -> AsyncIterator[bytes]:
    """The response body as it arrives; TimeoutError when a gap exceeds ``read_timeout``."""
    content = response.content
    async with asyncio.Timeout(None) as gap:
        while True:
            gap.reschedule(loop.time() + read_timeout)
            chunk = await content.readany()
            if not chunk:
                return
            yield chunk
