"""The token schedule's state in Redis: one schedule for every worker and replica (issue 17).

Aspose locks an application out after more than 5 failed token requests in 10 minutes, whoever
sends them, so replicas must share the failure budget, the 429 block, the rejected-secret
fingerprints and the 401-renewal cap. The state is the same small JSON document the file engine
keeps, under ``aspose-proxy:token-schedule:<fingerprint of the client_id>`` (never the secret;
the credentials inside are salted fingerprints, as in the file).

A transaction holds a lock key (``SET NX PX``) while the schedule reads and decides, and the
write is one Lua script that stores the state and drops the lock only if this process still
holds it: a holder that stalled past the lock's expiry writes nothing, so no update is lost.

When Redis cannot be reached the schedule still answers, from this process's own copy of the
last state it saw, and ``degraded`` tells the schedule to be conservative (at most 1 failed
token request per window per process; a rejected secret not tried again until it changes).
Redis is asked again every ``RETRY_EVERY`` seconds; once it is back, what this process learnt
meanwhile (its failed attempts, rejections, a 429 block) is merged into the shared state, its
fingerprints made again under the shared salt when it had to make its own (it started while
Redis was away). One log line when the outage starts, one when it ends.

The held access token is shared through the same Redis (``proxy/token_sharing.py``, sealed),
so the replicas make one token request between them.

The client is ``redis.asyncio``: a slow or black-holed Redis never stalls the event loop, so
``/healthz`` and calls with a token in hand are answered meanwhile (a token request, a
401-driven renewal, ``/readyz`` and ``/_proxy/`` wait for the schedule). Reaching the state
takes at most ``DEADLINE`` seconds whatever Redis does (a reply trickling in byte by byte
included); then the local schedule answers without asking for ``RETRY_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from pydantic import SecretStr
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from proxy.redis_url import connect
from proxy.token_fingerprints import Fingerprints, client_digest
from proxy.token_sharing import TokenShare

log = structlog.get_logger("proxy.token_schedule")

PREFIX = "aspose-proxy:token-schedule:"
TIMEOUT = 0.25  # seconds: one socket operation waits this long at most
DEADLINE = 1.0  # seconds: taking the lock and reading the state, or writing it, at most
LOCK_MS = 2000  # a lock outlives a holder that died by this much at most
LOCK_WAIT = 0.5  # seconds to wait for another process's transaction before giving up
RETRY_EVERY = 5.0  # seconds between attempts to reach Redis during an outage
STATE_TTL = 2 * 86400  # no entry of the state matters longer than a day (a 429's cap)

# KEYS[1] the state, KEYS[2] its lock; ARGV[1] the lock's token, ARGV[2] the new state or ''
# (unchanged), ARGV[3] the state's ttl. Written only by the lock's holder.
WRITE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return 0
end
if ARGV[2] ~= '' then
    redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
redis.call('DEL', KEYS[2])
return 1
"""


class StateLost(Exception):
    """This process's lock expired before it wrote: its decision was not recorded."""


def state_key(client_id: str) -> str:
    """The Redis key of ``client_id``'s schedule."""
    return PREFIX + client_digest(client_id)


