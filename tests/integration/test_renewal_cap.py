"""Issue 16: one client must not lock the account out or leave the others without a token.

Against the real sandbox: an upstream that answers 401 makes at most 3 token requests per 10 s
(past them the 401 goes to the client as it is), and a renewal that fails (400, 429, timeout)
leaves the token in hand in use for everyone. The revocation case (all clients replayed with one
new token) is pinned in test_replay.py and the soak.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import RunningSandbox
from tests.integration.conftest import ProxyFactory, RunningProxy

ECHO = "/v4.0/sandbox/echo/x"


async def status_of_get(proxy: RunningProxy) -> tuple[int, dict[str, Any]]:
    async with proxy.client.get(proxy.url + ECHO) as response:
        assert "X-Proxy-Error" not in response.headers or response.status != 401
        return response.status, await response.json()


async def test_ten_calls_answered_401_make_at_most_three_token_requests(
    proxy: RunningProxy, sandbox: RunningSandbox
) -> None:
    assert (await status_of_get(proxy))[0] == 200
    before = (await sandbox.stats())["token_requests"]
    await sandbox.api_fault(status=401)  # every call, until cleared
    answers = [await status_of_get(proxy) for _ in range(10)]
    assert [status for status, _ in answers] == [401] * 10
    assert all("RequestId" in body for _, body in answers)  # upstream's 401, unchanged
    assert (await sandbox.stats())["token_requests"] - before == 3


@pytest.mark.parametrize(
    ("fault", "overrides"),
    [
        ({"status": 429}, {}),
        ({"status": 400, "body": '{"error": "invalid_client"}'}, {}),
        ({"delay": 3.0, "count": 1}, {"token_wait_timeout": 0.5}),
    ],
    ids=["429", "400", "timeout"],
)
async def test_a_failed_renewal_never_discards_the_token_in_hand(
    proxy_factory: ProxyFactory,
    sandbox: RunningSandbox,
    fault: dict[str, Any],
    overrides: dict[str, Any],
) -> None:
    proxy = await proxy_factory(**overrides)
    assert (await status_of_get(proxy))[0] == 200
    await sandbox.token_fault(**fault)
    await sandbox.api_fault(status=401, count=1)
    status, body = await status_of_get(proxy)
    assert status == 401 and "RequestId" in body  # the call whose 401 started the renewal
    for _ in range(3):  # everyone else keeps the token in hand
        assert (await status_of_get(proxy))[0] == 200
    async with proxy.client.get(proxy.url + "/readyz") as response:
        assert response.status == 200
