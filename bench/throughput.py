"""Requests/s and latency of our proxy against other ways of doing the same job, under wrk.

Contenders, all in front of the same fast static upstream (bench/upstream.py):
  direct       wrk -> upstream (the ceiling)
  proxy        aspose-proxy run, default log level (info: one JSON access line per request),
               access control on (require_client_auth, an X-Proxy-Key) and usage accounting on
               (SQLite, the default engine) where the proxy has those settings
  proxy-open   aspose-proxy run with its defaults only (no client key required)
  proxy-quiet  proxy-open with ASPOSE_PROXY_LOG_LEVEL=warning
  minimal      bench/minimal_forwarder.py (aiohttp, fixed Authorization, nothing else)
  nginx        nginx -p TMP -c TMP/nginx.conf, fixed proxy_set_header Authorization
  mitmproxy    mitmdump --mode reverse:UPSTREAM with an addon setting Authorization

Scenarios: "small" (GET /v4.0/words/storage/disc, a 64-byte JSON answer), "1mib"
(GET /bytes?size=1048576) and "1mib-up" (PUT of a 1 MiB body, Content-Length, to a path the
upstream drains). Each (scenario, connections, contender) cell runs --repeat times,
interleaved round-robin so background load hits every contender alike; the table shows
medians. CPU pinning (default on 2+ cores): the server under test on CPU 0, wrk and the
upstream on CPU 1. Server CPU time per request (psutil, process tree) is reported as well:
it is less sensitive to other load on the machine than requests/s.

    .venv/bin/python bench/throughput.py                              # everything, ~8 min
    .venv/bin/python bench/throughput.py --only proxy,minimal --duration 5 --repeat 1
"""

# ruff: noqa: S603, S105, S108  (bench: runs wrk/nginx/mitmdump; a fixed fake token)
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ASPOSE_PROXY,
    BENCH_DIR,
    Proc,
    free_port,
    machine_facts,
    median,
    pinned,
    proxy_env,
    secured_env,
    start_announcing,
    start_upstream,
    stopping,
    table,
    uses_uvloop,
    wait_http,
    write_results,
)

CONTENDERS = (
    "direct",
    "proxy",
    "proxy-open",
    "proxy-quiet",
    "minimal",
    "minimal-asyncio",
    "nginx",
    "mitmproxy",
)
DEFAULT_CONTENDERS = ("direct", "proxy", "proxy-quiet", "minimal", "nginx")
PROXIES = ("proxy", "proxy-open", "proxy-quiet")
UPLOAD_PATH = "/v4.0/words/storage/file/bench.bin"
SCENARIOS = {
    "small": "/v4.0/words/storage/disc",
    "1mib": "/bytes?size=1048576",
    "1mib-up": UPLOAD_PATH,
}
# Scenarios that send a body: its size. wrk sends it with Content-Length (one buffer, reused).
UPLOAD_SIZES = {"1mib-up": 1048576}
TOKEN = "x.y.z"
MITM_VENVS = (BENCH_DIR / ".venv-mitm", Path("/tmp/venv-mitm"))

