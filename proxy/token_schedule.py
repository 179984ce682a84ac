"""When the proxy may ask the token endpoint again: the failed-login budget, shared by workers.

Aspose Cloud locks a client out for 10 minutes after more than 5 failed token requests in 10
minutes (HTTP 429, ``Retry-After: 600``), for every service using that application. So:

- every token request takes a slot in a budget of ``Policy.budget`` (4) per ``window`` (600 s)
  *before* it is sent; a success or a transient failure (5xx, timeout, garbage) gives the slot
  back, a rejection (400/401 with an OAuth ``error``) or a 429 keeps it. At most 4 rejected
  requests per 10 minutes, whatever happens;
- credentials known to be rejected are retried on a slow schedule (30 s, then 150 s steps) and
  may use only ``budget - reserve`` slots: one is kept for a new secret, which is tried at once;
- credentials that were rejected get no such immediate attempt again until they change;
- a 429 blocks every token request until its ``Retry-After``;
- an untried secret is tried by one process at a time: the others wait for its outcome;
- an upstream 401 may start at most ``Policy.renewals`` (3) token requests per
  ``renewal_window`` (10 s): past that the 401 goes to the client as it is (issue 16).

The state lives in a :class:`FileStore` (a small JSON file guarded by ``fcntl.flock``, next to
the usage store, which every process on the host shares: ``run``, its workers, ``check``, and
the next ``run`` after a restart) or Redis (``proxy/token_schedule_redis.py``: every replica
using that Redis); a :class:`MemoryStore` serves one process (the demo, unit tests, or a state
directory that cannot be written). ``open_schedule()`` (below) is the one place that picks.
The schedule is asynchronous because the Redis engine waits on the network: a slow or
unreachable Redis must never stall the event loop (``/healthz``, calls with a token in hand).
The file and memory engines answer at once (a ``flock`` held for a read and a write).
Times are wall-clock (``time.time()``, UTC seconds): the state is shared between machines and
outlives a reboot, which a monotonic clock does not. A store that cannot reach its shared state
says so with ``degraded``; the schedule is then conservative (``Policy.conservative``).
Credentials are stored only as salted fingerprints (``proxy/token_fingerprints.py``) made
with the state's own salt, never as secrets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from proxy.credentials import Credentials
from proxy.settings import Settings
from proxy.token_fingerprints import Fingerprints
from proxy.usage.rules import sqlite_path, state_dir

if TYPE_CHECKING:  # loaded only with Redis (cryptography is heavy)
    from proxy.token_sharing import TokenShare

log = structlog.get_logger("proxy.tokens")

Clock = Callable[[], float]
Outcome = Literal["ok", "error", "rejected", "rate_limited"]
# An untried secret another process is trying: how long to wait for its outcome at most.
PENDING_STALE = 30.0
REMEMBERED_CREDENTIALS = 16
CLOCK_SKEW = 300.0  # seconds another machine's clock may be ahead of ours


@dataclass(frozen=True, slots=True)
class Policy:
    """The numbers of the etiquette; the defaults are the safe ones (tests scale them down)."""

    budget: int = 4  # token requests that may fail as rejected per window
    window: float = 600.0
    reserve: int = 1  # slots the slow schedule leaves free for a new secret
    first_step: float = 30.0  # wait after the first rejection
    step: float = 150.0  # wait after each further rejection
    default_retry_after: float = 600.0  # a 429 without a usable Retry-After
    renewals: int = 3  # token requests an upstream 401 may start per renewal_window (issue 16)
    renewal_window: float = 10.0

    @property
    def conservative(self) -> Policy:
        """While the shared state is out of reach (issue 17): at most 1 failed request per
        window in this process, and credentials once rejected are not tried again until they
        change (no slot is left for them)."""
        return dataclasses.replace(self, budget=1, reserve=1)


@dataclass(frozen=True, slots=True)
class Decision:
    """``allowed`` with a ``ticket``; else ``busy`` (ask again soon) or blocked until ``until``.

    ``until`` is ``math.inf`` for rejected credentials while a valid token is held: they are
    not tried again until they change (or the token runs out).
    """

    allowed: bool
    ticket: str = ""
    busy: bool = False
    until: float = 0.0
    reason: str = ""
    rejected: bool = False
    rate_limited: bool = False


@dataclass(frozen=True, slots=True)
class Standing:
    """What the schedule says now, whichever worker or replica made it so (issue 17): for
    ``/readyz`` and ``/_proxy/``. Times are the schedule's clock (wall-clock seconds)."""

    failed: int  # failed token requests in the current window
    budget: int  # of at most this many
    window: float
    blocked_until: float  # a 429's block (0.0: none)
    reason: str  # the 429's, or ""
    degraded: bool  # the shared state is out of reach: this process's conservative schedule

    def as_dict(self, clock: Clock) -> dict[str, Any]:
        """The JSON shape shown to operators."""
        shown: dict[str, Any] = {
            "failed_token_requests": self.failed,
            "failure_budget": self.budget,
            "window_seconds": round(self.window),
        }
        if self.blocked_until > clock():
            shown["blocked_until"] = wall_time(self.blocked_until, clock)
            shown["blocked_reason"] = self.reason
        if self.degraded:
            shown["shared_state"] = "unreachable: conservative local schedule"
        return shown

    def notable(self, clock: Clock) -> bool:
        """Whether anything here is worth showing beside a ready token."""
        return bool(self.failed or self.degraded or self.blocked_until > clock())


