"""Profile ``aspose-proxy run`` under wrk with py-spy and summarise where the time goes.

Starts bench/upstream.py and the proxy (pinned to CPU 0; wrk and upstream on CPU 1), runs
wrk for --duration seconds while ``py-spy record`` samples the proxy, then prints:
  * self time by library (aiohttp, structlog, prometheus_client, proxy/ ...),
  * the hottest functions by self time,
  * proxy/ functions by inclusive time (what the proxy's own code costs, callees included).
Also writes a flame graph SVG and the collapsed stacks next to the JSON in bench/results/.

Needs py-spy in the venv (``.venv/bin/pip install py-spy``) and ptrace rights (root, or
kernel.yama.ptrace_scope=0).

    .venv/bin/python bench/profile.py --scenario small --log-level info --duration 15
"""

# ruff: noqa: S603  (bench: runs py-spy and flamegraph.pl)
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ASPOSE_PROXY,
    BENCH_DIR,
    RESULTS_DIR,
    VENV_BIN,
    Proc,
    machine_facts,
    pinned,
    proxy_env,
    start_announcing,
    stopping,
    table,
    wait_http,
    write_results,
)
from throughput import SCENARIOS, run_wrk

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
LIBS = (
    "aiohttp",
    "structlog",
    "prometheus_client",
    "yarl",
    "multidict",
    "asyncio",
    "uvloop",
    "json",
    "logging",
    "re",
    "uuid",
    "contextvars",
    "propcache",
    "socket",
    "ssl",
)


def library_of(path: str) -> str:
    p = path.replace("\\", "/")
    if p.startswith("proxy/"):
        return p
    if "/proxy/" in p and "site-packages" not in p:
        return "proxy/" + p.rsplit("/proxy/", 1)[1]
    for lib in LIBS:
        if f"/{lib}/" in p or p.endswith(f"/{lib}.py") or p.startswith(f"{lib}/"):
            return lib
    if "site-packages/" in p:
        return p.split("site-packages/", 1)[1].split("/", 1)[0]
    return Path(p).name or "?"


def parse_collapsed(text: str) -> tuple[int, list[tuple[list[tuple[str, str, str]], int]]]:
    stacks = []
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for raw in stack.split(";"):
            m = FRAME.match(raw.strip())
            if m:
                frames.append((m.group("func"), m.group("file"), m.group("line") or ""))
            else:
                frames.append((raw.strip(), "?", ""))
        n = int(count)
        total += n
        stacks.append((frames, n))
    return total, stacks


