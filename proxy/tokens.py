"""The token cache: the only code that talks to the Aspose token endpoint.

One fetch at a time however many requests wait (single flight); a background task refreshes
early (at the latest at half the lifetime, with jitter, as Envoy does); failures back off
exponentially; a token is never handed out within its expiry margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import jwt
import structlog

from proxy.errors import TokenUnavailable
from proxy.metrics import Metrics
from proxy.settings import Settings

log = structlog.get_logger("proxy.tokens")

DEFAULT_LIFETIME = 86400.0
BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0
Clock = Callable[[], float]


class Token:
    """An access token; its value never appears in ``repr`` or ``str``."""

    __slots__ = ("expires_at", "lifetime", "obtained_at", "refresh_at", "usable_until", "value")

    def __init__(self, value: str, lifetime: float, obtained_at: float, jitter: float) -> None:
        self.value = value
        self.lifetime = lifetime
        self.obtained_at = obtained_at
        self.expires_at = obtained_at + lifetime
        # Counted as expired a margin before exp, scaled down for short-lived tokens.
        self.usable_until = self.expires_at - min(30.0, 0.1 * lifetime)
        # Refresh at the latest at half the lifetime; jitter spreads a fleet's refreshes.
        self.refresh_at = obtained_at + lifetime * (0.5 - 0.1 * jitter)

    def __repr__(self) -> str:
        return f"Token(value='**********', lifetime={self.lifetime:.0f})"

    __str__ = __repr__


class TokenFetchError(Exception):
    """A failed token request; ``rejected`` means the endpoint refused the credentials."""

    def __init__(self, reason: str, *, rejected: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rejected = rejected


@dataclass(frozen=True)
class TokenAnswer:
    access_token: str
    expires_in: float


async def request_token(session: aiohttp.ClientSession, settings: Settings) -> TokenAnswer:
    """POST client credentials to ``token_url`` and parse the OAuth answer."""
    secret = settings.client_secret.get_secret_value() if settings.client_secret else ""
    form = {"grant_type": "client_credentials", "client_id": settings.client_id}
    form["client_secret"] = secret
    timeout = aiohttp.ClientTimeout(
        total=settings.upstream_timeout, sock_connect=settings.connect_timeout
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
    except TimeoutError:
        raise TokenFetchError(f"token endpoint {settings.token_url} timed out") from None
    except aiohttp.ClientError as exc:
        raise TokenFetchError(
            f"token endpoint {settings.token_url} unreachable ({type(exc).__name__})"
        ) from None
    return parse_token_answer(status, body, settings)


def parse_token_answer(status: int, body: bytes, settings: Settings) -> TokenAnswer:
    """Turn the endpoint's answer into a token, or a ``TokenFetchError`` that says why."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {}
    oauth_error = data.get("error")
    if status in (400, 401) and isinstance(oauth_error, str):
        return _raise_rejected(oauth_error, settings)
    if status != 200:
        raise TokenFetchError(f"token endpoint {settings.token_url} answered HTTP {status}")
    token = data.get("access_token")
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n\0 "):
        raise TokenFetchError(f"token endpoint {settings.token_url} sent no usable access_token")
    return TokenAnswer(token, _lifetime(data.get("expires_in"), token))


def _raise_rejected(oauth_error: str, settings: Settings) -> TokenAnswer:
    safe = "".join(c for c in oauth_error[:64] if c.isalnum() or c in "_-.")
    raise TokenFetchError(
        f"the token endpoint rejected the credentials for client_id "
        f"'{settings.client_id}' ({safe})",
        rejected=True,
    )


def _lifetime(expires_in: object, token: str) -> float:
    """``expires_in``, else the JWT's ``exp``, else one day."""
    if isinstance(expires_in, int | float | str) and not isinstance(expires_in, bool):
        with contextlib.suppress(ValueError):
            seconds = float(expires_in)
            if seconds > 0:
                return seconds
    with contextlib.suppress(jwt.PyJWTError):
        claims = jwt.decode(token, options={"verify_signature": False})
        exp = claims.get("exp")
        if isinstance(exp, int | float):
            return max(0.0, exp - time.time())
    return DEFAULT_LIFETIME