class Store(Protocol):
    # True while the store works from a local copy because its shared state is out of reach.
    degraded: bool
    # Names the credentials in the state (under its salt), and again under a new one.
    fingerprints: Fingerprints
    # The held token shared with the other replicas (Redis only), so they fetch one between them.
    token_share: TokenShare | None

    def transaction(self) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
        """The state, exclusively; changes made to it are kept when the block ends."""

    async def close(self) -> None:
        """Let go of connections (at shutdown)."""


def new_state() -> dict[str, Any]:
    """A fresh schedule state (every engine stores this shape)."""
    return {
        "salt": secrets.token_hex(16),
        "attempts": [],  # {"id", "at", "fp", "state": pending|rejected|rate_limited}
        "rejected": {},  # fingerprint -> {"at", "reason"}
        "confirmed": {},  # fingerprint -> time of the last success
        "streak": 0,  # rejections since the last success
        "slow_next": 0.0,
        "blocked_until": 0.0,
        "blocked_reason": "",
        "renewals": [],  # times of the token requests started by an upstream 401
    }


class MemoryStore:
    """The schedule of a single process."""

    degraded = False
    token_share: TokenShare | None = None

    def __init__(self) -> None:
        self._state = new_state()
        self.fingerprints = Fingerprints()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[dict[str, Any]]:
        yield self._state

    async def close(self) -> None:
        pass


class FileStore:
    """The schedule in a JSON file, shared by the processes that open the same path.

    The lock is held for a read and a write of a few hundred bytes; the kernel drops it if a
    process dies holding it. An unreadable file starts a fresh state (with a warning).
    """

    degraded = False

    token_share: TokenShare | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fingerprints = Fingerprints()

    async def close(self) -> None:
        pass

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[dict[str, Any]]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = b""
            while chunk := os.read(fd, 65536):
                raw += chunk
            state = self._parse(raw)
            yield state
            data = json.dumps(state, separators=(",", ":")).encode()
            if data != raw:  # a look (/readyz, /_proxy/) changes nothing: no write
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
        finally:
            os.close(fd)  # releases the lock

    def _parse(self, raw: bytes) -> dict[str, Any]:
        if not raw:
            return new_state()
        try:
            state = json.loads(raw)
        except ValueError:
            state = None
        fresh = new_state()
        if not isinstance(state, dict) or not set(state) <= set(fresh):
            log.warning("token schedule file unreadable; starting afresh", path=str(self.path))
            return fresh
        return fresh | state  # a file from an older version lacks the newer keys


