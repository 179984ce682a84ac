"""Two proxies sharing one real Redis: one budget for both, counts visible to both."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis

from tests.integration.conftest import ProxyFactory, RunningProxy

DISC = "/v4.0/words/storage/disc"


async def status_of(proxy: RunningProxy, path: str = DISC) -> int:
    async with proxy.client.get(proxy.url + path) as response:
        await response.read()
        return response.status


async def usage(proxy: RunningProxy) -> dict[str, Any]:
    async with proxy.client.get(proxy.url + "/_proxy/usage") as response:
        assert response.status == 200
        result: dict[str, Any] = await response.json()
        return result


async def test_two_replicas_never_both_spend_the_last_call(
    proxy_factory: ProxyFactory, redis_url: str
) -> None:
    budget = 6
    budgets = [{"client": "*", "product": "words", "period": "day", "calls": budget}]
    replicas = [await proxy_factory(usage_store=redis_url, budgets=budgets) for _ in range(2)]
    # 2N concurrent calls, N through each replica: exactly N may pass.
    statuses = await asyncio.gather(*(status_of(replicas[i % 2]) for i in range(2 * budget)))
    assert sorted(statuses) == [200] * budget + [429] * budget
    for replica in replicas:
        assert await status_of(replica) == 429


async def test_a_replicas_calls_show_on_the_other_within_seconds(
    proxy_factory: ProxyFactory, redis_url: str
) -> None:
    first = await proxy_factory(usage_store=redis_url, usage_flush_interval=0.2)
    second = await proxy_factory(usage_store=redis_url, usage_flush_interval=0.2)
    for _ in range(3):
        assert await status_of(first) == 200
    assert await status_of(second) == 200
    deadline = time.monotonic() + 5
    while True:
        rows = (await usage(second))["rows"]
        if rows and rows[0]["calls"] == 4:
            break
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.1)
    assert rows == [
        {
            "client": "anonymous",
            "product": "words",
            "kind": "storage",
            "calls": 4,
            "errors": 0,
            "cached": 0,
        }
    ]


async def test_budget_with_redis_down_is_503_and_nothing_is_forwarded(
    proxy_factory: ProxyFactory, redis_server: str
) -> None:
    budgets = [{"client": "*", "product": "cells", "period": "day", "calls": 100}]
    # A Redis that is not there: the budget cannot be checked, so the call is not made.
    proxy = await proxy_factory(usage_store="redis://127.0.0.1:9/0", budgets=budgets)
    async with proxy.client.get(proxy.url + "/v3.0/cells/x") as response:
        assert response.status == 503
        body = json.loads(await response.read())
    assert body["Error"]["Code"] == "usage_store_unavailable"
    # A call no budget covers is still forwarded.
    assert await status_of(proxy) == 200


async def test_redis_keys_hold_hourly_counts_and_expire(
    proxy_factory: ProxyFactory, redis_url: str
) -> None:
    proxy = await proxy_factory(usage_store=redis_url)
    assert await status_of(proxy) == 200
    await proxy.stop()  # the last batch is written at shutdown
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = client.keys("aspose-proxy:usage:*")
    assert len(keys) == 1
    assert client.hgetall(keys[0]) == {"calls\tanonymous\twords\tstorage": "1"}
    assert client.ttl(keys[0]) > 0
    client.close()
