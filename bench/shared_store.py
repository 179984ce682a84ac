"""What a budget and a rate limit cost per covered call, per usage-store engine (issue 17).

A covered call asks the ledger twice before it is forwarded: one rate-limit take and one
budget reservation. In memory (``usage_store = "off"``) that is two dictionary updates; with
SQLite two ``BEGIN IMMEDIATE`` transactions on the store's thread; with Redis two Lua scripts,
each a network round trip. The issue's question: is a Redis round trip over 5 % of a small
request (then lease calls in chunks)?

Contenders, all in front of bench/upstream.py with the same settings but these:

    none    SQLite store, no budget or rate limit (the small request itself)
    memory  usage_store off: a budget and a rate limit in process memory
    sqlite  SQLite store with a budget and a rate limit
    redis   Redis store (a local redis-server) with a budget and a rate limit

Each contender runs wrk with 1 connection (latency: a round trip is waited for) and with 16
(throughput and the server's CPU per request), ``--repeat`` rounds interleaved round-robin.

    .venv/bin/python bench/shared_store.py                 # ~3 min
    .venv/bin/python bench/shared_store.py --duration 3 --repeat 1
"""

# ruff: noqa: S603  (bench: runs redis-server, found on PATH)
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ASPOSE_PROXY,
    free_port,
    machine_facts,
    median,
    proxy_env,
    start_announcing,
    start_upstream,
    stopping,
    table,
    wait_http,
    write_results,
)
from throughput import run_wrk

PATH = "/v4.0/words/storage/disc"
CONTENDERS = ("none", "memory", "sqlite", "redis")
LIMITS = {
    "ASPOSE_PROXY_BUDGETS": json.dumps([{"client": "*", "calls": 10**12}]),
    "ASPOSE_PROXY_RATE_LIMITS": json.dumps([{"client": "*", "per_second": 1e9, "burst": 10**9}]),
}


def contender_env(name: str, base: dict[str, str], redis_url: str) -> dict[str, str]:
    env = dict(base)
    if name != "none":
        env.update(LIMITS)
    if name == "memory":
        env["ASPOSE_PROXY_USAGE_STORE"] = "off"
    elif name == "redis":
        env["ASPOSE_PROXY_USAGE_STORE"] = redis_url
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args(argv)
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found")
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name, stopping([]) as procs:
        tmp = Path(tmp_name)
        upstream = start_upstream(tmp)
        procs.append(upstream)
        port = free_port()
        redis = subprocess.Popen(
            [
                str(shutil.which("redis-server")),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
            ],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
        )
        redis_url = f"redis://127.0.0.1:{port}/0"
        try:
            for _ in range(args.repeat):
                for name in CONTENDERS:
                    spool = tmp / name
                    spool.mkdir(exist_ok=True)
                    env = contender_env(name, proxy_env(upstream.url, spool, "warning"), redis_url)
                    proxy = start_announcing(
                        name, [ASPOSE_PROXY, "run"], env=env, log_path=spool / "proxy.log"
                    )
                    try:
                        url = proxy.url + PATH
                        wait_http(url)
                        run_wrk(url, 4, 2, None, None)  # warm-up
                        for connections in (1, 16):
                            result = run_wrk(url, connections, args.duration, None, proxy.pid)
                            assert result["error_count"] == 0, result["errors"]
                            runs.setdefault((name, connections), []).append(result)
                    finally:
                        proxy.stop()
        finally:
            redis.terminate()
            redis.wait(10)
    rows = []
    base_latency = 1e6 / median([r["rps"] for r in runs[("none", 1)]])
    base_cpu = median([r["server_cpu_us_per_req"] for r in runs[("none", 16)]])
    summary: dict[str, Any] = {}
    for name in CONTENDERS:
        latency = 1e6 / median([r["rps"] for r in runs[(name, 1)]])
        rps16 = median([r["rps"] for r in runs[(name, 16)]])
        cpu = median([r["server_cpu_us_per_req"] for r in runs[(name, 16)]])
        summary[name] = {
            "latency_us_c1": latency,
            "added_latency_us": latency - base_latency,
            "added_latency_share": (latency - base_latency) / base_latency,
            "rps_c16": rps16,
            "cpu_us_per_req": cpu,
            "added_cpu_us": cpu - base_cpu,
        }
        rows.append(
            [
                name,
                round(latency),
                round(latency - base_latency),
                f"{(latency - base_latency) / base_latency:+.1%}",
                round(rps16),
                round(cpu),
                round(cpu - base_cpu),
            ]
        )
    headers = [
        "contender",
        "µs/req, 1 conn",
        "added µs",
        "added share",
        "req/s, 16 conns",
        "server CPU µs/req",
        "added CPU µs",
    ]
    print(table(headers, rows))
    path = write_results(
        "shared-store",
        {"machine": machine_facts(), "args": vars(args), "summary": summary},
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
