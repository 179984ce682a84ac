"""Requests/s of ``aspose-proxy run --workers N`` for N = 1 and 2 under the same wrk load.

Issue 9 asks, on a 2-core machine, for at least this: 2 workers are not slower than 1. Both
proxies stand in front of the same fast static upstream (bench/upstream.py) with the same
settings (bench/_common.py ``proxy_env``: default log level, JSON access lines to a file);
only ``--workers`` differs. No CPU pinning: the workers need every core, and wrk and the
upstream share them, as they would share a real pod's node. Each (scenario, connections,
workers) cell runs --repeat times, interleaved round-robin so background load hits both alike;
the table shows medians, the ratio to 1 worker, and the server's CPU time per request (the
supervisor and all its workers).

    .venv/bin/python bench/workers.py                          # ~4 min
    .venv/bin/python bench/workers.py --duration 5 --repeat 1  # a quick look
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ASPOSE_PROXY,
    BENCH_DIR,
    Proc,
    machine_facts,
    median,
    proxy_env,
    start_announcing,
    stopping,
    table,
    uses_uvloop,
    wait_http,
    write_results,
)
from throughput import SCENARIOS, run_wrk

WORKER_SCENARIOS = ("small", "1mib")


def start_proxy(workers: int, upstream: Proc, tmp: Path, log_level: str) -> Proc:
    """``aspose-proxy run --workers N``; returns once it announced and every worker is ready."""
    name = f"workers-{workers}"
    spool = tmp / name
    spool.mkdir()
    proc = start_announcing(
        name,
        [ASPOSE_PROXY, "run", "--workers", str(workers)],
        env=proxy_env(upstream.url, spool, log_level),
        log_path=tmp / f"{name}.log",
        timeout=60,
    )
    # Each worker fetches its own token: poll until a few answers in a row are ready.
    for _ in range(4 * workers):
        wait_http(proc.url + "/readyz")
    children = _children(proc.pid)
    proc.extra.update(workers=workers, worker_pids=children)
    proc.extra["uvloop"] = all(uses_uvloop(pid) for pid in children or [proc.pid])
    return proc


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children()]
    except Exception:  # psutil missing or the process gone: the table still stands
        return []


def _tree_rss(pid: int) -> int:
    """Resident bytes of the supervisor and its workers (shared pages counted per process)."""
    try:
        import psutil

        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children()])
    except Exception:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts (1,2)")
    parser.add_argument(
        "--scenarios",
        default=",".join(WORKER_SCENARIOS),
        help=f"comma list from {','.join(WORKER_SCENARIOS)}",
    )
    parser.add_argument("--connections", default="64", help="wrk -c values (default 64)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (max 60)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per cell (default 5)")
    parser.add_argument("--log-level", default="info", help="the proxies' log level (info)")
    args = parser.parse_args(argv)

    counts = [int(w) for w in args.workers.split(",") if w]
    scenarios = [s for s in args.scenarios.split(",") if s]
    conns = [int(c) for c in args.connections.split(",") if c]
    if set(scenarios) - set(WORKER_SCENARIOS) or not counts or min(counts) < 1:
        parser.error("unknown scenario, or a worker count below 1")
    if not 0 < args.duration <= 60 or not 1 <= args.repeat <= 10 or not conns:
        parser.error("--duration 1..60, --repeat 1..10, --connections non-empty")
    if max(conns) > 1024 or max(counts) > 16:
        parser.error("--connections at most 1024, --workers at most 16")
    if shutil.which("wrk") is None:
        parser.error("wrk not found: apt-get install -y wrk")

    cells = len(counts) * len(scenarios) * len(conns) * args.repeat
    print(
        f"{cells} wrk runs of {args.duration}s (+{args.warmup}s warm-up): "
        f"about {cells * (args.duration + args.warmup) / 60:.1f} min; "
        f"load average now {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    facts = machine_facts()
    runs: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="aspose-bench-workers-") as tmpdir, stopping(procs):
        tmp = Path(tmpdir)
        upstream = start_announcing(
            "upstream",
            [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", "0"],
            log_path=tmp / "upstream.log",
        )
        procs.append(upstream)
        live: dict[int, Proc] = {}
        for count in counts:
            proc = start_proxy(count, upstream, tmp, args.log_level)
            procs.append(proc)
            live[count] = proc
            info[f"workers-{count}"] = {"url": proc.url, **proc.extra}
        for rep in range(args.repeat):
            for scenario in scenarios:
                for c in conns:
                    for count, proc in live.items():
                        url = proc.url + SCENARIOS[scenario]
                        if args.warmup > 0:
                            run_wrk(url, min(c, 8), args.warmup, None, None)
                        r = run_wrk(url, c, args.duration, None, proc.pid)
                        r.update(workers=count, scenario=scenario, connections=c, repeat=rep)
                        r["loadavg_after"] = round(os.getloadavg()[0], 2)
                        runs.append(r)
                        print(
                            f"  [{rep + 1}/{args.repeat}] {scenario:5} c={c:<4} "
                            f"workers={count}  {r['rps']:8.0f} req/s  "
                            f"p99 {r['lat_p99_us'] / 1000:7.2f} ms  errors {r['error_count']}",
                            flush=True,
                        )
        for count, proc in live.items():
            info[f"workers-{count}"]["still_running"] = _children(proc.pid)
            info[f"workers-{count}"]["rss_mib_after"] = round(_tree_rss(proc.pid) / 2**20, 1)

    summary = []
    for scenario in scenarios:
        for c in conns:
            base = None
            for count in counts:
                cell = [
                    r
                    for r in runs
                    if (r["workers"], r["scenario"], r["connections"]) == (count, scenario, c)
                ]
                rps = median([r["rps"] for r in cell])
                base = base or rps
                summary.append(
                    {
                        "scenario": scenario,
                        "connections": c,
                        "workers": count,
                        "rps": rps,
                        "rps_all": [round(r["rps"]) for r in cell],
                        "vs_1_worker": rps / base if base else float("nan"),
                        "p50_ms": median([r["lat_p50_us"] for r in cell]) / 1000,
                        "p99_ms": median([r["lat_p99_us"] for r in cell]) / 1000,
                        "cpu_us_per_req": median([r["server_cpu_us_per_req"] for r in cell]),
                        "errors": sum(r["error_count"] for r in cell),
                    }
                )
    print()
    print(f"medians of {args.repeat} run(s) x {args.duration}s; no pinning; log {args.log_level}")
    print(
        table(
            [
                "scenario",
                "conns",
                "workers",
                "req/s",
                "vs 1 worker",
                "p50 ms",
                "p99 ms",
                "server CPU us/req",
                "errors",
                "all runs req/s",
            ],
            [
                [
                    s["scenario"],
                    s["connections"],
                    s["workers"],
                    round(s["rps"]),
                    f"{s['vs_1_worker']:.2f}x",
                    s["p50_ms"],
                    s["p99_ms"],
                    round(s["cpu_us_per_req"]),
                    s["errors"],
                    " ".join(map(str, s["rps_all"])),
                ]
                for s in summary
            ],
        )
    )
    for name, proxy in info.items():
        print(f"{name}: {proxy.get('rss_mib_after')} MiB resident (supervisor and workers)")
    path = write_results(
        "workers",
        {
            "machine": facts,
            "settings": {
                "workers": counts,
                "duration": args.duration,
                "repeat": args.repeat,
                "connections": conns,
                "warmup": args.warmup,
                "log_level": args.log_level,
                "pinning": False,
            },
            "proxies": info,
            "summary": summary,
            "runs": runs,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
