"""The shared usage store and budget ledger in Redis: for several processes, workers, machines.

Counts are hashes per application and UTC hour (``HINCRBY``, so replicas add, never
overwrite); those written before they were kept per application (``usage:<hour>``) are read
by every application. Budget reservations are one Lua script: check every pool and add to all
of them, or to none, in one atomic step, so no two replicas can both spend the last call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr

from proxy.redis_url import connect
from proxy.usage.store import (
    EVERY_APPLICATION,
    LEASE_SHARE,
    Batch,
    Bucket,
    Ledger,
    Row,
    app_key,
    current_hour,
    three,
)

PREFIX = "aspose-proxy:"
HOUR_TTL = 400 * 86400  # a year of hourly counts is enough for any month view, and small
TIMEOUT = 2.0  # seconds: a slow Redis never holds a request long
SEP = "\t"
COUNTS = ("calls", "errors", "cached")  # hash field prefixes

# KEYS[1..c]: the pools' counters, then KEYS[c + i]: the legacy key of KEYS[i] (store.app_key),
# whose count a counter that does not exist yet starts from; ARGV[1]: ttl; ARGV[2]: most;
# ARGV[2 + i]: the limit of KEYS[i]; ARGV[c + 3]: LEASE_SHARE. Adds n to every pool (1 <= n <=
# most, at most a LEASE_SHARE-th of the tightest pool's room, as lease_size says) or to none:
# {n, values...} or {-i}.
RESERVE = """
local c = #KEYS / 2
local used = {}
local room = nil
for i = 1, c do
    used[i] = tonumber(redis.call('GET', KEYS[i]) or redis.call('GET', KEYS[c + i]) or '0')
    local free = tonumber(ARGV[i + 2]) - used[i]
    if free < 1 then
        return {-i}
    end
    if room == nil or free < room then
        room = free
    end
end
local share = tonumber(ARGV[c + 3])
local n = math.max(1, math.min(tonumber(ARGV[2]), math.floor(room / share)))
local values = {n}
for i = 1, c do
    values[i + 1] = used[i] + n
    redis.call('SET', KEYS[i], values[i + 1], 'KEEPTTL')
    if redis.call('TTL', KEYS[i]) < 0 then
        redis.call('EXPIRE', KEYS[i], ARGV[1])
    end
end
return values
"""


# KEYS: the rate limits' buckets (hashes t = tokens, s = stamp); ARGV[1]: most; ARGV[2]:
# LEASE_SHARE; ARGV[2i+1], ARGV[2i+2]: rate and burst of KEYS[i]. Redis's own clock: every
# replica sees one time. Takes n tokens (as RESERVE's n) from every bucket or from none:
# {n, '0'}, or {0, seconds until the short bucket has a token}.
TAKE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local levels = {}
local room = nil
for i, key in ipairs(KEYS) do
    local rate, burst = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
    local state = redis.call('HMGET', key, 't', 's')
    local level = burst
    if state[1] then
        level = math.min(burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate)
    end
    if level < 1 then
        return {0, tostring((1 - level) / rate)}
    end
    levels[i] = level
    if room == nil or level < room then
        room = level
    end
end
local n = math.max(1, math.min(tonumber(ARGV[1]), math.floor(room / tonumber(ARGV[2]))))
for i, key in ipairs(KEYS) do
    local rate, burst = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
    redis.call('HSET', key, 't', tostring(levels[i] - n), 's', tostring(now))
    redis.call('EXPIRE', key, math.ceil(burst / rate) + 60)
end
return {n, '0'}
"""


# KEYS[1]: a counter, KEYS[2]: its legacy key; ARGV[1]: calls counted, ARGV[2]: ttl. Starts a
# counter that does not exist at the larger of the calls counted and its legacy count.
SEED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    local legacy = tonumber(redis.call('GET', KEYS[2]) or '0')
    redis.call('SET', KEYS[1], math.max(tonumber(ARGV[1]), legacy), 'EX', ARGV[2])