def summarise(text: str, top: int) -> dict[str, Any]:
    total, stacks = parse_collapsed(text)
    by_lib: collections.Counter[str] = collections.Counter()
    self_fn: collections.Counter[str] = collections.Counter()
    incl_proxy: collections.Counter[str] = collections.Counter()
    incl_line: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        # skip py-spy's "process/thread" pseudo frames
        real = [f for f in frames if f[1] != "?"] or frames
        func, file, _ = real[-1]
        by_lib[library_of(file)] += n
        self_fn[f"{func} ({library_of(file)})"] += n
        seen = set()
        for depth, (func, file, line) in enumerate(real):
            lib = library_of(file)
            if not lib.startswith("proxy/") or lib.startswith(("proxy/cli", "proxy/server")):
                continue
            key = f"{func} ({lib})"
            if key not in seen:
                seen.add(key)
                incl_proxy[key] += n
            # a proxy/ line and what it calls (the next frame), callees included
            callee = real[depth + 1] if depth + 1 < len(real) else None
            what = f" -> {callee[0]} ({library_of(callee[1])})" if callee else " (self)"
            incl_line[f"{lib}:{line}{what}"] += n
    pct = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "self_by_library": [(k, pct(v)) for k, v in by_lib.most_common(top)],
        "self_by_function": [(k, pct(v)) for k, v in self_fn.most_common(top)],
        "inclusive_proxy_functions": [(k, pct(v)) for k, v in incl_proxy.most_common(top)],
        "inclusive_proxy_lines": [(k, pct(v)) for k, v in incl_line.most_common(top)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="small")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=15, help="seconds (max 120)")
    parser.add_argument("--log-level", default="info", help="proxy log level (default info)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples/s")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="py-spy --nonblocking: less overhead, but torn stacks",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120:
        parser.error("--duration 1..120")
    pyspy = str(VENV_BIN / "py-spy") if (VENV_BIN / "py-spy").exists() else shutil.which("py-spy")
    if pyspy is None:
        parser.error("py-spy not found: .venv/bin/pip install py-spy")
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_cpu, load_cpu = ("0", "1") if pin else (None, None)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    tag = f"{args.scenario}-{args.log_level}"
    svg = RESULTS_DIR / f"profile-{tag}-{stamp}.svg"
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="aspose-bench-prof-") as tmpdir, stopping(procs):
        tmp = Path(tmpdir)
        upstream = start_announcing(
            "upstream",
            pinned([sys.executable, str(BENCH_DIR / "upstream.py")], load_cpu),
            log_path=tmp / "upstream.log",
        )
        procs.append(upstream)
        proxy = start_announcing(
            "proxy",
            pinned([ASPOSE_PROXY, "run"], server_cpu),
            env=proxy_env(upstream.url, tmp, args.log_level),
            log_path=tmp / "proxy.log",
        )
        procs.append(proxy)
        wait_http(proxy.url + "/readyz")
        url = proxy.url + SCENARIOS[args.scenario]
        run_wrk(url, 8, 1, load_cpu, None)  # warm-up
        raw = tmp / "stacks.txt"
        common = [
            pyspy,
            "record",
            "--pid",
            str(proxy.pid),
            "--rate",
            str(args.rate),
            "--duration",
            str(args.duration),
        ]
        if args.nonblocking:
            common.append("--nonblocking")
        spy_raw = subprocess.Popen(
            [*common, "--format", "raw", "-o", str(raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        wrk = run_wrk(url, args.connections, args.duration, load_cpu, proxy.pid)
        _, err = spy_raw.communicate(timeout=args.duration + 60)
        if not raw.exists():
            print(f"py-spy failed: {err.decode(errors='replace')[-800:]}")
            return 1
        collapsed = raw.read_text()
        (RESULTS_DIR / f"profile-{tag}-{stamp}.txt").write_text(collapsed)
        # the flame graph from the same stacks, if the tool is around
        flame = shutil.which("flamegraph.pl")
        if flame:
            with open(svg, "wb") as out:
                subprocess.run([flame], input=collapsed.encode(), stdout=out, check=False)

    result = summarise(collapsed, args.top)
    print(
        f"\nproxy under wrk: {args.scenario}, c={args.connections}, {args.duration}s, "
        f"log level {args.log_level}: {wrk['rps']:.0f} req/s, p99 "
        f"{wrk['lat_p99_us'] / 1000:.1f} ms, {wrk['server_cpu_us_per_req']:.0f} us CPU/req "
        f"(py-spy attached: figures are a little lower than without it); "
        f"{result['samples']} samples"
    )
    for key, title in (
        ("self_by_library", "self time by library"),
        ("self_by_function", "hottest functions (self time)"),
        ("inclusive_proxy_functions", "proxy/ functions (inclusive time)"),
        ("inclusive_proxy_lines", "proxy/ lines and their callee (inclusive)"),
    ):
        print(f"\n{title}")
        print(table(["where", "% of samples"], result[key]))
    path = write_results(
        f"profile-{tag}",
        {
            "machine": machine_facts(),
            "scenario": args.scenario,
            "connections": args.connections,
            "duration": args.duration,
            "log_level": args.log_level,
            "wrk": wrk,
            **result,
            "collapsed_stacks": f"profile-{tag}-{stamp}.txt",
        },
    )
    print(
        f"\nJSON: {path}\ncollapsed stacks: bench/results/profile-{tag}-{stamp}.txt "
        f"(load into speedscope.app or flamegraph.pl)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