MITM_ADDON = f'''
"""Sets a fixed Authorization header on every request (bench only)."""
from mitmproxy import http


def request(flow: http.HTTPFlow) -> None:
    flow.request.headers["Authorization"] = "Bearer {TOKEN}"
'''

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
    upstream up {{ server {up_host}:{up_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
        }}
    }}
}}
"""


def start_contender(
    name: str, upstream: Proc, tmp: Path, cpu: str | None
) -> tuple[Proc | None, str]:
    """Start one contender; (None, reason) when it cannot run here."""
    py = sys.executable
    if name == "direct":
        return upstream, ""
    if name in PROXIES:
        cmd = [ASPOSE_PROXY, "run"]
        env = proxy_env(upstream.url, tmp, "warning" if name == "proxy-quiet" else "info")
        headers: dict[str, str] = {}
        missing: list[str] = []
        if name == "proxy":
            secured, headers, missing = secured_env()
            env.update(secured)
        proc = start_announcing(
            name,
            pinned(cmd, cpu),
            env=env,
            log_path=tmp / f"{name}.log",  # the access log lands in a file, as in production
        )
        wait_http(proc.url + "/readyz")
        proc.extra.update(
            uvloop=uses_uvloop(proc.pid),
            headers=headers,
            settings={k: v for k, v in env.items() if "SECRET" not in k and "KEYS" not in k},
            missing_settings=missing,
        )
        return proc, ""
    if name in ("minimal", "minimal-asyncio"):
        proc = start_announcing(
            name,
            pinned(
                [
                    py,
                    str(BENCH_DIR / "minimal_forwarder.py"),
                    "--upstream",
                    upstream.url,
                    "--port",
                    "0",
                    "--token",
                    TOKEN,
                    *(["--asyncio"] if name == "minimal-asyncio" else []),
                ],
                cpu,
            ),
            log_path=tmp / f"{name}.log",
        )
        proc.extra["uvloop"] = uses_uvloop(proc.pid)
        return proc, ""
    if name == "nginx":
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if nginx is None:
            return None, "nginx not installed (apt-get install -y nginx)"
        port = free_port()
        host, _, up_port = upstream.url.removeprefix("http://").rpartition(":")
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=tmp, user=user, up_host=host, up_port=up_port, port=port, token=TOKEN
            )
        )
        popen = subprocess.Popen(
            pinned([nginx, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"], cpu),
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "nginx.stderr", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        proc = Proc(name, popen, f"http://127.0.0.1:{port}")
        try:
            wait_http(proc.url + SCENARIOS["small"], timeout=10)
        except RuntimeError as exc:
            proc.stop()
            return None, f"nginx did not start: {exc}; {(tmp / 'nginx.stderr').read_text()}"
        return proc, ""
    if name == "mitmproxy":
        mitmdump = next(
            (v / "bin" / "mitmdump" for v in MITM_VENVS if (v / "bin" / "mitmdump").exists()), None
        )
        if mitmdump is None and shutil.which("mitmdump"):
            mitmdump = Path(shutil.which("mitmdump") or "")
        if mitmdump is None:
            return None, (
                "mitmdump not found (python3 -m venv bench/.venv-mitm && "
                "bench/.venv-mitm/bin/pip install mitmproxy)"
            )
        addon = tmp / "mitm_auth.py"
        addon.write_text(MITM_ADDON)
        port = free_port()
        popen = subprocess.Popen(
            pinned(
                [
                    str(mitmdump),
                    "--mode",
                    f"reverse:{upstream.url}",
                    "--listen-host",
                    "127.0.0.1",
                    "--listen-port",
                    str(port),
                    "-s",
                    str(addon),
                    "--set",
                    "termlog_verbosity=warn",
                    "--set",
                    "flow_detail=0",
                    "--set",
                    "stream_large_bodies=256k",
                    "--set",
                    f"confdir={tmp / 'mitm-conf'}",
                ],
                cpu,
            ),
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "mitm.stderr", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        proc = Proc(name, popen, f"http://127.0.0.1:{port}")
        try:
            wait_http(proc.url + SCENARIOS["small"], timeout=30)
        except RuntimeError as exc:
            proc.stop()
            return None, f"mitmdump did not start: {exc}; {(tmp / 'mitm.stderr').read_text()}"
        return proc, ""
    raise ValueError(name)


def tree_cpu(pid: int) -> float:
    """user+system CPU seconds of a process and its children (nginx workers)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def wrk_script(upload_size: int | None, tmp: Path) -> Path:
    """The Lua script for wrk: the JSON report, and for uploads a PUT with a fixed body."""
    report = BENCH_DIR / "wrk_report.lua"
    if not upload_size:
        return report
    script = tmp / f"wrk_upload_{upload_size}.lua"
    if not script.exists():
        script.write_text(
            'wrk.method = "PUT"\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
            f'wrk.body = string.rep("x", {upload_size})\n' + report.read_text()
        )
    return script


