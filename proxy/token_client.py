"""The OAuth client-credentials request to ``token_url``: the only code that sends one.

``request_token`` posts the form every Aspose SDK posts and ``parse_token_answer`` turns the
answer into a :class:`TokenAnswer` (the token and its lifetime: the sooner of ``expires_in`` and
the JWT's ``exp``, at most a day) or a :class:`TokenFetchError` that says why, without a secret:
rejected credentials (400/401 with an OAuth ``error``), a 429 with its ``Retry-After``, or a
transient failure. When to send one is decided elsewhere (proxy/token_schedule.py), and what
is done with the answer too (proxy/tokens.py), as Envoy keeps ``oauth_client`` apart from its
token provider.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import json
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC

import aiohttp

from proxy.credentials import Credentials
from proxy.settings import Settings
from proxy.token_schedule import Decision, Outcome, Schedule
from proxy.upstream import describe_tls_error

DEFAULT_LIFETIME = 86400.0
# Clock oddities: no token is kept longer than this, whatever expires_in says.
MAX_LIFETIME = 86400.0


class TokenFetchError(Exception):
    """A failed token request: ``rejected`` credentials, ``rate_limited`` (429), or transient."""

    def __init__(
        self,
        reason: str,
        *,
        rejected: bool = False,
        rate_limited: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rejected = rejected
        self.rate_limited = rate_limited
        self.retry_after = retry_after

    @property
    def outcome(self) -> Outcome:
        if self.rejected:
            return "rejected"
        return "rate_limited" if self.rate_limited else "error"


@dataclass(frozen=True)
class TokenAnswer:
    access_token: str
    expires_in: float


async def recorded_request(
    schedule: Schedule,
    decision: Decision,
    credentials: Credentials,
    fetch: Callable[[Credentials], Awaitable[TokenAnswer]],
) -> TokenAnswer | TokenFetchError:
    """The token request ``decision`` allowed, its outcome recorded in ``schedule`` even when
    cancelled (the slot goes back; the schedule learns what was sent). A failure is returned,
    not raised; an unexpected exception (a bug, an odd client error) is one too, so it still
    backs off."""
    outcome: Outcome = "error"
    error: TokenFetchError | None = None
    try:
        answer = await fetch(credentials)
        outcome = "ok"
    except TokenFetchError as exc:
        outcome, error = exc.outcome, exc
    except Exception as exc:
        error = TokenFetchError(f"token fetch failed ({type(exc).__name__})")
    finally:
        await schedule.record(
            decision.ticket,
            credentials,
            outcome,
            reason=error.reason if error else "",
            retry_after=error.retry_after if error else None,
        )
    return answer if error is None else error


async def request_token(
    session: aiohttp.ClientSession, settings: Settings, credentials: Credentials | None = None
) -> TokenAnswer:
    """POST client credentials to ``token_url`` and parse the OAuth answer."""
    credentials = credentials or Credentials.from_settings(settings)
    form = {"grant_type": "client_credentials", "client_id": credentials.client_id}
    form["client_secret"] = credentials.secret
    # token_timeout, not upstream_timeout (300 s, for slow conversions): issue 18.
    timeout = aiohttp.ClientTimeout(
        total=settings.token_timeout, sock_connect=settings.connect_timeout
    )
    try:
        async with session.post(
            settings.token_url,
            data=form,  # aiohttp URL-encodes a dict as application/x-www-form-urlencoded
            headers={"Accept": "application/json"},
            timeout=timeout,
            allow_redirects=False,
        ) as response:
            body = await response.read()
            status = response.status
            retry_after = response.headers.get("Retry-After")
    except TimeoutError:
        raise TokenFetchError(
            f"token endpoint {settings.token_url} did not answer within token_timeout "
            f"({settings.token_timeout:g} s)"
        ) from None
    except aiohttp.ClientSSLError as exc:  # fails closed: the credentials were not sent
        raise TokenFetchError(
            f"token endpoint {settings.token_url}: TLS verification failed "
            f"({describe_tls_error(exc)}); set ca_file if a TLS-inspecting proxy is in the way"
        ) from None
    except aiohttp.ClientError as exc:
        raise TokenFetchError(
            f"token endpoint {settings.token_url} unreachable ({_connection_failure(exc)})"
        ) from None
    return parse_token_answer(
        status, body, settings, retry_after=retry_after, client_id=credentials.client_id
    )


def _connection_failure(exc: aiohttp.ClientError) -> str:
    """In words, not an exception class name: "connection refused", "server disconnected"."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):  # a resolver code is no errno
        reason = (exc.os_error.strerror or "no such host").lower()
        return f"cannot resolve {exc.host}: {reason}"
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
        return os.strerror(exc.os_error.errno).lower()
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return "connection failed"


def parse_token_answer(
    status: int,
    body: bytes,
    settings: Settings,
    *,
    retry_after: str | None = None,
    client_id: str | None = None,
) -> TokenAnswer:
    """Turn the endpoint's answer into a token, or a ``TokenFetchError`` that says why."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {}
    if status == 429:
        raise TokenFetchError(
            f"token endpoint {settings.token_url} answered 429 Too Many Requests",
            rate_limited=True,
            retry_after=parse_retry_after(retry_after),
        )
    oauth_error = data.get("error")
    if status in (400, 401) and isinstance(oauth_error, str):
        return _raise_rejected(oauth_error, settings.client_id if client_id is None else client_id)
    if status != 200:
        raise TokenFetchError(f"token endpoint {settings.token_url} answered HTTP {status}")
    token = data.get("access_token")
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n\0 "):
        raise TokenFetchError(f"token endpoint {settings.token_url} sent no usable access_token")
    return TokenAnswer(token, _lifetime(data.get("expires_in"), token))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date; None when absent or unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _raise_rejected(oauth_error: str, client_id: str) -> TokenAnswer:
    safe = "".join(c for c in oauth_error[:64] if c.isalnum() or c in "_-.")
    raise TokenFetchError(
        f"the token endpoint rejected the credentials for client_id '{client_id}' ({safe})",
        rejected=True,
    )


def _unverified_claims(token: str) -> dict[str, object]:
    """A JWT's payload, unverified (Aspose signs it, we only read ``exp``); {} if not a JWT.

    Base64url and JSON by hand rather than PyJWT: importing PyJWT pulls in ``cryptography``
    where it is installed, ~9 MiB of resident memory for a proxy that never checks a signature.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):  # bad base64, bad UTF-8, bad JSON
        return {}
    return claims if isinstance(claims, dict) else {}


def _lifetime(expires_in: object, token: str) -> float:
    """The sooner of ``expires_in`` and the JWT's ``exp``, at most a day (one day if neither).

    0 or negative means expired on arrival (the cache refuses it); an absurd ``expires_in`` is
    capped by ``exp`` when the token is a JWT, and by ``MAX_LIFETIME`` always.
    """
    candidates = []
    if isinstance(expires_in, int | float | str) and not isinstance(expires_in, bool):
        with contextlib.suppress(ValueError, OverflowError):
            seconds = float(expires_in)
            if math.isfinite(seconds) or seconds > 0:
                candidates.append(seconds)
    exp = _unverified_claims(token).get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        candidates.append(exp - time.time())
    if not candidates:
        return DEFAULT_LIFETIME
    return max(0.0, min(MAX_LIFETIME, *candidates))
