"""``GET /_proxy/``: the status page, in a real headless browser, and who may see it."""

from __future__ import annotations

import re
from pathlib import Path

from tests.integration.chromium import dump_dom
from tests.integration.conftest import LEAK, ProxyFactory, RunningProxy

DISC = "/v4.0/words/storage/disc"
KEYS = {"ci": "ci-key-0123456789abcdefghijklmnop", "reports": "reports-key-0123456789abcdefghij"}
BUDGETS = [
    {"client": "ci", "product": "words", "period": "day", "calls": 4},
    {"client": "*", "product": "*", "period": "month", "calls": 1000},
]


async def busy_proxy(proxy_factory: ProxyFactory, **overrides: object) -> RunningProxy:
    """A proxy with two clients, a budget at 75 % and an upstream error behind it."""
    proxy = await proxy_factory(access_keys=KEYS, budgets=BUDGETS, **overrides)
    for key, path in [("ci", DISC)] * 3 + [("reports", "/v3.0/cells/x")]:
        async with proxy.client.get(proxy.url + path, headers={"X-Proxy-Key": KEYS[key]}) as r:
            await r.read()
    return proxy


def text_of(html: str) -> str:
    """The visible words of a page, tags dropped and whitespace squeezed."""
    html = re.sub(r"<style.*?</style>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


async def test_page_in_headless_chromium_shows_token_traffic_budgets_and_calls(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await busy_proxy(proxy_factory)
    dom = await dump_dom(proxy.url + "/_proxy/", tmp_path / "profile")
    text = text_of(dom)
    assert "Access token held yes" in text
    assert re.search(r"expires in 23 h \d\d min", text)
    assert "last error none" in text
    assert re.search(r"requests/s, last 1 min [\d.]+% errors", text)
    # Today's calls by client and product, with the upstream error counted.
    assert (
        "Calls today client product calls errors cached ci words 3 0 0 reports cells 1 1 0 "
        "total 4 1 0" in text
    )
    assert 'Conversion cache Off (cache_store = "off").' in text
    assert "Calls this month" in text
    # Budgets as bars: ci's daily budget is at 75 %.
    assert "ci words day 3 / 4" in text
    assert re.search(r'title="75%"><div class="" style="width:75.0%">', dom)
    assert "* * month 4 / 1000" in text
    assert "<script" not in dom  # readable without JavaScript: there is none


async def test_page_is_self_contained_and_never_shows_a_secret(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await busy_proxy(proxy_factory)
    async with proxy.client.get(proxy.url + "/_proxy/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        csp = response.headers["Content-Security-Policy"]
        html = await response.text()
    assert csp.startswith("default-src 'none'")  # nothing from other hosts, no script
    assert re.findall(r"(?:src|href)=", html) == []
    assert '<meta http-equiv="refresh"' in html  # auto-refresh without JavaScript
    for secret in KEYS.values():
        assert secret not in html
    assert not LEAK.findall(html)
    async with proxy.client.get(proxy.url + "/_proxy/usage") as response:
        body = await response.text()
    for secret in KEYS.values():
        assert secret not in body


async def test_page_follows_the_client_auth_rule(proxy_factory: ProxyFactory) -> None:
    proxy = await busy_proxy(proxy_factory, require_client_auth=True)
    for path in ("/_proxy/", "/_proxy/usage"):
        async with proxy.client.get(proxy.url + path) as response:
            assert response.status == 401, path
        async with proxy.client.get(
            proxy.url + path, headers={"X-Proxy-Key": KEYS["ci"]}
        ) as response:
            assert response.status == 200, path


async def test_page_follows_allow_from(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(allow_from=["10.0.0.0/8"])
    for path in ("/_proxy/", "/_proxy/usage"):
        async with proxy.client.get(proxy.url + path) as response:
            assert response.status == 403, path


async def test_the_proxy_namespace_is_never_forwarded(proxy: RunningProxy) -> None:
    async with proxy.client.get(proxy.url + "/_proxy") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
    for method, path in [("GET", "/_proxy/nothing"), ("POST", "/_proxy/usage/x")]:
        async with proxy.client.request(method, proxy.url + path) as response:
            assert response.status == 404
            assert response.headers["X-Proxy-Error"] == "not_found"
    async with proxy.client.get(proxy.url + "/_proxy/usage") as response:
        assert (await response.json())["rows"] == []  # none of the above was a call