def run_wrk(
    url: str,
    connections: int,
    duration: float,
    cpu: str | None,
    server_pid: int | None,
    headers: dict[str, str] | None = None,
    script: Path | None = None,
) -> dict[str, Any]:
    """One wrk run; requests, bytes, latency percentiles and the server's CPU time per request."""
    header_args = [a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")]
    cmd = pinned(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            *header_args,
            "-s",
            str(script or BENCH_DIR / "wrk_report.lua"),
            url,
        ],
        cpu,
    )
    cpu_before = tree_cpu(server_pid) if server_pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=False)
    cpu_used = (tree_cpu(server_pid) - cpu_before) if server_pid else 0.0
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    seconds = data["duration_us"] / 1e6
    data["rps"] = data["requests"] / seconds if seconds else 0.0
    data["mib_per_s"] = data["bytes"] / seconds / 1048576 if seconds else 0.0
    data["server_cpu_s"] = cpu_used
    data["server_cpu_us_per_req"] = cpu_used / data["requests"] * 1e6 if data["requests"] else 0
    errs = data["errors"]
    data["error_count"] = sum(errs.values())
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma list from {','.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma list from {','.join(SCENARIOS)}"
    )
    parser.add_argument("--connections", default="32,64", help="wrk -c values (default 32,64)")
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds per wrk run (default 10, max 60)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="seconds of warm-up before each run, 0 for none (default 1)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (default 3)")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    args = parser.parse_args(argv)

    contenders = [c for c in args.only.split(",") if c]
    scenarios = [s for s in args.scenarios.split(",") if s]
    conns = [int(c) for c in args.connections.split(",") if c]
    if set(contenders) - set(CONTENDERS) or set(scenarios) - set(SCENARIOS):
        parser.error("unknown contender or scenario")
    if not 0 < args.duration <= 60 or not 1 <= args.repeat <= 10 or not conns:
        parser.error("--duration 0..60, --repeat 1..10, --connections non-empty")
    if max(conns) > 1024:
        parser.error("--connections at most 1024")
    if shutil.which("wrk") is None:
        parser.error("wrk not found: apt-get install -y wrk")
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_cpu, load_cpu = ("0", "1") if pin else (None, None)

    cells = len(contenders) * len(scenarios) * len(conns) * args.repeat
    print(
        f"{cells} wrk runs of {args.duration:g}s (+{args.warmup:g}s warm-up): "
        f"about {cells * (args.duration + args.warmup) / 60:.1f} min",
        flush=True,
    )

    facts = machine_facts()
    skipped: dict[str, str] = {}
    runs: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="aspose-bench-tp-") as tmpdir, stopping(procs):
        tmp = Path(tmpdir)
        upstream = start_upstream(tmp, load_cpu)
        procs.append(upstream)
        live: dict[str, Proc] = {}
        for name in contenders:
            sub = tmp / name
            sub.mkdir()
            proc, reason = start_contender(name, upstream, sub, server_cpu)
            if proc is None:
                skipped[name] = reason
                print(f"skipping {name}: {reason}", flush=True)
                continue
            if proc is not upstream:
                procs.append(proc)
            live[name] = proc
            info[name] = {"url": proc.url, **proc.extra}
        for rep in range(args.repeat):
            for scenario in scenarios:
                for c in conns:
                    for name, proc in live.items():
                        url = proc.url + SCENARIOS[scenario]
                        hdrs = proc.extra.get("headers")
                        script = wrk_script(UPLOAD_SIZES.get(scenario), tmp)
                        if args.warmup > 0:
                            run_wrk(url, min(c, 8), args.warmup, load_cpu, None, hdrs, script)
                        r = run_wrk(url, c, args.duration, load_cpu, proc.pid, hdrs, script)
                        if scenario in UPLOAD_SIZES:  # wrk counts bytes read, not sent
                            r["mib_per_s"] = r["rps"] * UPLOAD_SIZES[scenario] / 1048576
                        r.update(contender=name, scenario=scenario, connections=c, repeat=rep)
                        runs.append(r)
                        print(
                            f"  [{rep + 1}/{args.repeat}] {scenario:5} c={c:<4} {name:12} "
                            f"{r['rps']:9.0f} req/s  p99 {r['lat_p99_us'] / 1000:7.2f} ms  "
                            f"errors {r['error_count']}",
                            flush=True,
                        )
        for name in PROXIES:
            log = tmp / name / f"{name}.log"
            if log.exists():
                info.setdefault(name, {})["log_bytes"] = log.stat().st_size

    summary = []
    for scenario in scenarios:
        for c in conns:
            for name in live:
                cell = [
                    r
                    for r in runs
                    if (r["contender"], r["scenario"], r["connections"]) == (name, scenario, c)
                ]
                summary.append(
                    {
                        "scenario": scenario,
                        "connections": c,
                        "contender": name,
                        "rps": median([r["rps"] for r in cell]),
                        "rps_all": [round(r["rps"]) for r in cell],
                        "mib_per_s": median([r["mib_per_s"] for r in cell]),
                        "p50_ms": median([r["lat_p50_us"] for r in cell]) / 1000,
                        "p99_ms": median([r["lat_p99_us"] for r in cell]) / 1000,
                        "cpu_us_per_req": median([r["server_cpu_us_per_req"] for r in cell]),
                        "errors": sum(r["error_count"] for r in cell),
                    }
                )
    rows = []
    for s in summary:
        ref = next(
            (
                x["rps"]
                for x in summary
                if x["contender"] == "minimal"
                and (x["scenario"], x["connections"]) == (s["scenario"], s["connections"])
            ),
            None,
        )
        rows.append(
            [
                s["scenario"],
                s["connections"],
                s["contender"],
                round(s["rps"]),
                f"{s['rps'] / ref:.2f}x" if ref else "-",
                s["p50_ms"],
                s["p99_ms"],
                round(s["cpu_us_per_req"]) if s["contender"] != "direct" else "-",
                s["errors"],
            ]
        )
    print()
    print(
        f"medians of {args.repeat} run(s) x {args.duration:g}s; pinning="
        f"{'server CPU0, wrk+upstream CPU1' if pin else 'off'}; "
        f"uvloop in proxy={info.get('proxy', info.get('proxy-quiet', {})).get('uvloop')}"
    )
    print(
        table(
            [
                "scenario",
                "conns",
                "contender",
                "req/s",
                "vs minimal",
                "p50 ms",
                "p99 ms",
                "server CPU us/req",
                "errors",
            ],
            rows,
        )
    )
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    path = write_results(
        "throughput",
        {
            "machine": facts,
            "settings": {
                "duration": args.duration,
                "repeat": args.repeat,
                "connections": conns,
                "pinning": pin,
                "warmup": args.warmup,
            },
            "contenders": info,
            "skipped": skipped,
            "summary": summary,
            "runs": runs,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
