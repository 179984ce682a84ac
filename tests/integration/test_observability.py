"""/metrics carries what the alert rules (deploy/prometheus/alerts.yml) need."""

from __future__ import annotations

import re

import aiohttp
from pydantic import SecretStr

from tests.integration.conftest import ProxyFactory


async def scrape(proxy_url: str, client: aiohttp.ClientSession) -> str:
    async with client.get(proxy_url + "/metrics") as response:
        assert response.status == 200
        return await response.text()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the series ``name{labels}`` (labels in any order), 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_refused_clients_are_counted_by_status_and_code(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(
        access_keys={"reporting": SecretStr("a-long-enough-access-key-123")},
        require_client_auth=True,
    )
    for _ in range(3):
        async with proxy.client.get(proxy.url + "/v4.0/sandbox/bytes?size=1") as response:
            assert response.status == 401
    headers = {"X-Proxy-Key": "a-long-enough-access-key-123"}
    async with proxy.client.get(proxy.url + "/v4.0/sandbox/bytes?size=1", headers=headers) as ok:
        assert ok.status == 200
    text = await scrape(proxy.url, proxy.client)
    assert sample(text, "aspose_proxy_errors_total", status="401", code="client_auth_required") == 3
    assert sample(text, "aspose_proxy_requests_total", status="401") == 3
    assert sample(text, "aspose_proxy_requests_total", status="200") == 1


async def test_an_address_outside_allow_from_is_counted_as_403(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(allow_from=["10.1.2.0/24"], metrics_allow_from=["127.0.0.1/32"])
    async with proxy.client.get(proxy.url + "/v4.0/sandbox/bytes?size=1") as response:
        assert response.status == 403
    text = await scrape(proxy.url, proxy.client)
    assert sample(text, "aspose_proxy_errors_total", status="403", code="address_not_allowed") == 1


async def test_a_single_process_labels_no_pid(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory()
    text = await scrape(proxy.url, proxy.client)
    assert 'pid="' not in text
    assert "aspose_proxy_token_seconds_to_expiry " in text