class RedisScheduleStore:
    """The schedule's state in Redis, shared by every process that uses the same Redis."""

    def __init__(
        self,
        url: str,
        password: SecretStr | None,
        client_id: str,
        new_state: Callable[[], dict[str, Any]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = connect(url, password, TIMEOUT, decode_responses=True)
        self._write = self._client.register_script(WRITE)
        self.key = state_key(client_id)
        self._new_state = new_state
        self._clock = clock
        self.fingerprints = Fingerprints()
        self.token_share: TokenShare | None = TokenShare(self._client, client_digest(client_id))
        self.degraded = False  # Redis unreachable: the schedule is conservative
        self._local: dict[str, Any] | None = None  # the last state seen, then the outage's own
        self._known: set[str] = set()  # attempt ids already in Redis when the outage began
        self._retry_at = 0.0

    async def close(self) -> None:
        await self._client.aclose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[dict[str, Any]]:
        if self.degraded and self._clock() < self._retry_at:
            yield self._fallback()
            return
        try:
            async with asyncio.timeout(DEADLINE):
                lock = await self._lock()
                raw = await self._client.get(self.key)
        except (RedisError, TimeoutError) as exc:
            self._outage(exc)
            yield self._fallback()
            return
        state = self._parse(raw)
        before = raw if isinstance(raw, str) else ""  # a fresh state (a new salt) is written
        if self.degraded:
            self._merge_outage_into(state)
        try:
            yield state
        except BaseException:
            with contextlib.suppress(RedisError, TimeoutError):  # nothing written, lock let go
                await self._release(lock, "")
            raise
        after = json.dumps(state, sort_keys=True)
        try:
            written = await self._release(lock, "" if after == before else after)
            if not written:
                raise StateLost("the token schedule's lock expired before its write")
        except (RedisError, TimeoutError, StateLost) as exc:
            self._local = state  # what was decided here still holds for this process
            self._outage(exc)
        else:
            self._local = copy.deepcopy(state)
            if self.degraded:
                self.degraded = False
                log.warning("token schedule store reachable again; shared schedule resumed")

    async def _release(self, lock: str, state: str) -> bool:
        """Write ``state`` (unless '') and let go of ``lock``: False if it was no longer ours."""
        async with asyncio.timeout(DEADLINE):
            written = await self._write(
                keys=[self.key, self.key + ":lock"], args=[lock, state, STATE_TTL]
            )
        return bool(written)

    async def _lock(self) -> str:
        """Take the state's lock (wait up to ``LOCK_WAIT`` for another holder)."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + LOCK_WAIT
        while not await self._client.set(self.key + ":lock", token, nx=True, px=LOCK_MS):
            if time.monotonic() > deadline:
                raise RedisTimeout("the token schedule's lock stayed taken")
            await asyncio.sleep(0.005)
        return token

    def _parse(self, raw: Any) -> dict[str, Any]:
        fresh = self._new_state()
        if isinstance(raw, str):
            with contextlib.suppress(ValueError):
                state = json.loads(raw)
                if isinstance(state, dict) and set(state) <= set(fresh):
                    return fresh | state  # a state from an older version lacks newer keys
            log.warning("token schedule in Redis unreadable; starting afresh", key=self.key)
        if self._local is not None:
            fresh["salt"] = self._local["salt"]  # fingerprints made meanwhile stay valid
        return fresh

    def _fallback(self) -> dict[str, Any]:
        if self._local is None:
            self._local = self._new_state()
        return self._local

    def _outage(self, exc: Exception) -> None:
        self._retry_at = self._clock() + RETRY_EVERY
        if self.degraded:
            return
        self.degraded = True
        local = self._fallback()
        self._known = {attempt["id"] for attempt in local["attempts"]}
        log.error(
            "token schedule store unreachable; conservative local schedule until it is back "
            "(at most 1 failed token request per 10 minutes in this process)",
            key=self.key,
            cause=type(exc).__name__,
        )

    def _merge_outage_into(self, state: dict[str, Any]) -> None:
        """What this process learnt while Redis was away goes into the shared state, named
        under the shared salt (a process that started during the outage made its own)."""
        local = self._local
        if local is None:
            return
        old, new = local["salt"], state["salt"]

        def rename(fp: str) -> str | None:
            return fp if old == new else self.fingerprints.rename(fp, old, new)

        present = {attempt["id"] for attempt in state["attempts"]}
        for attempt in local["attempts"]:
            if attempt["id"] not in self._known and attempt["id"] not in present:
                # An attempt counts against the budget even if its credentials are forgotten.
                state["attempts"].append(attempt | {"fp": rename(attempt["fp"]) or ""})
        for local_fp, entry in local["rejected"].items():
            fp = rename(local_fp)
            if fp is not None and (
                fp not in state["rejected"] or state["rejected"][fp]["at"] < entry["at"]
            ):
                state["rejected"][fp] = entry
        if local["blocked_until"] > state["blocked_until"]:
            state["blocked_until"] = local["blocked_until"]
            state["blocked_reason"] = local["blocked_reason"]
