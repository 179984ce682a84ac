"""The held access token shared through Redis, sealed: N replicas make one token request
between them (issue 17).

Redis never holds the token in clear: it is sealed with AES-256-GCM under a key derived (HKDF-
SHA256) from the client secret, which Redis never sees, with the key's name as associated
data. A process with another secret cannot open it and fetches its own. While one process
fetches (a lock, ``SET NX PX``) the others wait for its token instead of sending their own
request. Loaded only with a Redis usage store (``cryptography`` costs ~9 MiB resident).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.exceptions import RedisError

from proxy.credentials import Credentials

log = structlog.get_logger("proxy.tokens")

PREFIX = "aspose-proxy:access-token:"
DEADLINE = 1.0  # seconds for one Redis round trip at most
FETCH_LOCK_MS = 30_000  # a fetcher that died lets the others fetch after this at most
INFO = b"aspose-proxy shared access token v1"

# KEYS[1] the fetch lock; ARGV[1] its holder's token. Deleted only by its holder.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class SharedToken:
    """A token as another process fetched it; times are wall-clock (UTC seconds)."""

    value: str = field(repr=False)
    lifetime: float
    obtained_at: float


def _key(credentials: Credentials, name: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=name.encode(), info=INFO)
    return hkdf.derive(credentials.secret.encode())


def seal(token: SharedToken, credentials: Credentials, name: str) -> str:
    """``token`` encrypted for the holders of ``credentials``' secret (base64 text)."""
    nonce = os.urandom(12)
    plain = json.dumps({"v": token.value, "l": token.lifetime, "at": token.obtained_at})
    sealed = AESGCM(_key(credentials, name)).encrypt(nonce, plain.encode(), name.encode())
    return base64.b64encode(nonce + sealed).decode()


def unseal(text: str, credentials: Credentials, name: str) -> SharedToken | None:
    """The token sealed in ``text``, or None (another secret, or not a sealed token)."""
    try:
        raw = base64.b64decode(text, validate=True)
        plain = AESGCM(_key(credentials, name)).decrypt(raw[:12], raw[12:], name.encode())
        data = json.loads(plain)
        return SharedToken(str(data["v"]), float(data["l"]), float(data["at"]))
    except (ValueError, InvalidTag, KeyError, TypeError):
        return None


class TokenShare:
    """The sealed token of one client_id in Redis, and the lock of the process fetching it.
    A Redis that fails costs nothing but the sharing: each process then fetches its own."""

    def __init__(self, client: aioredis.Redis, name: str) -> None:
        self._client = client
        self.name = PREFIX + name  # a digest of the client_id, as the schedule's key
        self._release = client.register_script(RELEASE)

    async def load(self, credentials: Credentials) -> SharedToken | None:
        try:
            async with asyncio.timeout(DEADLINE):
                text = await self._client.get(self.name)
        except (RedisError, TimeoutError):
            return None
        return unseal(text, credentials, self.name) if isinstance(text, str) else None

    async def save(
        self, value: str, lifetime: float, obtained_at: float, credentials: Credentials
    ) -> None:
        """Share a token this process fetched (``obtained_at``: wall-clock seconds)."""
        sealed = seal(SharedToken(value, lifetime, obtained_at), credentials, self.name)
        try:
            async with asyncio.timeout(DEADLINE):
                await self._client.set(self.name, sealed, ex=max(1, round(lifetime)))
        except (RedisError, TimeoutError) as exc:
            log.warning("access token not shared with the other replicas", cause=type(exc).__name__)

    async def lock(self) -> str | None:
        """The fetch lock's token if this process may fetch now; None while another fetches.
        A Redis that fails lets this process fetch (alone, as without sharing)."""
        holder = uuid.uuid4().hex
        try:
            async with asyncio.timeout(DEADLINE):
                taken = await self._client.set(
                    self.name + ":fetching", holder, nx=True, px=FETCH_LOCK_MS
                )
        except (RedisError, TimeoutError):
            return holder
        return holder if taken else None

    async def unlock(self, holder: str) -> None:
        try:
            async with asyncio.timeout(DEADLINE):
                await self._release(keys=[self.name + ":fetching"], args=[holder])
        except (RedisError, TimeoutError):
            pass  # it expires by itself