end
return 0
"""


class RedisStore:
    """``redis://host:port/db``; the password comes from ``usage_store_password``. Budget
    counters and rate buckets are ``application``'s own (``store.app_key``)."""

    def __init__(self, url: str, password: SecretStr | None = None, application: str = "") -> None:
        self.description = url  # the settings refuse a password inside the URL
        self._application = application
        self._client: aioredis.Redis = connect(url, password, TIMEOUT, decode_responses=True)
        self._reserve = self._client.register_script(RESERVE)
        self._take = self._client.register_script(TAKE)
        self._seed = self._client.register_script(SEED)

    def _key(self, key: str) -> str:
        return PREFIX + app_key(self._application, key)

    @property
    def ledger(self) -> Ledger | None:
        return self  # the counters live in Redis: reservations are atomic across replicas

    async def open(self) -> None:
        await self._client.ping()

    async def add(self, batch: Batch) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for (hour, client, product, kind), counts in batch.items():
                key = f"{PREFIX}usage:{app_key(self._application, str(hour))}"
                field = SEP.join((client, product, kind))
                for what, value in zip(COUNTS, three(counts), strict=True):
                    if value:
                        pipe.hincrby(key, f"{what}{SEP}{field}", value)
                pipe.expire(key, HOUR_TTL)
            await pipe.execute()

    async def rows(self, since_hour: int) -> list[Row]:
        hours = range(since_hour, current_hour() + 1)
        applications = await self._applications()
        async with self._client.pipeline(transaction=False) as pipe:
            for hour in hours:  # the application's counts, and those from before the upgrade
                names = [*(app_key(app, str(hour)) for app in applications), str(hour)]
                for name in dict.fromkeys(names):
                    pipe.hgetall(f"{PREFIX}usage:{name}")
            answers: list[dict[str, str]] = await pipe.execute()
        sums: dict[tuple[str, str, str], list[int]] = {}
        for answer in answers:
            for field, value in answer.items():
                what, _, key = field.partition(SEP)
                client, product, kind = key.split(SEP, 2)
                entry = sums.setdefault((client, product, kind), [0, 0, 0])
                entry[COUNTS.index(what)] += int(value)
        return sorted(Row(*key, *counts) for key, counts in sums.items())

    async def _applications(self) -> list[str]:
        """This store's application; for ``EVERY_APPLICATION``, each that wrote counts."""
        if self._application != EVERY_APPLICATION:
            return [self._application]
        found = set()
        async for key in self._client.scan_iter(f"{PREFIX}usage:app:*", count=1000):
            found.add(key.removeprefix(f"{PREFIX}usage:app:").rpartition(":")[0])
        return sorted(found)

    async def close(self) -> None:
        await self._client.aclose()

    # -- the ledger: budget counters ------------------------------------------------------

    async def reserve(
        self, keys: Sequence[str], limits: Sequence[int], ttl: int, most: int = 1
    ) -> list[int]:
        own = [self._key(k) for k in keys]
        values: list[Any] = await self._reserve(
            keys=[*own, *(PREFIX + k for k in keys)], args=[ttl, most, *limits, LEASE_SHARE]
        )
        return [int(v) for v in values]

    async def release(self, keys: Sequence[str], count: int = 1) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.decrby(self._key(key), count)
            await pipe.execute()

    async def seed(self, key: str, value: int, ttl: int) -> None:
        await self._seed(keys=[self._key(key), PREFIX + key], args=[value, ttl])

    async def peek(self, keys: Sequence[str]) -> list[int]:
        own = [self._key(k) for k in keys]
        found: list[bytes | str | None] = await self._client.mget(
            [*own, *(PREFIX + k for k in keys)]
        )
        values, legacy = found[: len(keys)], found[len(keys) :]
        return [
            int(v if v is not None else old or 0) for v, old in zip(values, legacy, strict=True)
        ]

    async def take(self, buckets: Sequence[Bucket], most: int = 1) -> tuple[int, float]:
        args: list[float] = [most, LEASE_SHARE]
        for bucket in buckets:
            args += (bucket.rate, bucket.burst)
        n, wait = await self._take(keys=[self._key(bucket.key) for bucket in buckets], args=args)
        return int(n), float(wait)
