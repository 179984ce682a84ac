"""Soak: mixed traffic through the proxy for a while; fails on any sign of decay.

Starts the sandbox (2 s tokens) and ``aspose-proxy run`` as subprocesses on 127.0.0.1, then
runs CONCURRENCY workers for DURATION seconds, each picking at random:

- small requests (GET, and POST with a few KiB, sha256 checked by the sandbox's echo);
- uploads of 1-50 MiB (log-uniform; most with Content-Length, some chunked), whose sha256 the
  sandbox reports back and the worker compares with what it sent;
- downloads of 1-50 MiB from ``/v4.0/sandbox/bytes``, sha256 checked against the pattern;
- about 5 % client aborts: an upload cut off mid-body, or a download dropped mid-body.

Meanwhile the sandbox's tokens are revoked at random (every 3.5-8 s, so at most 3 in any 10 s:
the proxy renews after upstream 401s at most 3 times per 10 s, issue 16), so the proxy renews
and replays (uploads included) all the time. The proxy's RSS, open fds and spool files are sampled
once a second.

It fails (exit 1) on any request that should have succeeded and did not, any corrupted body,
RSS growth over 20 MiB after warm-up (the peak in the last quarter of the run against the peak
during warm-up), or fds or spool files above their baseline at the end. A 401 reaching the
client counts as a failure too, unless a revocation happened while that request was under way
(the proxy replays once; a second revocation within one request is the sandbox's doing).

    .venv/bin/python bench/soak.py --duration 900          # the 15-minute run
    .venv/bin/python bench/soak.py --duration 60           # CI (tests/integration/test_soak.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ASPOSE_PROXY, Proc, start_announcing, stopping, wait_http

KiB = 1024
MiB = 1024 * KiB
ECHO = "/v4.0/sandbox/echo/soak"
PATTERN = bytes(range(256)) * (MiB // 256)  # what /v4.0/sandbox/bytes sends, repeated
CHUNK = 256 * KiB
RSS_GROWTH_LIMIT = 20 * MiB


# Seconds between revocations at least: three gaps exceed 10 s, the proxy's renewal window.
REVOKE_MIN_GAP = 3.5


@dataclass
class Tally:
    """What happened, by kind of request and outcome."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    revocations: list[float] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.counts["failed"] += 1
        if len(self.failures) < 50:
            self.failures.append(what)

    def revoked_during(self, started: float, ended: float) -> bool:
        return any(started <= t <= ended for t in self.revocations)


