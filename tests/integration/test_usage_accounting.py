"""Counting calls end to end: what is a call, how it is attributed, budgets and rate limits.

The real proxy in front of the real sandbox; the default SQLite store in a temp dir.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.reload import reload
from proxy.usage.budgets import period_bounds
from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory, RunningProxy, proxy_settings
from tests.integration.rawhttp import open_to, read_head
from tests.integration.test_failures import free_port

DISC = "/v4.0/words/storage/disc"
ECHO = "/v4.0/sandbox/echo/x"


def store(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'usage.db'}"


async def usage(proxy: RunningProxy, period: str = "day") -> dict[str, Any]:
    async with proxy.client.get(f"{proxy.url}/_proxy/usage?period={period}") as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def get(proxy: RunningProxy, path: str, **kwargs: Any) -> tuple[int, dict[str, str], str]:
    async with proxy.client.get(proxy.url + path, **kwargs) as response:
        return response.status, dict(response.headers), await response.text()


def calls(report: dict[str, Any]) -> dict[tuple[str, str, str], tuple[int, int]]:
    return {
        (r["client"], r["product"], r["kind"]): (r["calls"], r["errors"]) for r in report["rows"]
    }


async def test_usage_json_has_the_contract_shape_and_counts_unwritten_calls(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    # A long flush interval: the calls are only in memory when /_proxy/usage is asked.
    budgets = [{"client": "*", "product": "words", "period": "day", "calls": 10}]
    proxy = await proxy_factory(
        usage_store=store(tmp_path), usage_flush_interval=3600, budgets=budgets
    )
    for _ in range(3):
        assert (await get(proxy, DISC))[0] == 200
    report = await usage(proxy)
    start, _ = period_bounds("day", time.time())
    assert report == {
        "period": "day",
        "since": start.strftime("%Y-%m-%dT00:00:00Z"),
        "rows": [
            {
                "client": "anonymous",
                "product": "words",
                "kind": "storage",
                "calls": 3,
                "errors": 0,
                "cached": 0,
            }
        ],
        "budgets": [
            {
                "client": "*",
                "product": "words",
                "period": "day",
                "calls": 10,
                "used": 3,
                "remaining": 7,
            }
        ],
    }
    month = await usage(proxy, "month")
    assert month["since"] == start.strftime("%Y-%m-01T00:00:00Z")
    assert month["rows"] == report["rows"]


async def test_bad_period_is_a_400_in_the_proxy_error_shape(proxy: RunningProxy) -> None:
    status, _, body = await get(proxy, "/_proxy/usage?period=year")
    assert status == 400
    assert json.loads(body)["Error"]["Code"] == "bad_request"


async def test_product_kind_and_upstream_errors_are_attributed(proxy: RunningProxy) -> None:
    assert (await get(proxy, DISC))[0] == 200
    assert (await get(proxy, "/v3.0/cells/nothing/here"))[0] == 404  # upstream's 404: a call
    assert (await get(proxy, "/v3.0/pdf/x?folder=/storage/"))[0] == 404  # query is not the path
    assert (await get(proxy, "/v4.0/sandbox/status/500"))[0] == 500
    assert (await get(proxy, "/no-version"))[0] == 404
    assert calls(await usage(proxy)) == {
        ("anonymous", "words", "storage"): (1, 0),
        ("anonymous", "cells", "api"): (1, 1),
        ("anonymous", "pdf", "api"): (1, 1),
        ("anonymous", "other", "api"): (2, 2),
    }


async def test_a_replayed_request_is_one_call(proxy: RunningProxy, sandbox: RunningSandbox) -> None:
    assert (await get(proxy, DISC))[0] == 200
    await sandbox.control("revoke")  # the next send gets 401: renewed and replayed
    assert (await get(proxy, DISC))[0] == 200
    assert (await sandbox.stats())["revoked_token_requests"] == 1
    assert calls(await usage(proxy)) == {("anonymous", "words", "storage"): (2, 0)}


async def test_the_proxys_own_answers_are_not_calls(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(max_body_size=10, upstream_timeout=0.5)
    assert (await get(proxy, "/healthz"))[0] == 200
    assert (await get(proxy, "/metrics"))[0] == 200
    assert (await get(proxy, "/_proxy/"))[0] == 200
    async with proxy.client.post(proxy.url + ECHO, data=b"x" * 100) as response:
        assert response.status == 413
    async with proxy.client.post(proxy.url + "/connect/token", data={"grant_type": "x"}) as r:
        assert r.status in (200, 400, 401)
    assert calls(await usage(proxy)) == {}


async def test_a_request_that_never_left_gives_its_budget_reservation_back(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    budgets = [{"client": "anonymous", "product": "words", "period": "day", "calls": 1}]
    down = await proxy_factory(  # nothing listens upstream: no connection, nothing sent
        f"http://127.0.0.1:{free_port()}",
        token_url=f"{sandbox.url}/connect/token",
        budgets=budgets,
    )
    assert (await get(down, DISC))[0] == 502
    assert (await get(down, DISC))[0] == 502  # not 429: the reservation was given back
    assert calls(await usage(down)) == {}


async def test_a_timeout_after_the_head_was_sent_is_charged(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    budgets = [{"client": "anonymous", "product": "words", "period": "day", "calls": 1}]
    proxy = await proxy_factory(upstream_timeout=0.3, budgets=budgets)
    await sandbox.api_fault(delay=2, count=1)
    assert (await get(proxy, DISC))[0] == 504  # upstream got it, and never answered in time
    assert (await get(proxy, DISC))[0] == 429  # the call was made: the budget is spent
    assert calls(await usage(proxy)) == {("anonymous", "words", "storage"): (1, 1)}


async def test_clients_that_hang_up_still_spend_the_budget(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    """Budget 2; eight clients in turn give up after 0.5 s on an endpoint that answers after
    2 s: the first two reach upstream and are charged, the other six get 429 (issue 16: all
    eight reached upstream and the budget showed 0 used)."""
    budgets = [{"client": "*", "product": "*", "period": "day", "calls": 2}]
    proxy = await proxy_factory(budgets=budgets)
    await sandbox.api_fault(delay=2)
    outcomes = []
    for _ in range(8):
        try:
            timeout = aiohttp.ClientTimeout(total=0.5)
            async with proxy.client.get(proxy.url + DISC, timeout=timeout) as response:
                outcomes.append(response.status)
        except TimeoutError:
            outcomes.append("gave up")
    assert outcomes == ["gave up"] * 2 + [429] * 6
    assert (await sandbox.stats())["api_requests"] == 2
    report = await usage(proxy)
    assert report["budgets"][0]["used"] == 2
    assert calls(report) == {("anonymous", "words", "storage"): (2, 2)}


async def test_an_encoded_or_capitalised_product_counts_against_its_budget(
    proxy_factory: ProxyFactory,
) -> None:
    # Issue 16: /v4.0/%77ords/ passed allow_paths (decoded) but was counted as "other".
    budgets = [{"client": "*", "product": "words", "period": "day", "calls": 3}]
    proxy = await proxy_factory(budgets=budgets, allow_paths=["/v4.0/words/", "/_proxy/"])
    statuses = []
    for path in ("/v4.0/%77ords/storage/disc", "/v4.0/Words/storage/disc", DISC, DISC):
        async with proxy.client.get(URL(proxy.url + path, encoded=True)) as response:
            statuses.append(response.status)
    assert statuses[3] == 429
    assert calls(await usage(proxy)) == {
        ("anonymous", "words", "storage"): (3, sum(s >= 400 for s in statuses[:3]))
    }


async def test_spent_budget_gives_429_with_retry_after_until_the_period_resets(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    budgets = [{"client": "*", "product": "*", "period": "month", "calls": 2}]
    proxy = await proxy_factory(budgets=budgets)
    assert (await get(proxy, DISC))[0] == 200
    assert (await get(proxy, "/v3.0/cells/x"))[0] == 404  # an error is a call too
    before = (await sandbox.stats())["api_requests"]
    status, headers, body = await get(proxy, DISC)
    assert status == 429
    error = json.loads(body)["Error"]
    assert error["Code"] == "budget_exhausted"
    assert headers["X-Proxy-Error"] == "budget_exhausted"
    _, end = period_bounds("month", time.time())
    assert abs(int(headers["Retry-After"]) - (end.timestamp() - time.time())) < 5
    assert (await sandbox.stats())["api_requests"] == before  # not forwarded
    report = await usage(proxy, "month")
    assert report["budgets"][0]["used"] == 2
    assert report["budgets"][0]["remaining"] == 0


@pytest.mark.parametrize(
    "expect",
    [b"", b"Expect: 100-continue\r\n"],
    ids=["body-sent", "expect-100-continue"],
)
async def test_a_spent_budget_refuses_an_upload_before_reading_its_body(
    proxy_factory: ProxyFactory, expect: bytes
) -> None:
    """100 MB announced: the 429 comes at once, without a "100 Continue" inviting the upload
    and without waiting for a body that was only begun."""
    budgets = [{"client": "*", "product": "words", "period": "day", "calls": 0}]
    proxy = await proxy_factory(budgets=budgets)
    reader, writer = await open_to(proxy.url)
    try:
        writer.write(
            b"PUT /v4.0/words/storage/file/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + expect
            + b"Content-Length: 100000000\r\n\r\n"
            + (b"" if expect else b"hello")
        )
        await writer.drain()
        async with asyncio.timeout(5):
            status, headers = await read_head(reader)
    finally:
        writer.close()
    assert status == 429
    assert dict(headers)["X-Proxy-Error"] == "budget_exhausted"


async def test_budget_of_one_client_does_not_touch_another(proxy_factory: ProxyFactory) -> None:
    budgets = [{"client": "ci", "product": "*", "period": "day", "calls": 1}]
    keys = {"ci": "ci-key-123456789012345678901234", "app": "app-key-12345678901234567890123"}
    proxy = await proxy_factory(budgets=budgets, access_keys=keys)
    ci = {"X-Proxy-Key": keys["ci"]}
    app = {"X-Proxy-Key": keys["app"]}
    assert (await get(proxy, DISC, headers=ci))[0] == 200
    assert (await get(proxy, DISC, headers=ci))[0] == 429
    assert (await get(proxy, DISC, headers=app))[0] == 200
    assert (await get(proxy, DISC))[0] == 200  # anonymous
    assert calls(await usage(proxy)) == {
        ("ci", "words", "storage"): (1, 0),
        ("app", "words", "storage"): (1, 0),
        ("anonymous", "words", "storage"): (1, 0),
    }


async def test_warning_is_logged_once_when_a_budget_passes_80_percent(
    proxy_factory: ProxyFactory, logs: LogCapture
) -> None:
    budgets = [{"client": "*", "product": "words", "period": "day", "calls": 5}]
    proxy = await proxy_factory(budgets=budgets)
    for _ in range(3):
        assert (await get(proxy, DISC))[0] == 200
    assert logs.events("budget passed 80%") == []
    for _ in range(2):
        assert (await get(proxy, DISC))[0] == 200
    assert (await get(proxy, DISC))[0] == 429
    warnings = logs.events("budget passed 80%")
    assert len(warnings) == 1
    assert '"used": 4' in warnings[0]


async def test_rate_limit_gives_429_rate_limited_with_retry_after(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(rate_limits=[{"client": "*", "per_second": 0.5, "burst": 2}])
    assert (await get(proxy, DISC))[0] == 200
    assert (await get(proxy, DISC))[0] == 200
    status, headers, body = await get(proxy, DISC)
    assert status == 429
    assert json.loads(body)["Error"]["Code"] == "rate_limited"
    assert headers["Retry-After"] == "2"
    assert calls(await usage(proxy)) == {("anonymous", "words", "storage"): (2, 0)}


async def test_calls_survive_a_restart_and_keep_the_budget_spent(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    budgets = [{"client": "*", "product": "*", "period": "day", "calls": 4}]
    settings = {"usage_store": store(tmp_path), "usage_flush_interval": 3600, "budgets": budgets}
    first = await proxy_factory(**settings)
    for _ in range(3):
        assert (await get(first, DISC))[0] == 200
    await first.stop()  # the last batch is written at shutdown
    second = await proxy_factory(**settings)
    assert calls(await usage(second)) == {("anonymous", "words", "storage"): (3, 0)}
    assert (await get(second, DISC))[0] == 200
    assert (await get(second, DISC))[0] == 429
    assert (await usage(second))["budgets"][0]["used"] == 4


async def test_metrics_count_calls_by_client_product_kind_and_status_class(
    proxy: RunningProxy,
) -> None:
    assert (await get(proxy, DISC))[0] == 200
    assert (await get(proxy, "/v3.0/cells/x"))[0] == 404
    _, _, text = await get(proxy, "/metrics")
    assert (
        'aspose_proxy_calls_total{client="anonymous",kind="storage",product="words",'
        'status_class="2xx"} 1.0' in text
    )
    assert (
        'aspose_proxy_calls_total{client="anonymous",kind="api",product="cells",'
        'status_class="4xx"} 1.0' in text
    )


async def test_sighup_swaps_in_new_budgets_that_remember_what_was_spent(
    proxy_factory: ProxyFactory,
) -> None:
    budget = {"client": "*", "product": "*", "period": "day", "calls": 1}
    proxy = await proxy_factory(budgets=[budget])
    assert (await get(proxy, DISC))[0] == 200
    assert (await get(proxy, DISC))[0] == 429
    app = proxy.server.runner.app
    raised = proxy_settings(proxy.settings.upstream_url, budgets=[{**budget, "calls": 3}])
    reload(
        app, raised.model_copy(update={"usage_store": proxy.settings.usage_store}), proxy.settings
    )
    await asyncio.sleep(0.2)  # the new rules are seeded from the store, then swapped in
    assert (await get(proxy, DISC))[0] == 200
    assert (await get(proxy, DISC))[0] == 200
    assert (await get(proxy, DISC))[0] == 429  # 3 in all: the call before the reload counts


async def test_clients_named_after_a_reload_are_counted_by_name(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory()  # no access keys: every call is anonymous, no name looked up
    assert (await get(proxy, DISC))[0] == 200
    keys = {"ci": "ci-key-123456789012345678901234"}
    named = proxy_settings(
        proxy.settings.upstream_url, access_keys=keys, usage_store=proxy.settings.usage_store
    )
    reload(proxy.server.runner.app, named, proxy.settings)
    assert (await get(proxy, DISC, headers={"X-Proxy-Key": keys["ci"]}))[0] == 200
    assert calls(await usage(proxy)) == {
        ("anonymous", "words", "storage"): (1, 0),
        ("ci", "words", "storage"): (1, 0),
    }