def wall_time(moment: float, clock: Clock) -> str:
    """A clock reading as UTC wall time, for messages ("no token request before ...")."""
    if math.isinf(moment):
        return "never"
    wall = time.time() + (moment - clock())
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Schedule:
    """Decides whether a token request may be sent now, and learns from its outcome."""

    def __init__(self, store: Store, policy: Policy | None = None, clock: Clock = time.time):
        self.store = store
        self.policy = policy or Policy()
        self._clock = clock

    def now(self) -> float:
        """The schedule's clock (wall-clock seconds unless a test gives another)."""
        return self._clock()

    def _fingerprint(self, state: dict[str, Any], credentials: Credentials) -> str:
        """The name of ``credentials`` in ``state``: salted with the state's own salt, so a
        state whose salt changed (Redis back after an outage) names them as the others do."""
        return self.store.fingerprints.of(state["salt"], credentials)

    async def ask(
        self, credentials: Credentials, *, have_token: bool, reserve: bool = True
    ) -> Decision:
        """May ``credentials`` be sent now? If so (and ``reserve``) a slot is taken: report
        the outcome with ``record``. ``reserve=False`` only looks (when is the next attempt?)."""
        now = self._clock()
        async with self.store.transaction() as state:
            fp = self._fingerprint(state, credentials)
            policy = self.policy.conservative if self.store.degraded else self.policy
            self._prune(state, now)
            if now < state["blocked_until"]:
                return Decision(
                    False, until=state["blocked_until"], reason=state["blocked_reason"],
                    rate_limited=True,
                )  # fmt: skip
            attempts = state["attempts"]
            # Requests still out hold their slot; only failures (or requests out for too long,
            # e.g. from a worker that died) block until the window frees one. Otherwise: wait.
            failed = [a for a in attempts if a["state"] != "pending" or _stale(a, now)]
            in_flight = len(attempts) - len(failed)
            rejected = state["rejected"].get(fp)
            limit = policy.budget
            if rejected is not None:
                reason = rejected["reason"]
                if have_token:
                    return Decision(
                        False, until=math.inf, rejected=True,
                        reason=f"{reason}; not tried again until the secret changes",
                    )  # fmt: skip
                limit = policy.budget - policy.reserve
                until = max(state["slow_next"], self._slot_free_at(failed, limit))
                if math.isinf(until):  # no slot for it: the conservative schedule
                    return Decision(
                        False, until=until, rejected=True,
                        reason=f"{reason}; not tried again until the secret changes",
                    )  # fmt: skip
                if now < until:
                    return Decision(
                        False, until=until, rejected=True,
                        reason=f"{reason}; next attempt at {wall_time(until, self._clock)}, "
                        f"or at once when the secret changes",
                    )  # fmt: skip
            else:
                free_at = self._slot_free_at(failed, limit)
                if now < free_at:
                    return Decision(
                        False, until=free_at,
                        reason=f"{policy.budget} token requests failed within "
                        f"{policy.window:.0f} s; next attempt at {wall_time(free_at, self._clock)}",
                    )  # fmt: skip
                trying = any(a["fp"] == fp and a not in failed for a in attempts)
                if trying and fp not in state["confirmed"]:  # its outcome will tell us
                    return Decision(False, busy=True, until=now + 0.2)
            if len(failed) + in_flight >= limit:
                return Decision(False, busy=True, until=now + 0.2)
            if not reserve:
                return Decision(True)
            ticket = uuid.uuid4().hex
            attempts.append({"id": ticket, "at": now, "fp": fp, "state": "pending"})
            return Decision(True, ticket=ticket)

    async def standing(self) -> Standing:
        """Failures in the window and a 429 block, as the (shared) state holds them now."""
        now = self._clock()
        async with self.store.transaction() as state:
            policy = self.policy.conservative if self.store.degraded else self.policy
            self._prune(state, now)
            failed = sum(1 for a in state["attempts"] if a["state"] != "pending")
            return Standing(
                failed=failed,
                budget=policy.budget,
                window=policy.window,
                blocked_until=state["blocked_until"],
                reason=state["blocked_reason"],
                degraded=self.store.degraded,
            )

    async def may_renew(self) -> bool:
        """May an upstream 401 start a token request now? Takes one of ``policy.renewals``
        per ``renewal_window`` (shared like the rest), or answers False when they are used up:
        a client whose calls keep getting 401 must not make a token request per call."""
        now = self._clock()
        window = self.policy.renewal_window
        async with self.store.transaction() as state:
            recent = [t for t in state["renewals"] if now - window < t <= now + 1]
            allowed = len(recent) < self.policy.renewals
            if allowed:
                recent.append(now)
            state["renewals"] = recent
        return allowed

    async def record(
        self,
        ticket: str,
        credentials: Credentials,
        outcome: Outcome,
        *,
        reason: str = "",
        retry_after: float | None = None,
    ) -> None:
        """The outcome of the request ``ticket`` allowed."""
        now = self._clock()
        policy = self.policy
        async with self.store.transaction() as state:
            fp = self._fingerprint(state, credentials)
            attempts = state["attempts"]
            mine = next((a for a in attempts if a["id"] == ticket), None)
            if outcome in ("ok", "error"):
                if mine is not None:
                    attempts.remove(mine)
                if outcome == "ok":
                    state["rejected"].pop(fp, None)
                    state["confirmed"][fp] = now
                    state["streak"] = 0
                    state["slow_next"] = 0.0
            elif outcome == "rejected":
                if mine is not None:
                    mine["state"] = "rejected"
                state["confirmed"].pop(fp, None)
                state["rejected"][fp] = {"at": now, "reason": reason}
                state["streak"] += 1
                step = policy.first_step if state["streak"] == 1 else policy.step
                state["slow_next"] = now + step
            else:
                if mine is not None:
                    mine["state"] = "rate_limited"
                wait = policy.default_retry_after if retry_after is None else retry_after
                until = now + max(0.0, wait)
                if until > state["blocked_until"]:
                    state["blocked_until"] = until
                    state["blocked_reason"] = (
                        f"the token endpoint answered 429 Too Many Requests (the client is "
                        f"locked out for failed logins); no token request before "
                        f"{wall_time(until, self._clock)}"
                    )
            self._prune(state, now)

    def _slot_free_at(self, attempts: list[dict[str, Any]], limit: int) -> float:
        """When fewer than ``limit`` of ``attempts`` will be in the window (0: now)."""
        if limit <= 0:
            return math.inf
        times = sorted(a["at"] for a in attempts)
        if len(times) < limit:
            return 0.0
        return float(times[len(times) - limit]) + self.policy.window

    def _prune(self, state: dict[str, Any], now: float) -> None:
        window = self.policy.window
        # A time far in the future comes from a wrong clock: forget it (replicas on other
        # machines may be a little ahead).
        state["attempts"] = [
            a for a in state["attempts"] if now - window < a["at"] <= now + CLOCK_SKEW
        ]
        if state["blocked_until"] > now + 86400:
            state["blocked_until"] = 0.0
        for key in ("rejected", "confirmed"):
            entries = state[key]
            if len(entries) > REMEMBERED_CREDENTIALS:
                newest = sorted(entries, key=lambda k: _at(entries[k]))[-REMEMBERED_CREDENTIALS:]
                state[key] = {k: entries[k] for k in newest}


