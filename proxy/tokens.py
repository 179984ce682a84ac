"""The token cache: holds the access token and decides when to ask for a new one.

One fetch at a time however many requests wait (single flight); a background task refreshes
early (at the latest at half the lifetime, with jitter, as Envoy does); a token is never handed
out within its expiry margin, nor past the real expiry (``expires_in`` and the JWT's ``exp``,
whichever is sooner, capped at one day).

Failures: transient ones (unreachable, timeouts, 5xx, garbage) back off exponentially
(0.5 s doubling to 60 s, per process). Rejected credentials and 429s go by the shared
:class:`~proxy.token_schedule.Schedule`: at most 4 rejected requests per 10 minutes for the
whole proxy, slow retries, nothing before a 429's ``Retry-After``. Meanwhile a valid cached token
keeps being used, and requests without one get 503 ``token_unavailable`` at once.

Renewal after an upstream 401 (``renew``): a token request like the others, at most 3 per 10 s
(the schedule's, shared by workers); one that fails keeps the token in hand (issue 16).

Replicas on one Redis share the token (``proxy/token_sharing.py``, sealed): before asking, a
process takes a newer token another one fetched with the same secret, or waits while one
fetches, so they make one token request between them.

Rotation: ``set_credentials`` (SIGHUP, a changed ``client_secret_file``) makes the refresher try
the new credentials at once; the token they get replaces the current one only if that works.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import SecretStr

from proxy.credentials import Credentials
from proxy.errors import TokenUnavailable
from proxy.metrics import Metrics
from proxy.token_client import TokenAnswer, TokenFetchError, recorded_request
from proxy.token_schedule import Decision, MemoryStore, Schedule

if TYPE_CHECKING:  # loaded only with Redis (cryptography is heavy)
    from proxy.token_sharing import TokenShare

log = structlog.get_logger("proxy.tokens")

BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0
# While another process tries new credentials: how often to look for its outcome.
BUSY_POLL = 0.2
Clock = Callable[[], float]
Fetch = Callable[[Credentials], Awaitable[TokenAnswer]]


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


class TokenCache:
    """Holds the current token; fetches, refreshes and renews it, one fetch at a time."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        wait_timeout: float,
        credentials: Credentials | None = None,
        schedule: Schedule | None = None,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._fetch = fetch
        self._wait_timeout = wait_timeout
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._schedule = schedule or Schedule(MemoryStore(), clock=clock)
        self._credentials = credentials or Credentials("", SecretStr(""))
        self._rotation: str | None = None  # why new credentials wait for their first try
        self._current: Token | None = None
        self._inflight: asyncio.Task[Token] | None = None
        self._failures = 0
        self._next_attempt_at = 0.0
        self._last_error: TokenFetchError | None = None
        self._wake = asyncio.Event()
        self._cap_noted_until = 0.0  # the renewal cap was last logged until then
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
        return self.valid_token() or await self._wait_for_fetch()

    async def renew(self, rejected: Token) -> Token | None:
        """After upstream answered 401 to ``rejected``: a newer token, or None (then that 401
        goes to the client as it is).

        A newer token already held is returned at once, and a fetch in flight is joined, so a
        revocation costs one token request however many calls it hits. Starting a fetch takes
        one of the schedule's 401 renewals (3 per 10 s, shared by the workers); past them, None.
        A renewal that fails (400, 429, timeout) leaves the held token in use until a new one
        arrives or it expires (issue 16: one client's 401s must not leave the others without).
        """
        current = self._current
        if current is not None and current is not rejected and self.valid_token() is current:
            return current  # someone already renewed it
        if self._inflight is None and not await self._schedule.may_renew():
            self._note_renewal_cap()
            return None
        try:
            return await self._wait_for_fetch()
        except TokenUnavailable as exc:
            log.warning("token renewal after an upstream 401 failed", reason=exc.message)
            return None

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

    async def schedule_standing(self) -> dict[str, Any] | None:
        """The token schedule's failures and 429 block, shared by every worker and replica on
        the same store, when there is something to see (for ``/readyz`` and ``/_proxy/``)."""
        standing = await self._schedule.standing()
        clock = self._schedule.now
        return standing.as_dict(clock) if standing.notable(clock) else None

    @property
    def not_ready_reason(self) -> str | None:
        """Why no valid token is held, or None when one is (for /readyz)."""
        if self.valid_token() is not None:
            return None
        if self._last_error is not None:
            return self._last_error.reason
        return "no access token fetched yet"

    # -- new credentials -----------------------------------------------------------------------

    def set_credentials(self, credentials: Credentials, why: str) -> bool:
        """Try ``credentials`` at once (whatever the backoff says); False if nothing changed."""
        if credentials == self._credentials:
            return False
        self._credentials, self._rotation = credentials, why
        self._failures = 0
        self._next_attempt_at = 0.0
        log.info(
            "new credentials; fetching a token with them", client_id=credentials.client_id, why=why
        )
        self._wake.set()
        return True

    def _note_renewal_cap(self) -> None:
        """One warning per renewal window while upstream 401s go past the cap."""
        now = self._clock()
        if now >= self._cap_noted_until:
            window = self._schedule.policy.renewal_window
            self._cap_noted_until = now + window
            log.warning(
                "upstream 401s: token renewals capped; the 401s go to the clients as they are",
                renewals=self._schedule.policy.renewals,
                per_seconds=window,
            )

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

    async def _permission(self, credentials: Credentials) -> Decision:
        """Ask the schedule; while another process tries these credentials, wait for it."""
        while True:
            have_token = self.valid_token() is not None
            decision = await self._schedule.ask(credentials, have_token=have_token)
            if not decision.busy:
                return decision
            await asyncio.sleep(BUSY_POLL)

    async def _fetch_once(self) -> Token:
        credentials, rotation = self._credentials, self._rotation
        share = self._schedule.store.token_share
        if share is None or self._schedule.store.degraded:  # Redis away: fetch alone
            return await self._request(credentials, rotation)
        token, holder = await self._from_replicas(share, credentials)
        if token is not None:
            return self._hold(token, credentials, rotation, "token taken from another replica")
        try:
            token = await self._request(credentials, rotation)
            obtained = time.time() - (self._clock() - token.obtained_at)
            await share.save(token.value, token.lifetime, obtained, credentials)
            return token
        finally:
            if holder is not None:
                await share.unlock(holder)

    async def _from_replicas(
        self, share: TokenShare, credentials: Credentials
    ) -> tuple[Token | None, str | None]:
        """A newer token another process fetched with these credentials (then none is
        requested), else the fetch lock: this process fetches while the others wait for its
        token, so N replicas make one token request between them (issue 17)."""
        deadline = time.monotonic() + self._wait_timeout
        while True:
            token = await self._newer_shared(share, credentials)
            if token is not None:
                return token, None
            holder = await share.lock()
            if holder is not None:
                token = await self._newer_shared(share, credentials)  # saved just before
                if token is not None:
                    await share.unlock(holder)
                return token, None if token is not None else holder
            if time.monotonic() >= deadline:
                return None, None  # the fetcher seems stuck: fetch alone
            await asyncio.sleep(BUSY_POLL)

    async def _newer_shared(self, share: TokenShare, credentials: Credentials) -> Token | None:
        """The shared token if it is not the one held here (a 401 may have rejected that)
        and still usable."""
        shared = await share.load(credentials)
        current = self._current
        if shared is None or (current is not None and current.value == shared.value):
            return None
        age = time.time() - shared.obtained_at
        token = Token(shared.value, shared.lifetime, self._clock() - age, self._rng.random())
        return token if token.usable_until > self._clock() else None

    async def _request(self, credentials: Credentials, rotation: str | None) -> Token:
        """Ask the token endpoint, as the schedule allows."""
        decision = await self._permission(credentials)
        if not decision.allowed:
            self._blocked(decision, credentials)
            raise TokenFetchError(
                decision.reason, rejected=decision.rejected, rate_limited=decision.rate_limited
            )
        answer = await recorded_request(self._schedule, decision, credentials, self._fetch)
        if isinstance(answer, TokenFetchError):
            await self._failed(answer, credentials, rotation)
            raise answer
        token = Token(answer.access_token, answer.expires_in, self._clock(), self._rng.random())
        if token.usable_until <= self._clock():
            error = TokenFetchError("the token endpoint sent a token that has already expired")
            await self._failed(error, credentials, rotation)
            raise error
        if self._metrics:
            self._metrics.token_fetches.labels("ok").inc()
        return self._hold(token, credentials, rotation, "token acquired")

    def _hold(
        self, token: Token, credentials: Credentials, rotation: str | None, event: str
    ) -> Token:
        """``token`` (fetched or taken from another replica) becomes the current one."""
        if credentials == self._credentials:
            self._rotation = None
        self._current = token
        if self._last_error is not None:
            event = "token recovered"
        if rotation is not None:
            event = "switched to the new credentials"
        self._failures = 0
        self._last_error = None
        self._next_attempt_at = 0.0
        expires = datetime.fromtimestamp(time.time() + token.lifetime, UTC)
        log.info(
            event,
            client_id=credentials.client_id,
            expires_in=round(token.lifetime),
            expires_at=expires.isoformat(timespec="seconds"),
        )
        return token

    async def _failed(
        self, exc: TokenFetchError, credentials: Credentials, rotation: str | None
    ) -> None:
        if self._metrics:
            self._metrics.token_fetches.labels("rejected" if exc.rejected else "error").inc()
        if credentials != self._credentials and not exc.rate_limited:
            # New credentials arrived meanwhile: this failure must not delay their first try.
            log.warning("token fetch with the previous credentials failed", reason=exc.reason)
            return
        if exc.rejected or exc.rate_limited:
            # The schedule says when to try again (a look, no slot taken).
            self._failures = 0
            have_token = self.valid_token() is not None
            decision = await self._schedule.ask(credentials, have_token=have_token, reserve=False)
            if decision.allowed:  # not after a rejection or a 429 with the default policy
                decision = Decision(False, until=self._schedule.now(), reason=exc.reason)
            self._blocked(decision, credentials, exc)
            if rotation is not None and exc.rejected and credentials == self._credentials:
                self._rotation = None
                log.error(
                    "the new client secret was rejected; still using the current token"
                    if self.valid_token() is not None
                    else "the new client secret was rejected",
                    client_id=self._credentials.client_id,
                    reason=exc.reason,
                    why=rotation,
                )
            return
        self._failures += 1
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (self._failures - 1))
        delay *= 0.5 + 0.5 * self._rng.random()  # equal jitter
        self._next_attempt_at = self._clock() + delay
        self._note(exc, delay)

    def _blocked(
        self, decision: Decision, credentials: Credentials, cause: TokenFetchError | None = None
    ) -> None:
        """Hold further attempts until the schedule allows one; remember why (for the 503s)."""
        if credentials != self._credentials and not decision.rate_limited:
            return  # about the previous credentials; the new ones are asked about afresh
        # The schedule's times are wall-clock (shared, persisted); ours are monotonic.
        until = decision.until + (self._clock() - self._schedule.now())
        token = self.valid_token()
        if math.isinf(until):
            until = token.usable_until if token is not None else self._clock()
            if credentials == self._credentials:
                self._rotation = None  # rejected before: no immediate attempt for it
        self._next_attempt_at = until
        error = TokenFetchError(
            decision.reason or (cause.reason if cause else "token request not allowed yet"),
            rejected=decision.rejected or bool(cause and cause.rejected),
            rate_limited=decision.rate_limited or bool(cause and cause.rate_limited),
        )
        self._note(error, max(0.0, until - self._clock()))

    def _note(self, exc: TokenFetchError, delay: float) -> None:
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
        if self._last_error is not None or (self._rotation and self._next_attempt_at > now):
            return max(0.0, self._next_attempt_at - now)
        if self._rotation is not None:
            return 0.0
        token = self.valid_token()
        return max(0.0, token.refresh_at - now) if token is not None else 0.0

    async def close(self) -> None:
        """Stop a fetch in flight, let go of the schedule's connections (at shutdown)."""
        if self._inflight is not None:
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError, TokenFetchError):
                await self._inflight
        await self._schedule.store.close()

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
