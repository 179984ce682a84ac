"""The shared usage store and budget ledger in Redis: for several processes, workers, machines.

Counts are hashes per UTC hour (``HINCRBY``, so replicas add, never overwrite). Budget
reservations are one Lua script: check every pool and add to all of them, or to none, in one
atomic step, so no two replicas can both spend the last call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr

from proxy.usage.store import Batch, Bucket, Ledger, Row, current_hour, three

PREFIX = "aspose-proxy:"
HOUR_TTL = 400 * 86400  # a year of hourly counts is enough for any month view, and small
TIMEOUT = 2.0  # seconds: a slow Redis never holds a request long
SEP = "\t"
COUNTS = ("calls", "errors", "cached")  # hash field prefixes

# KEYS: the pools' counters; ARGV[1]: ttl; ARGV[1 + i]: the limit of KEYS[i].
RESERVE = """
for i, key in ipairs(KEYS) do
    local used = tonumber(redis.call('GET', key) or '0')
    if used + 1 > tonumber(ARGV[i + 1]) then
        return {-i}
    end
end
local values = {}
for i, key in ipairs(KEYS) do
    values[i] = redis.call('INCR', key)
    if redis.call('TTL', key) < 0 then
        redis.call('EXPIRE', key, ARGV[1])
    end
end
return values
"""


# KEYS: the rate limits' buckets (hashes t = tokens, s = stamp); ARGV[2i-1], ARGV[2i]: rate and
# burst of KEYS[i]. Redis's own clock: every replica sees one time. Take from all or from none.
TAKE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local levels = {}
for i, key in ipairs(KEYS) do
    local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
    local state = redis.call('HMGET', key, 't', 's')
    local level = burst
    if state[1] then
        level = math.min(burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate)
    end
    if level < 1 then
        return tostring((1 - level) / rate)
    end
    levels[i] = level
end
for i, key in ipairs(KEYS) do
    local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
    redis.call('HSET', key, 't', tostring(levels[i] - 1), 's', tostring(now))
    redis.call('EXPIRE', key, math.ceil(burst / rate) + 60)
end
return '0'
"""


class RedisStore:
    """``redis://host:port/db``; the password comes from ``usage_store_password``."""

    def __init__(self, url: str, password: SecretStr | None = None) -> None:
        self.description = url  # the settings refuse a password inside the URL
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            password=password.get_secret_value() if password else None,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            decode_responses=True,
        )
        self._reserve = self._client.register_script(RESERVE)
        self._take = self._client.register_script(TAKE)

    @property
    def ledger(self) -> Ledger | None:
        return self  # the counters live in Redis: reservations are atomic across replicas

    async def open(self) -> None:
        await self._client.ping()

    async def add(self, batch: Batch) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for (hour, client, product, kind), counts in batch.items():
                key = f"{PREFIX}usage:{hour}"
                field = SEP.join((client, product, kind))
                for what, value in zip(COUNTS, three(counts), strict=True):
                    if value:
                        pipe.hincrby(key, f"{what}{SEP}{field}", value)
                pipe.expire(key, HOUR_TTL)
            await pipe.execute()

    async def rows(self, since_hour: int) -> list[Row]:
        hours = range(since_hour, current_hour() + 1)
        async with self._client.pipeline(transaction=False) as pipe:
            for hour in hours:
                pipe.hgetall(f"{PREFIX}usage:{hour}")
            answers: list[dict[str, str]] = await pipe.execute()
        sums: dict[tuple[str, str, str], list[int]] = {}
        for answer in answers:
            for field, value in answer.items():
                what, _, key = field.partition(SEP)
                client, product, kind = key.split(SEP, 2)
                entry = sums.setdefault((client, product, kind), [0, 0, 0])
                entry[COUNTS.index(what)] += int(value)
        return sorted(Row(*key, *counts) for key, counts in sums.items())

    async def close(self) -> None:
        await self._client.aclose()

    # -- the ledger: budget counters ------------------------------------------------------

    async def reserve(self, keys: Sequence[str], limits: Sequence[int], ttl: int) -> list[int]:
        values: list[Any] = await self._reserve(
            keys=[PREFIX + k for k in keys], args=[ttl, *limits]
        )
        return [int(v) for v in values]

    async def release(self, keys: Sequence[str]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.decr(PREFIX + key)
            await pipe.execute()

    async def seed(self, key: str, value: int, ttl: int) -> None:
        await self._client.set(PREFIX + key, value, ex=ttl, nx=True)

    async def peek(self, keys: Sequence[str]) -> list[int]:
        values: list[bytes | str | None] = await self._client.mget([PREFIX + k for k in keys])
        return [int(v or 0) for v in values]

    async def take(self, buckets: Sequence[Bucket]) -> float:
        args: list[float] = []
        for bucket in buckets:
            args += (bucket.rate, bucket.burst)
        wait = await self._take(keys=[PREFIX + bucket.key for bucket in buckets], args=args)
        return float(wait)