def proc_facts(pid: int, spool: Path) -> tuple[int, int, int]:
    """RSS in bytes, open fds, and open fds into the spool directory (unlinked temp files)."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    fds = spooled = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        fds += 1
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{spool}/"):
                spooled += 1
    return rss, fds, spooled


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def upload_source(rng: random.Random, size: int) -> tuple[list[tuple[int, int]], str]:
    """A body as (offset, length) slices of a random block, and its sha256."""
    block = BLOCK
    slices, digest, left = [], hashlib.sha256(), size
    while left:
        offset = rng.randrange(len(block) - CHUNK)
        n = min(CHUNK, left)
        slices.append((offset, n))
        digest.update(block[offset : offset + n])
        left -= n
    return slices, digest.hexdigest()


BLOCK = random.Random(7).randbytes(4 * MiB)


async def body_of(slices: list[tuple[int, int]]) -> AsyncIterator[bytes]:
    for offset, n in slices:
        yield BLOCK[offset : offset + n]


def pattern_sha(size: int) -> str:
    digest = hashlib.sha256()
    full, rest = divmod(size, len(PATTERN))
    for _ in range(full):
        digest.update(PATTERN)
    digest.update(PATTERN[:rest])
    return digest.hexdigest()


class Soak:
    def __init__(self, proxy_url: str, sandbox_url: str, args: argparse.Namespace) -> None:
        self.proxy = proxy_url
        self.sandbox = sandbox_url
        self.args = args
        self.tally = Tally()
        self.deadline = 0.0

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False
        ) as client:
            self.deadline = time.monotonic() + self.args.duration
            revoker = asyncio.create_task(self.revoke_now_and_then(client))
            try:
                await asyncio.gather(
                    *(
                        self.worker(client, random.Random(self.args.seed + i))
                        for i in range(self.args.concurrency)
                    )
                )
            finally:
                revoker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await revoker

    async def revoke_now_and_then(self, client: aiohttp.ClientSession) -> None:
        rng = random.Random(self.args.seed - 1)
        while True:
            await asyncio.sleep(rng.uniform(REVOKE_MIN_GAP, 8))
            self.tally.revocations.append(time.monotonic())
            async with client.post(self.sandbox + "/_sandbox/revoke") as response:
                assert response.status == 200
            self.tally.revocations.append(time.monotonic())
            self.tally.counts["revocations"] += 1

    async def worker(self, client: aiohttp.ClientSession, rng: random.Random) -> None:
        while time.monotonic() < self.deadline:
            roll = rng.random()
            if roll < self.args.abort_rate:
                kind = "abort-upload" if rng.random() < 0.5 else "abort-download"
            elif roll < 0.55:
                kind = "small-get" if rng.random() < 0.5 else "small-post"
            elif roll < 0.78:
                kind = "upload"
            else:
                kind = "download"
            started = time.monotonic()
            try:
                problem = await getattr(self, kind.replace("-", "_"))(client, rng)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            ended = time.monotonic()
            if problem == "401" and self.tally.revoked_during(started, ended):
                self.tally.counts["401-after-revocation"] += 1
            elif problem:
                self.tally.fail(f"{kind}: {problem}")
            else:
                self.tally.counts[kind] += 1

    async def small_get(self, client: aiohttp.ClientSession, rng: random.Random) -> str | None:
        async with client.get(f"{self.proxy}{ECHO}?n={rng.randrange(10**6)}") as response:
            body = await response.read()
            if response.status != 200:
                return str(response.status)
            return None if json.loads(body)["method"] == "GET" else "wrong echo"

    async def small_post(self, client: aiohttp.ClientSession, rng: random.Random) -> str | None:
        data = rng.randbytes(rng.randrange(1, 16 * KiB))
        async with client.post(self.proxy + ECHO, data=data) as response:
            body = await response.read()
            if response.status != 200:
                return str(response.status)
        self.tally.bytes_up += len(data)
        sent = hashlib.sha256(data).hexdigest()
        return None if json.loads(body)["body_sha256"] == sent else "corrupted upload"

    async def upload(self, client: aiohttp.ClientSession, rng: random.Random) -> str | None:
        size = log_uniform(rng, self.args.min_size, self.args.max_size)
        slices, sent = upload_source(rng, size)
        chunked = rng.random() < 0.2
        headers = {} if chunked else {"Content-Length": str(size)}
        async with client.put(self.proxy + ECHO, data=body_of(slices), headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                return str(response.status)
        echoed = json.loads(body)
        self.tally.bytes_up += size
        if echoed["body_length"] != size or echoed["body_sha256"] != sent:
            return f"corrupted upload ({size} bytes, chunked={chunked})"
        return None

    async def download(self, client: aiohttp.ClientSession, rng: random.Random) -> str | None:
        size = log_uniform(rng, self.args.min_size, self.args.max_size)
        digest, received = hashlib.sha256(), 0
        async with client.get(f"{self.proxy}/v4.0/sandbox/bytes?size={size}") as response:
            if response.status != 200:
                await response.read()
                return str(response.status)
            async for chunk in response.content.iter_any():
                digest.update(chunk)
                received += len(chunk)
        self.tally.bytes_down += received
        if received != size or digest.hexdigest() != pattern_sha(size):
            return f"corrupted download ({received} of {size} bytes)"
        return None

    async def abort_upload(self, client: aiohttp.ClientSession, rng: random.Random) -> None:
        """Send the head and part of a big body, then drop the connection."""
        size = log_uniform(rng, 2 * self.args.min_size, self.args.max_size)
        url = URL(self.proxy)
        _, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(
                f"PUT {ECHO} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n\r\n".encode()
            )
            left = rng.randrange(size // 4, size // 2)
            while left > 0:
                n = min(CHUNK, left)
                writer.write(BLOCK[:n])
                await writer.drain()
                left -= n
        finally:
            writer.transport.abort()

    async def abort_download(self, client: aiohttp.ClientSession, rng: random.Random) -> None:
        size = log_uniform(rng, 2 * self.args.min_size, self.args.max_size)
        async with client.get(f"{self.proxy}/v4.0/sandbox/bytes?size={size}") as response:
            await response.content.readexactly(min(size // 3, 4 * MiB))
            response.close()  # drop the connection mid-body


async def sample(pid: int, spool: Path, samples: list[tuple[float, int, int, int]]) -> None:
    started = time.monotonic()
    while True:
        rss, fds, spooled = proc_facts(pid, spool)
        samples.append((time.monotonic() - started, rss, fds, spooled))
        await asyncio.sleep(1)


async def settle(pid: int, spool: Path, fds_limit: int, within: float) -> tuple[int, int, int]:
    """Wait (up to ``within`` seconds) for fds to fall back to the baseline once traffic stopped:
    idle pooled upstream connections close after upstream_keepalive_timeout."""
    deadline = time.monotonic() + within
    while True:
        rss, fds, spooled = proc_facts(pid, spool)
        if (fds <= fds_limit and spooled == 0) or time.monotonic() > deadline:
            return rss, fds, spooled
        await asyncio.sleep(0.5)


async def drive(
    proxy: Proc, sandbox: Proc, spool: Path, args: argparse.Namespace
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client, client.get(f"{proxy.url}{ECHO}") as response:
        assert response.status == 200, await response.text()
    await asyncio.sleep(1)
    rss_baseline, fds_baseline, spool_baseline = proc_facts(proxy.pid, spool)
    samples: list[tuple[float, int, int, int]] = []
    sampler = asyncio.create_task(sample(proxy.pid, spool, samples))
    soak = Soak(proxy.url, sandbox.url, args)
    started = time.monotonic()
    try:
        await soak.run()
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    elapsed = time.monotonic() - started
    rss_end, fds_end, spool_end = await settle(proxy.pid, spool, fds_baseline, args.keepalive + 10)
    warmup = min(args.warmup, args.duration / 4)
    warm = [s[1] for s in samples if s[0] <= warmup] or [samples[0][1]]
    late = [s[1] for s in samples if s[0] >= args.duration * 0.75] or [samples[-1][1]]
    tally = soak.tally
    requests = sum(v for k, v in tally.counts.items() if k != "revocations")
    result = {
        "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency,
        "requests": requests,
        "counts": dict(tally.counts),
        "failures": tally.failures,
        "mib_up": round(tally.bytes_up / MiB),
        "mib_down": round(tally.bytes_down / MiB),
        "rss_before_mib": round(rss_baseline / MiB, 1),
        "rss_warmup_peak_mib": round(max(warm) / MiB, 1),
        "rss_late_peak_mib": round(max(late) / MiB, 1),
        "rss_growth_mib": round((max(late) - max(warm)) / MiB, 1),
        "rss_peak_mib": round(max(s[1] for s in samples) / MiB, 1),
        "rss_end_idle_mib": round(rss_end / MiB, 1),
        "fds_baseline": fds_baseline,
        "fds_peak": max(s[2] for s in samples),
        "fds_end": fds_end,
        "spool_files_peak": max(s[3] for s in samples),
        "spool_files_end": spool_end + len(os.listdir(spool)),
        "spool_files_baseline": spool_baseline,
    }
    problems = []
    if tally.counts["failed"]:
        problems.append(f"{tally.counts['failed']} requests failed")
    if max(late) - max(warm) > RSS_GROWTH_LIMIT:
        problems.append(f"RSS grew {result['rss_growth_mib']} MiB after warm-up")
    if fds_end > fds_baseline:
        problems.append(f"{fds_end} fds open at the end, {fds_baseline} before")
    if result["spool_files_end"] > spool_baseline:
        problems.append(f"{result['spool_files_end']} spool files left")
    result["problems"] = problems
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of traffic")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--min-size", type=int, default=1 * MiB, help="smallest big body")
    parser.add_argument("--max-size", type=int, default=50 * MiB, help="largest big body")
    parser.add_argument("--abort-rate", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=30, help="seconds (at most 1/4 run)")
    parser.add_argument("--token-lifetime", type=int, default=2)
    parser.add_argument("--keepalive", type=float, default=5, help="upstream pool idle, s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="aspose-soak-") as tmp:
        work = Path(tmp)
        spool, data = work / "spool", work / "sandbox-data"
        spool.mkdir()
        data.mkdir()
        procs: list[Proc] = []
        with stopping(procs):
            sandbox = start_announcing(
                "sandbox",
                [ASPOSE_PROXY, "sandbox", "--port", "0", "--data-dir", str(data),
                 "--token-lifetime", str(args.token_lifetime), "--log-level", "warning"],
                log_path=work / "sandbox.log",
            )  # fmt: skip
            procs.append(sandbox)
            proxy = start_announcing(
                "proxy",
                [ASPOSE_PROXY, "run"],
                env={
                    "ASPOSE_PROXY_UPSTREAM_URL": sandbox.url,
                    "ASPOSE_PROXY_CLIENT_ID": "demo",
                    "ASPOSE_PROXY_CLIENT_SECRET": "demo-secret",
                    "ASPOSE_PROXY_PORT": "0",
                    "ASPOSE_PROXY_SPOOL_DIR": str(spool),
                    "ASPOSE_PROXY_LOG_LEVEL": "warning",
                    "ASPOSE_PROXY_LOG_FORMAT": "json",
                    "ASPOSE_PROXY_UPSTREAM_KEEPALIVE_TIMEOUT": str(args.keepalive),
                },
                log_path=work / "proxy.log",
            )
            procs.append(proxy)
            wait_http(proxy.url + "/readyz")
            result = asyncio.run(drive(proxy, sandbox, spool, args))
            alive = proxy.popen.poll() is None
            if not alive:
                result["problems"].append("the proxy died")
            log_tail = (work / "proxy.log").read_text(errors="replace").splitlines()[-20:]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if result["problems"]:
        print("SOAK FAILED: " + "; ".join(result["problems"]), file=sys.stderr)
        print("\n".join(log_tail), file=sys.stderr)
        return 1
    print(
        f"soak passed: {result['requests']} requests in {result['duration_s']} s, "
        f"RSS growth {result['rss_growth_mib']} MiB, fds {result['fds_end']}/"
        f"{result['fds_baseline']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
