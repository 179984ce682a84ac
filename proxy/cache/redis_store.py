"""The Redis store: one cache shared by every replica.

Use a Redis of its own (not the usage store's) with ``maxmemory`` and
``maxmemory-policy allkeys-lru``: Redis then evicts the least recently used entries itself,
while the usage counters must never be evicted (docs/cache.md). An entry is two keys, the
metadata and the body, both with the TTL. The body is appended to a temporary key as the
answer streams, then renamed into place with the metadata in one MULTI/EXEC, so a reader never
sees half an entry; a body evicted apart from its metadata fails the length check (a miss).
Bodies are read back in ranges (``GETRANGE``), never whole, and their hash checked.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from pydantic import SecretStr

from proxy.cache.store import CHUNK, CorruptEntry, EntryMeta, Stats, body_digest
from proxy.redis_url import connect

PREFIX = "aspose-proxy:cache:"
TIMEOUT = 5.0
TEMP_TTL = 3600  # an abandoned temporary body (a crashed writer) goes by itself


def _meta_key(key: str) -> str:
    return f"{PREFIX}{key}:m"


def _body_key(key: str) -> str:
    return f"{PREFIX}{key}:b"


class RedisHit:
    def __init__(self, store: RedisStore, key: str, meta: EntryMeta) -> None:
        self.meta = meta
        self._store = store
        self._key = key

    async def body(self) -> AsyncIterator[bytes]:
        client = self._store.client
        digest = body_digest()
        offset, size = 0, self.meta.size
        while offset < size:
            end = min(offset + CHUNK, size) - 1
            chunk = await client.getrange(_body_key(self._key), offset, end)
            if isinstance(chunk, str):  # only with decode_responses, which this client lacks
                chunk = chunk.encode("latin-1")
            if not chunk:
                break
            offset += len(chunk)
            digest.update(chunk)
            if offset >= size and digest.hexdigest() != self.meta.digest:
                break
            yield chunk
        if offset != size or digest.hexdigest() != self.meta.digest:
            await self._store.remove(self._key)
            raise CorruptEntry(f"cache entry {self._key[:12]} does not match its hash")

    async def send(self, request: web.Request, response: web.StreamResponse) -> None:
        async for chunk in self.body():
            await response.write(chunk)

    async def close(self) -> None:
        return None


class RedisWriter:
    def __init__(self, store: RedisStore, key: str) -> None:
        self._store = store
        self._key = key
        self._temp = f"{PREFIX}tmp:{key}:{secrets.token_hex(4)}"
        self._digest = body_digest()
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.size += len(chunk)
        client = self._store.client
        async with client.pipeline(transaction=False) as pipe:
            pipe.append(self._temp, chunk)
            pipe.expire(self._temp, TEMP_TTL)
            await pipe.execute()

    async def commit(self, status: int, headers: tuple[tuple[str, str], ...]) -> None:
        meta = EntryMeta(status, headers, self.size, self._digest.hexdigest(), time.time())
        ttl = self._store.ttl
        async with self._store.client.pipeline(transaction=True) as pipe:
            if self.size:
                pipe.rename(self._temp, _body_key(self._key))
                pipe.expire(_body_key(self._key), ttl)
            else:  # APPEND of nothing creates no key
                pipe.set(_body_key(self._key), b"", ex=ttl)
            pipe.set(_meta_key(self._key), meta.to_json(), ex=ttl)
            await pipe.execute()

    async def abort(self) -> None:
        await self._store.client.delete(self._temp)


class RedisStore:
    """``redis://host:port/db``; the password comes from ``cache_store_password``."""

    def __init__(self, url: str, password: SecretStr | None, *, ttl: int) -> None:
        self.description = url  # the settings refuse a password inside the URL
        self.ttl = ttl
        self.evictions = 0  # Redis evicts by itself (maxmemory): its INFO counts them
        self.client: aioredis.Redis = connect(url, password, TIMEOUT)

    async def open(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()

    async def get(self, key: str, now: float) -> RedisHit | None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(_meta_key(key))
            pipe.strlen(_body_key(key))
            raw, body_size = await pipe.execute()
        if raw is None:
            return None
        try:
            meta = EntryMeta.from_json(raw)
        except (ValueError, KeyError, TypeError):
            await self.remove(key)
            return None
        if body_size != meta.size or now - meta.stored_at > self.ttl:
            await self.remove(key)
            return None
        return RedisHit(self, key, meta)

    async def writer(self, key: str) -> RedisWriter:
        return RedisWriter(self, key)

    async def remove(self, key: str) -> None:
        await self.client.delete(_meta_key(key), _body_key(key))

    async def _keys(self) -> list[bytes]:
        return [k async for k in self.client.scan_iter(match=f"{PREFIX}*:m", count=1000)]

    async def stats(self) -> Stats:
        metas = await self._keys()
        async with self.client.pipeline(transaction=False) as pipe:
            for meta_key in metas:
                pipe.strlen(meta_key)
                pipe.strlen(meta_key[: -len(b":m")] + b":b")
            sizes = await pipe.execute()
        return Stats(len(metas), sum(int(size) for size in sizes))

    def counted(self) -> None:
        return None

    async def clear(self) -> int:
        metas = await self._keys()
        for meta_key in metas:
            await self.client.delete(meta_key, meta_key[: -len(b":m")] + b":b")
        return len(metas)
