"""``aspose-proxy usage``: read straight from the store, with no proxy running."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ProxyFactory
from tests.integration.test_cli import run_cli

DISC = "/v4.0/words/storage/disc"
BUDGETS = [{"client": "*", "product": "words", "period": "month", "calls": 10}]


async def make_calls(proxy_factory: ProxyFactory, store: str) -> dict[str, Any]:
    """Three calls through a proxy, then the proxy stops; returns its last /_proxy/usage."""
    proxy = await proxy_factory(usage_store=store, budgets=BUDGETS, usage_flush_interval=3600)
    for path in (DISC, DISC, "/v3.0/cells/x"):
        async with proxy.client.get(proxy.url + path) as response:
            await response.read()
    async with proxy.client.get(proxy.url + "/_proxy/usage?period=month") as response:
        served: dict[str, Any] = await response.json()
    await proxy.stop()  # written at shutdown; the command below runs with no proxy
    return served


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'usage.db'}"
    url: str = request.getfixturevalue("redis_url")
    return url


async def test_usage_json_matches_what_the_proxy_served(
    proxy_factory: ProxyFactory, store_url: str
) -> None:
    served = await make_calls(proxy_factory, store_url)
    env = {"ASPOSE_PROXY_USAGE_STORE": store_url, "ASPOSE_PROXY_BUDGETS": json.dumps(BUDGETS)}
    code, out, err = await run_cli("usage", "--period", "month", "--json", env=env)
    assert code == 0, err
    assert json.loads(out) == served
    assert served["budgets"][0]["used"] == 2  # the cells call is not in the words budget


async def test_usage_prints_a_readable_table_by_default(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    store = f"sqlite://{tmp_path / 'usage.db'}"
    await make_calls(proxy_factory, store)
    code, out, err = await run_cli(
        "usage", "--usage-store", store, "--budgets", json.dumps(BUDGETS)
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Calls today (since ")
    assert lines[2].split() == ["client", "product", "kind", "calls", "errors", "cached"]
    assert ["anonymous", "cells", "api", "1", "1", "0"] in [line.split() for line in lines]
    assert ["anonymous", "words", "storage", "2", "0", "0"] in [line.split() for line in lines]
    assert ["total", "3", "1", "0"] in [line.split() for line in lines]
    assert "Budgets" in lines
    assert ["*", "words", "month", "10", "2", "8"] in [line.split() for line in lines]


async def test_usage_of_a_store_that_was_never_written_is_empty_and_creates_nothing(
    tmp_path: Path,
) -> None:
    code, out, err = await run_cli("usage", "--usage-store", f"sqlite://{tmp_path}/none/u.db")
    assert code == 0, err
    assert "no calls yet" in out
    assert not (tmp_path / "none").exists()


async def test_usage_with_an_unreachable_store_says_so_and_exits_1() -> None:
    code, _, err = await run_cli("usage", "--usage-store", "redis://127.0.0.1:9/0")
    assert code == 1
    assert "cannot read redis://127.0.0.1:9/0" in err