class TokenCache:
    """Holds the current token; fetches, refreshes and renews it, one fetch at a time."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[TokenAnswer]],
        *,
        wait_timeout: float,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._fetch = fetch
        self._wait_timeout = wait_timeout
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._current: Token | None = None
        self._inflight: asyncio.Task[Token] | None = None
        self._failures = 0
        self._next_attempt_at = 0.0
        self._last_error: TokenFetchError | None = None
        self._wake = asyncio.Event()
        if metrics is not None:
            metrics.watch_token_expiry(self.seconds_to_expiry)

    # -- what requests use ---------------------------------------------------------------

    def valid_token(self) -> Token | None:
        """The current token if it is outside its expiry margin."""
        token = self._current
        if token is not None and self._clock() < token.usable_until:
            return token
        return None

    async def get(self) -> Token:
        """A valid token: the cached one, or the result of the fetch in flight."""
        token = self._current
        if token is not None and self._clock() < token.usable_until:
            return token
        return await self._wait_for_fetch()

    async def renew(self, rejected: Token) -> Token:
        """After upstream refused ``rejected``: a newer token, fetching one only if needed."""
        current = self._current
        if current is not None and current is not rejected and self.valid_token() is current:
            return current  # someone already renewed it
        if current is rejected:
            self._current = None
        return await self._wait_for_fetch()

    def seconds_to_expiry(self) -> float:
        token = self._current
        return max(0.0, token.expires_at - self._clock()) if token else 0.0

    def seconds_since_fetch(self) -> float | None:
        """How long ago the held token was fetched (None without one): for the status page."""
        token = self._current
        return self._clock() - token.obtained_at if token else None

    @property
    def last_error(self) -> str | None:
        """Why the last fetch failed, until one succeeds (never holds a secret)."""
        return self._last_error.reason if self._last_error else None

    @property
    def not_ready_reason(self) -> str | None:
        """Why no valid token is held, or None when one is (for /readyz)."""
        if self.valid_token() is not None:
            return None
        if self._last_error is not None:
            return self._last_error.reason
        return "no access token fetched yet"

    # -- fetching --------------------------------------------------------------------------

    async def _wait_for_fetch(self) -> Token:
        if self._inflight is None:
            wait_left = self._next_attempt_at - self._clock()
            if self._last_error is not None and wait_left > 0:
                raise TokenUnavailable(self._describe(self._last_error), retry_after=wait_left)
            self._start_fetch()
        assert self._inflight is not None
        try:
            async with asyncio.timeout(self._wait_timeout):
                return await asyncio.shield(self._inflight)
        except TimeoutError:
            raise TokenUnavailable(
                "the token endpoint did not answer in time", retry_after=1
            ) from None
        except TokenFetchError as exc:
            wait_left = max(1.0, self._next_attempt_at - self._clock())
            raise TokenUnavailable(self._describe(exc), retry_after=wait_left) from None

    def _start_fetch(self) -> asyncio.Task[Token]:
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch_once(), name="token-fetch")
            self._inflight.add_done_callback(self._fetch_done)
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[Token]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: waiters get it through shield; no "never retrieved"
        self._wake.set()

    async def _fetch_once(self) -> Token:
        try:
            answer = await self._fetch()
        except TokenFetchError as exc:
            self._failed(exc)
            raise
        except Exception as exc:  # a bug or an unexpected client error: still back off
            self._failed(TokenFetchError(f"token fetch failed ({type(exc).__name__})"))
            raise TokenFetchError(f"token fetch failed ({type(exc).__name__})") from None
        token = Token(answer.access_token, answer.expires_in, self._clock(), self._rng.random())
        if token.usable_until <= self._clock():
            error = TokenFetchError("the token endpoint sent a token that has already expired")
            self._failed(error)
            raise error
        self._current = token
        recovered = self._last_error is not None
        self._failures = 0
        self._last_error = None
        if self._metrics:
            self._metrics.token_fetches.labels("ok").inc()
        expires = datetime.fromtimestamp(time.time() + token.lifetime, UTC)
        log.info(
            "token recovered" if recovered else "token acquired",
            expires_in=round(token.lifetime),
            expires_at=expires.isoformat(timespec="seconds"),
        )
        return token

    def _failed(self, exc: TokenFetchError) -> None:
        self._failures += 1
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (self._failures - 1))
        delay *= 0.5 + 0.5 * self._rng.random()  # equal jitter
        self._next_attempt_at = self._clock() + delay
        if self._metrics:
            self._metrics.token_fetches.labels("rejected" if exc.rejected else "error").inc()
        if self._last_error is None or self._last_error.reason != exc.reason:
            log.error("token fetch failed", reason=exc.reason, retry_in=round(delay, 1))
        self._last_error = exc

    @staticmethod
    def _describe(exc: TokenFetchError) -> str:
        if exc.rejected:
            return f"No access token: {exc.reason}. Check client_id and client_secret."
        return f"No access token: {exc.reason}."

    # -- background refresh -------------------------------------------------------------------

    def _next_refresh_in(self) -> float:
        now = self._clock()
        if self._last_error is not None:
            return max(0.0, self._next_attempt_at - now)
        token = self.valid_token()
        return max(0.0, token.refresh_at - now) if token is not None else 0.0

    async def close(self) -> None:
        """Stop a fetch in flight (at shutdown)."""
        if self._inflight is not None:
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError, TokenFetchError):
                await self._inflight

    async def run_refresher(self) -> None:
        """Fetch at start, then refresh before expiry and retry after failures; runs forever."""
        while True:
            delay = self._next_refresh_in()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            with contextlib.suppress(TokenFetchError):
                await asyncio.shield(self._start_fetch())