def _stale(attempt: dict[str, Any], now: float) -> bool:
    return bool(now - attempt["at"] >= PENDING_STALE)


def _at(entry: Any) -> float:
    return float(entry["at"] if isinstance(entry, dict) else entry)


SCHEDULE_FILE = "token-schedule.json"


def schedule_file(settings: Settings) -> Path:
    """Where the schedule persists without Redis: next to a SQLite usage store, else in the
    state directory (``$XDG_STATE_HOME/aspose-proxy``; ``/var/lib/aspose-proxy`` in the image)."""
    if settings.usage_store.startswith("sqlite://"):
        return sqlite_path(settings.usage_store).parent / SCHEDULE_FILE
    return state_dir() / SCHEDULE_FILE


def open_schedule(settings: Settings, policy: Policy | None = None) -> Schedule:
    """The one token schedule for ``settings``: used by ``run``, its workers and ``check`` alike,
    so neither a restart, a worker nor a ``check`` can add failed token requests (issue 17/18).

    Redis when the usage store is Redis (every worker and replica using it), else a state file
    (every process on this host); only when that file cannot be written, this process's memory.
    """
    store: Store
    if settings.usage_store.startswith(("redis://", "rediss://")):
        # Imported here: the redis client is loaded only by the runs that use it (start-up).
        from proxy.token_schedule_redis import RedisScheduleStore

        store = RedisScheduleStore(
            settings.usage_store, settings.usage_store_password, settings.client_id, new_state
        )
    else:
        path = schedule_file(settings)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            store = FileStore(path)
        except OSError as exc:
            log.warning(
                "token schedule file cannot be written; this process keeps its own schedule",
                path=str(path),
                error=exc.strerror or str(exc),
            )
            store = MemoryStore()
    return Schedule(store, policy)
