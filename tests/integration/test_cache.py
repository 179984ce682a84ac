"""The conversion cache end to end: the real proxy, the real sandbox (which counts the
conversions it performs), real redis-server, the official Words SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from pydantic import SecretStr

from proxy.cache.policy import ALLOWED
from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory, RunningProxy
from tests.integration.test_cli import run_cli
from tests.integration.test_workers import proxy_env, start_workers
from tests.redis_server import start_redis

__all__ = ["start_workers"]  # the fixture, shared with test_workers.py

CONVERT = "/v4.0/words/convert?format=pdf"
DOC = b"%DOCX fake document " * 100


def disk(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"cache_store": f"file://{tmp_path / 'cache'}", **more}


async def put(
    proxy: RunningProxy, target: str = CONVERT, body: bytes = DOC, **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    async with proxy.client.put(proxy.url + target, data=body, headers=headers) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


async def conversions(sandbox: RunningSandbox) -> int:
    return (await sandbox.stats())["conversions"]


async def test_a_second_identical_conversion_is_a_hit_and_costs_no_conversion(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    status, headers, first = await put(proxy)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    status, headers, second = await put(proxy)
    assert (status, headers["X-Cache"]) == (200, "HIT")
    assert second == first  # byte for byte, the serial and time of the first call included
    assert int(headers["Age"]) >= 0
    assert headers["Content-Type"] == "application/pdf"
    assert "X-Request-Id" in headers
    assert await conversions(sandbox) == 1


async def test_the_cache_is_off_by_default(proxy: RunningProxy, sandbox: RunningSandbox) -> None:
    _, headers, _ = await put(proxy)
    _, headers, _ = await put(proxy)
    assert "X-Cache" not in headers
    assert await conversions(sandbox) == 2


async def test_a_path_off_the_allow_list_has_no_x_cache_header(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    async with proxy.client.get(proxy.url + "/v4.0/words/storage/disc") as response:
        assert "X-Cache" not in response.headers


SAMPLES = {"{format}": "pdf", "{type}": "QR", "{frameId}": "0"}


async def test_every_allow_listed_conversion_is_answered_by_the_sandbox_and_hits(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Each path of the allow-list, spelt as the SDKs send it (docs/cache.md), exists in the
    sandbox and a second identical call is a hit (a path the sandbox lacks answers 404: MISS)."""
    proxy = await proxy_factory(**disk(tmp_path))
    for method, pattern in ALLOWED:
        target = pattern
        for placeholder, sample in SAMPLES.items():
            target = target.replace(placeholder, sample)
        for expected in ("MISS", "HIT"):
            async with proxy.client.request(method, proxy.url + target, data=DOC) as response:
                await response.read()
                assert (target, response.status, response.headers["X-Cache"]) == (
                    target,
                    200,
                    expected,
                )
    assert await conversions(sandbox) == len(ALLOWED)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        (CONVERT + "&outPath=out.pdf", {}),
        (CONVERT + "&storage=S", {}),
        (CONVERT + "&fontsLocation=f", {}),
        (CONVERT + "&password=p", {}),
        (CONVERT + "&encryptedPassword=e", {}),
        (CONVERT, {"Cache-Control": "no-store"}),
    ],
)
async def test_bypassed_requests_are_forwarded_every_time(
    proxy_factory: ProxyFactory,
    sandbox: RunningSandbox,
    tmp_path: Path,
    target: str,
    headers: dict[str, str],
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    for _ in range(2):
        _, answer, _ = await put(proxy, target, **headers)
        assert answer["X-Cache"] == "BYPASS"
    assert await conversions(sandbox) == 2


async def test_a_slides_password_header_bypasses(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    for _ in range(2):
        async with proxy.client.post(
            proxy.url + "/v3.0/slides/convert/pdf", data=DOC, headers={"password": "x"}
        ) as response:
            assert response.headers["X-Cache"] == "BYPASS"
    assert await conversions(sandbox) == 2


async def test_no_cache_forces_a_call_and_refreshes_the_entry(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    _, _, first = await put(proxy)
    _, headers, refreshed = await put(proxy, **{"Cache-Control": "no-cache"})
    assert headers["X-Cache"] == "MISS"
    assert refreshed != first  # a new conversion (another serial)
    _, headers, again = await put(proxy)
    assert (headers["X-Cache"], again) == ("HIT", refreshed)
    assert await conversions(sandbox) == 2


async def test_errors_are_never_stored(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    await sandbox.api_fault(status=500, count=1)
    status, headers, _ = await put(proxy)
    assert (status, headers["X-Cache"]) == (500, "MISS")
    status, headers, _ = await put(proxy)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    _, headers, _ = await put(proxy)
    assert headers["X-Cache"] == "HIT"


async def test_a_truncated_answer_is_never_stored(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    await sandbox.api_fault(reset=True, count=1)
    with pytest.raises(aiohttp.ClientPayloadError):
        await put(proxy)
    _, headers, _ = await put(proxy)
    assert headers["X-Cache"] == "MISS"


async def test_answers_over_the_entry_size_are_not_stored(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path, cache_max_entry_size=len(DOC) // 2))
    for _ in range(2):
        _, headers, _ = await put(proxy)
        assert headers["X-Cache"] == "MISS"
    assert await conversions(sandbox) == 2


async def test_ten_concurrent_identical_conversions_make_one_upstream_call(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    await sandbox.api_fault(delay=0.5, count=1)  # the first call is slow: the rest pile up
    answers = await asyncio.gather(*(put(proxy) for _ in range(10)))
    assert await conversions(sandbox) == 1
    assert {body for _, _, body in answers} == {answers[0][2]}
    assert sorted(h["X-Cache"] for _, h, _ in answers) == ["HIT"] * 9 + ["MISS"]


async def test_a_restart_keeps_the_entries(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    first = await proxy_factory(**disk(tmp_path))
    _, _, body = await put(first)
    await first.stop()
    second = await proxy_factory(**disk(tmp_path))
    _, headers, again = await put(second)
    assert (headers["X-Cache"], again) == ("HIT", body)
    assert await conversions(sandbox) == 1


async def test_a_corrupted_entry_on_disk_is_a_miss(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    await put(proxy)
    (entry,) = [p for p in (tmp_path / "cache").glob("??/*")]
    data = entry.read_bytes()
    entry.write_bytes(data[:100] + data[101:])  # one byte short: the length check fails
    _, headers, _ = await put(proxy)
    assert headers["X-Cache"] == "MISS"
    assert await conversions(sandbox) == 2


async def test_two_proxies_share_a_redis_cache(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, redis_url: str
) -> None:
    one = await proxy_factory(cache_store=redis_url)
    two = await proxy_factory(cache_store=redis_url)
    body = DOC + b"redis"
    _, headers, first = await put(one, body=body)
    assert headers["X-Cache"] == "MISS"
    _, headers, second = await put(two, body=body)
    assert (headers["X-Cache"], second) == ("HIT", first)
    assert await conversions(sandbox) == 1


async def test_the_sdks_multipart_uploads_hit_despite_random_boundaries(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    import asposewordscloud
    from asposewordscloud.models.requests import ConvertDocumentRequest

    proxy = await proxy_factory(**disk(tmp_path))
    source = tmp_path / "report.docx"
    source.write_bytes(DOC)

    def convert() -> bytes:
        api = asposewordscloud.WordsApi("demo", "anything", base_url=proxy.url)
        with source.open("rb") as document:
            result = api.convert_document(ConvertDocumentRequest(document, "pdf"))
        return bytes(result) if not isinstance(result, str) else Path(result).read_bytes()

    first = await asyncio.to_thread(convert)
    second = await asyncio.to_thread(convert)
    assert first == second
    assert await conversions(sandbox) == 1


async def test_cache_stats_and_clear_work_on_the_store_without_a_proxy(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    await put(proxy)
    await put(proxy, body=DOC + b"2")
    await proxy.stop()
    env = {"ASPOSE_PROXY_CACHE_STORE": f"file://{tmp_path / 'cache'}"}
    code, out, _ = await run_cli("cache", "stats", "--json", env=env)
    stats = json.loads(out)
    assert (code, stats["entries"]) == (0, 2)
    assert stats["bytes"] > 2 * len(DOC)
    code, out, _ = await run_cli("cache", "clear", env=env)
    assert (code, out.strip()) == (0, f"removed 2 entries from file://{tmp_path / 'cache'}")
    code, out, _ = await run_cli("cache", "stats", "--json", env=env)
    assert json.loads(out)["entries"] == 0


async def test_cache_stats_says_when_the_cache_is_off() -> None:
    code, _, err = await run_cli("cache", "stats", env={"ASPOSE_PROXY_CACHE_STORE": "off"})
    assert code == 1
    assert "cache_store is off" in err


async def test_a_hit_is_not_charged_to_a_budget_and_is_counted_as_cached(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    budget = [{"client": "*", "product": "words", "period": "day", "calls": 2}]
    proxy = await proxy_factory(
        **disk(tmp_path), budgets=budget, usage_store=f"sqlite://{tmp_path / 'u.db'}"
    )
    for expected in ("MISS", "HIT", "HIT", "HIT"):
        status, headers, _ = await put(proxy)
        assert (status, headers["X-Cache"]) == (200, expected)
    status, _, _ = await put(proxy, body=b"another document")
    assert status == 200  # the budget's second call: the hits took nothing
    status, _, _ = await put(proxy, body=b"a third document")
    assert status == 429
    async with proxy.client.get(proxy.url + "/_proxy/usage") as response:
        (row,) = (await response.json())["rows"]
    assert (row["calls"], row["cached"]) == (2, 3)
    async with proxy.client.get(proxy.url + "/_proxy/") as response:
        page = await response.text()
    assert "calls (credits) saved" in page
    assert '<div class="big">3</div><div class="muted">calls (credits) saved' in page


async def test_cache_metrics_count_hits_misses_bypasses_and_entries(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    await put(proxy)
    await put(proxy)
    await put(proxy, CONVERT + "&outPath=x.pdf")
    async with proxy.client.get(proxy.url + "/metrics") as response:
        text = await response.text()
    for line in (
        'aspose_proxy_cache_requests_total{result="hit"} 1.0',
        'aspose_proxy_cache_requests_total{result="miss"} 1.0',
        'aspose_proxy_cache_requests_total{result="bypass"} 1.0',
        "aspose_proxy_cache_entries 1.0",
        "aspose_proxy_cache_evictions_total 0.0",
    ):
        assert line in text
    assert "aspose_proxy_cache_bytes " in text


async def test_an_answer_is_stored_even_when_its_client_leaves_mid_body(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    big = bytes(range(256)) * 32768  # 8 MiB: far more than one read of the client
    async with proxy.client.put(proxy.url + CONVERT, data=big) as response:
        assert response.headers["X-Cache"] == "MISS"
        await response.content.readany()
        response.close()  # the client goes away with most of the body unread
    _, headers, body = await put(proxy, body=big)
    assert headers["X-Cache"] == "HIT"
    assert len(body) == int(headers["Content-Length"]) > len(big)
    assert await conversions(sandbox) == 1


async def test_entries_expire_after_cache_ttl(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path), cache_ttl=1)
    await put(proxy)
    await asyncio.sleep(1.5)
    _, headers, _ = await put(proxy)
    assert headers["X-Cache"] == "MISS"
    assert await conversions(sandbox) == 2


async def test_cache_max_size_evicts_the_least_recently_used(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    entry = len(DOC) + 600  # an answer and its metadata, roughly
    proxy = await proxy_factory(**disk(tmp_path), cache_max_size=int(entry * 2.5))
    one, two, three = DOC + b"1", DOC + b"2", DOC + b"3"
    await put(proxy, body=one)
    await put(proxy, body=two)
    await put(proxy, body=one)  # one is now the most recently used
    await put(proxy, body=three)  # over the size: two goes
    assert (await put(proxy, body=one))[1]["X-Cache"] == "HIT"
    assert (await put(proxy, body=two))[1]["X-Cache"] == "MISS"


async def test_two_processes_sharing_a_cache_directory_keep_its_total_within_cache_max_size(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], tmp_path: Path
) -> None:
    """Two ``run`` processes on one directory: the bound is on the directory, not per process
    (each evicting from its own index, the two together held twice ``cache_max_size``)."""
    root = tmp_path / "cache"
    limit = (len(DOC) + 700) * 3  # room for three entries, roughly
    env = proxy_env(
        sandbox, ASPOSE_PROXY_CACHE_STORE=f"file://{root}", ASPOSE_PROXY_CACHE_MAX_SIZE=str(limit)
    )
    first, second = [await start_workers(env=env) for _ in range(2)]
    async with aiohttp.ClientSession() as client:
        for i in range(8):
            url = (first, second)[i % 2].url + CONVERT
            async with client.put(url, data=DOC + bytes([i])) as response:
                await response.read()
                assert (response.status, response.headers["X-Cache"]) == (200, "MISS")
    sizes = [entry.stat().st_size for entry in root.glob("??/*")]
    assert len(sizes) >= 2
    assert sum(sizes) <= limit, sizes


async def test_cache_scope_client_keeps_clients_apart(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    keys = {"ci": SecretStr("ci-key-0123456789abcdef"), "web": SecretStr("web-key-0123456789abc")}
    shared = await proxy_factory(**disk(tmp_path / "shared"), access_keys=keys)
    apart = await proxy_factory(**disk(tmp_path / "apart"), access_keys=keys, cache_scope="client")
    for proxy, second in ((shared, "HIT"), (apart, "MISS")):
        await put(proxy, **{"X-Proxy-Key": "ci-key-0123456789abcdef"})
        _, headers, _ = await put(proxy, **{"X-Proxy-Key": "web-key-0123456789abc"})
        assert headers["X-Cache"] == second


async def test_a_big_hit_is_byte_for_byte_and_a_flipped_byte_aborts_it(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    big = bytes(range(256)) * 36864  # 9 MiB: sent with sendfile while a thread hashes it
    _, _, first = await put(proxy, body=big)
    _, headers, hit = await put(proxy, body=big)
    assert (headers["X-Cache"], hit) == ("HIT", first)
    (entry,) = (tmp_path / "cache").glob("??/*")
    with entry.open("r+b") as damaged:  # same length: only the hash can tell
        damaged.seek(5 * 2**20)
        byte = damaged.read(1)
        damaged.seek(5 * 2**20)
        damaged.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(aiohttp.ClientPayloadError):  # cut short of Content-Length
        await put(proxy, body=big)
    assert not entry.exists()
    _, headers, _ = await put(proxy, body=big)
    assert headers["X-Cache"] == "MISS"


async def test_when_the_single_flight_fails_each_waiter_is_forwarded_itself(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    await sandbox.api_fault(status=500, delay=0.5, count=1)  # the leader's call fails, slowly
    answers = await asyncio.gather(*(put(proxy) for _ in range(5)))
    assert sorted(status for status, _, _ in answers) == [200, 200, 200, 200, 500]
    assert {headers["X-Cache"] for _, headers, _ in answers} == {"MISS"}
    assert await conversions(sandbox) == 4  # each waiter converted for itself


async def test_a_redis_cache_with_a_password_and_a_wrong_one(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path, logs: LogCapture
) -> None:
    password = "cache-redis-password-0123456789"
    process, url = start_redis(tmp_path, password=password)
    try:
        right = await proxy_factory(cache_store=url, cache_store_password=SecretStr(password))
        wrong = await proxy_factory(cache_store=url, cache_store_password=SecretStr("not-it-0123"))
        _, headers, first = await put(right)
        assert headers["X-Cache"] == "MISS"
        _, headers, second = await put(right)
        assert (headers["X-Cache"], second) == ("HIT", first)
        for _ in range(2):  # a store it cannot use: every request is still answered
            status, headers, _ = await put(wrong, body=b"another document")
            assert (status, headers["X-Cache"]) == (200, "MISS")
        assert await conversions(sandbox) == 3
        failing = logs.events(
            "cache store failing: conversions are forwarded and not stored until it is back"
        )
        assert len(failing) == 1  # once per outage, not once per request
        assert password not in logs.text
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_client_that_accepts_gzip_never_shares_an_entry_with_one_that_does_not(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    proxy = await proxy_factory(**disk(tmp_path))
    _, headers, _ = await put(proxy, **{"Accept-Encoding": "gzip"})
    assert headers["X-Cache"] == "MISS"
    _, headers, _ = await put(proxy, **{"Accept-Encoding": "identity"})
    assert headers["X-Cache"] == "MISS"  # upstream may have compressed the first answer
    _, headers, _ = await put(proxy, **{"Accept-Encoding": "gzip"})
    assert headers["X-Cache"] == "HIT"


async def curl_put(url: str, document: Path) -> tuple[str, str]:
    """``curl -T`` as a user runs it: it closes the connection as soon as it has the body."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}", "-T", str(document), url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    head = out.decode()
    cache = next(line.split(":", 1)[1].strip() for line in head.splitlines() if "X-Cache" in line)
    return head[-3:], cache


async def test_every_hit_is_counted_as_cached_when_its_client_closes_at_once(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], tmp_path: Path
) -> None:
    """curl closes its connection the moment the body is in: the hit's handler (``run``, on
    uvloop) was cancelled in its last await, closing the entry's file, and the hit escaped
    the usage count (``cached`` 0 to 4 of 5) with a 499 access line for a complete answer."""
    env = proxy_env(sandbox, ASPOSE_PROXY_CACHE_STORE=f"file://{tmp_path / 'cache'}")
    env["ASPOSE_PROXY_USAGE_STORE"] = "off"
    proxy = await start_workers(env=env)
    document = tmp_path / "report.docx"
    document.write_bytes(DOC)
    assert await curl_put(proxy.url + CONVERT, document) == ("200", "MISS")
    for _ in range(10):
        assert await curl_put(proxy.url + CONVERT, document) == ("200", "HIT")
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.url + "/_proxy/usage") as response,
    ):
        (row,) = (await response.json())["rows"]
    assert (row["calls"], row["cached"]) == (1, 10)
    lines = [json.loads(line) for line in proxy.log.splitlines() if line.startswith("{")]
    statuses = [line["status"] for line in lines if line.get("logger") == "proxy.access_log"]
    assert statuses[:11] == [200] * 11, statuses


async def test_a_hit_whose_client_leaves_mid_body_is_still_counted_as_cached(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A request answered from the cache is never a call, and never escapes the count, even
    when its client hangs up before the end (as a call is counted once sent upstream)."""
    proxy = await proxy_factory(**disk(tmp_path))
    big = bytes(range(256)) * 32768  # 8 MiB: the client leaves long before its end
    assert (await put(proxy, body=big))[1]["X-Cache"] == "MISS"
    async with proxy.client.put(proxy.url + CONVERT, data=big) as response:
        assert response.headers["X-Cache"] == "HIT"
        await response.content.readany()
        response.close()
    for _ in range(50):  # the proxy sees the hang-up a moment later
        async with proxy.client.get(proxy.url + "/_proxy/usage") as response:
            (row,) = (await response.json())["rows"]
        if row["cached"]:
            break
        await asyncio.sleep(0.1)
    assert (row["calls"], row["cached"]) == (1, 1)
