"""Instructions per request under valgrind's callgrind: a figure that holds on a noisy machine.

Wall-clock req/s on a shared 2-core VM swings by tens of percent; the number of user-space
instructions a server executes per request moves by about 1 %. Each contender runs under
callgrind in front of bench/upstream.py (not instrumented); wrk warms it up, callgrind's counters
are zeroed, wrk drives it for --duration seconds, the counters are dumped, and the instructions
are divided by the requests wrk completed.

    .venv/bin/python bench/instructions.py                        # minimal, proxy: ~2.5 min
    .venv/bin/python bench/instructions.py --contenders proxy,proxy-open,proxy-quiet
    .venv/bin/python bench/instructions.py --smoke                # the CI check, ~30 s

``--smoke`` measures the proxy with the parameters recorded in the committed baseline
(bench/results/instructions-baseline.json) and exits 1 when it needs more than 15 % over that
figure; ``--write-baseline`` records a new one (commit it with the change that explains it).
Contender "proxy" has access control and usage accounting switched on (see throughput.py).
Needs valgrind (callgrind_control) and wrk: apt-get install -y valgrind wrk.
"""

# ruff: noqa: S603  (bench: runs valgrind, wrk and our own servers, found on PATH)
from __future__ import annotations

import argparse
import json
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
    Proc,
    free_port,
    machine_facts,
    proxy_env,
    proxy_settings_fields,
    secured_env,
    start_upstream,
    stopping,
    table,
    write_results,
)

BASELINE = RESULTS_DIR / "instructions-baseline.json"
TOLERANCE = 0.15
PATH = "/v4.0/words/storage/disc"
# proxy: access control + accounting (see throughput.py); the others take features away, so
# the differences price each one: proxy-open (no client key), proxy-noacct (usage_store off),
# proxy-quiet (open, log level warning), proxy-bare (open, warning, no accounting).
CONTENDERS = ("minimal", "proxy", "proxy-open", "proxy-noacct", "proxy-quiet", "proxy-bare")
# One connection: requests then take the same path every time (no batching that varies with
# how fast the machine is), and the figure repeats to within about 1 % even under load.
SMOKE = {"connections": 1, "warmup": 3, "duration": 6}
_REQUESTS = re.compile(r"(\d+) requests in")


def missing_tools() -> list[str]:
    return [t for t in ("valgrind", "callgrind_control", "wrk") if shutil.which(t) is None]


def _server(
    name: str, upstream: str, port: int, tmp: Path
) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Command, environment and client headers of one contender listening on ``port``."""
    if name == "minimal":
        cmd = [sys.executable, str(BENCH_DIR / "minimal_forwarder.py"), "--upstream", upstream]
        return [*cmd, "--port", str(port)], {}, {}
    quiet = name in ("proxy-quiet", "proxy-bare")
    env = proxy_env(upstream, tmp, "warning" if quiet else "info")
    env["ASPOSE_PROXY_PORT"] = str(port)
    # Work done once per interval (a batched log write, a usage flush) is shared by the requests
    # of that interval: thousands at full speed, a few dozen under callgrind, where the share
    # would then depend on how fast the machine happens to be. Longer intervals keep it out;
    # batches still flush when full (64 KiB of log lines), which is per-request work.
    fields = proxy_settings_fields()
    for key in ("log_flush_interval", "usage_flush_interval"):
        if key in fields:
            env[f"ASPOSE_PROXY_{key.upper()}"] = "3600"
    headers: dict[str, str] = {}
    if name in ("proxy", "proxy-noacct"):
        secured, headers, _ = secured_env()
        env.update(secured)
    if name in ("proxy-noacct", "proxy-bare") and "usage_store" in fields:
        env["ASPOSE_PROXY_USAGE_STORE"] = "off"
    return [ASPOSE_PROXY, "run"], env, headers


def _wait_answer(port: int, timeout: float) -> None:
    """Until the server answers anything on PATH (under callgrind start-up takes seconds)."""
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
        finally:
            conn.close()
    raise RuntimeError(f"no answer on port {port} after {timeout:.0f} s")


def _sequential(port: int, count: int, headers: dict[str, str]) -> None:
    """``count`` requests one after another on one keep-alive connection."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(count):
            conn.request("GET", PATH, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"warm-up request answered {resp.status}")
    finally:
        conn.close()


def _wrk(port: int, connections: int, seconds: int, headers: dict[str, str]) -> int:
    """Run wrk on PATH; the number of requests it completed (non-2xx answers fail the run)."""
    hdrs = [a for k, v in headers.items() for a in ("-H", f"{k}: {v}")]
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", *hdrs]
    done = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    out = done.stdout + done.stderr
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk got error answers: {out}")
    m = _REQUESTS.search(out)
    if m is None:
        raise RuntimeError(f"wrk output without a request count: {out}")
    return int(m.group(1))


def _dumped_instructions(prefix: Path) -> int:
    """Instructions (Ir) in callgrind's first explicit dump (``PREFIX.1``)."""
    for line in Path(f"{prefix}.1").read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {prefix}.1")


def _served(upstream: str) -> int:
    """Requests the upstream's catch-all route has answered so far."""
    import urllib.request

    with urllib.request.urlopen(upstream + "/_bench/served", timeout=10) as resp:  # noqa: S310
        return int(resp.read())


def _settled(upstream: str) -> int:
    """The upstream's count once it stops moving: requests in flight when wrk stopped are done."""
    last = _served(upstream)
    while True:
        time.sleep(0.5)
        now = _served(upstream)
        if now == last:
            return now
        last = now


def measure(
    name: str, upstream: str, connections: int, warmup: int, duration: int, tmp: Path
) -> dict[str, Any]:
    """Instructions per request of one contender under callgrind."""
    port = free_port()
    sub = tmp / name
    sub.mkdir()
    cmd, env, headers = _server(name, upstream, port, sub)
    out = sub / "callgrind.out"
    vg = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",  # start-up runs uninstrumented: several times faster
        f"--callgrind-out-file={out}",
        f"--log-file={sub / 'valgrind.log'}",
    ]
    with open(sub / "server.log", "wb") as log:
        popen = subprocess.Popen(
            [*vg, *cmd],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, **env},
            start_new_session=True,
        )
    proc = Proc(name, popen, f"http://127.0.0.1:{port}")
    started = time.monotonic()
    try:
        _wait_answer(port, 180)
        up = time.monotonic() - started
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(popen.pid)], capture_output=True, check=True)
        _sequential(port, 50, headers)  # first-use work (lazy set-up, pools) before counting
        _wrk(port, connections, warmup, headers)
        # Count between two quiet moments, with the upstream's count of forwarded requests:
        # wrk's own count misses those in flight when it stops (up to one per connection).
        before = _settled(upstream)
        subprocess.run([*control, "-z", str(popen.pid)], capture_output=True, check=True)
        completed = _wrk(port, connections, duration, headers)
        after = _settled(upstream)
        subprocess.run([*control, "-d", str(popen.pid)], capture_output=True, check=True)
        requests = after - before
        instructions = _dumped_instructions(out)
    except Exception as exc:
        log = (sub / "server.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} under callgrind: {exc}\nserver log:\n{log}") from None
    finally:
        proc.stop(grace=20)
    return {
        "contender": name,
        "requests": requests,
        "wrk_completed": completed,
        "instructions": instructions,
        "per_request": instructions // max(requests, 1),
        "headers_sent": sorted(headers),
        "startup_under_callgrind_s": round(up, 1),
    }


def run(
    contenders: list[str], connections: int, warmup: int, duration: int
) -> list[dict[str, Any]]:
    procs: list[Proc] = []
    results = []
    with tempfile.TemporaryDirectory(prefix="aspose-bench-ir-") as tmpdir, stopping(procs):
        tmp = Path(tmpdir)
        upstream = start_upstream(tmp)
        procs.append(upstream)
        for name in contenders:
            r = measure(name, upstream.url, connections, warmup, duration, tmp)
            print(
                f"  {name:12} {r['requests']:7d} requests  {r['per_request']:9,d} instructions/req"
                f"  (start-up under callgrind {r['startup_under_callgrind_s']} s)",
                flush=True,
            )
            results.append(r)
    return results


def smoke(baseline_path: Path, tolerance: float) -> int:
    """The CI check: 0 when the proxy stays within ``tolerance`` of the committed figure."""
    baseline = json.loads(baseline_path.read_text())
    params = baseline["settings"]
    (r,) = run(["proxy"], params["connections"], params["warmup"], params["duration"])
    committed = baseline["per_request"]["proxy"]
    ok = within(r["per_request"], committed, tolerance)
    print(
        f"{'ok' if ok else 'FAIL'}: proxy {r['per_request']:,d} instructions/request, committed "
        f"figure {committed:,d} ({r['per_request'] / committed:.2f}x, limit "
        f"{1 + tolerance:.2f}x; {baseline_path.name} from {baseline.get('git_head', '?')})"
    )
    return 0 if ok else 1


def within(measured: int, committed: int, tolerance: float = TOLERANCE) -> bool:
    """Does ``measured`` stay within ``tolerance`` (0.15 = 15 %) over the committed figure?"""
    return measured <= committed * (1 + tolerance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contenders", default="minimal,proxy", help=",".join(CONTENDERS))
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--warmup", type=int, default=5, help="seconds (default 5)")
    parser.add_argument("--duration", type=int, default=20, help="measured seconds (default 20)")
    parser.add_argument("--smoke", action="store_true", help="the CI check against --baseline")
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="committed figure")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="default 0.15")
    parser.add_argument(
        "--write-baseline", action="store_true", help="measure with the smoke parameters, save"
    )
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install -y valgrind wrk", file=sys.stderr)
        return 2
    if args.smoke:
        return smoke(args.baseline, args.tolerance)
    if args.write_baseline:
        contenders = ["minimal", "proxy"]
        results = run(contenders, **SMOKE)
        facts = machine_facts()
        payload = {
            "what": "instructions per small GET under callgrind; bench/instructions.py --smoke "
            "fails when the proxy needs more than 15 % over per_request.proxy",
            "settings": SMOKE,
            "per_request": {r["contender"]: r["per_request"] for r in results},
            "git_head": facts.get("git_head"),
            "machine": facts,
            "runs": results,
        }
        args.baseline.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.baseline}")
        return 0
    contenders = [c for c in args.contenders.split(",") if c]
    if set(contenders) - set(CONTENDERS):
        parser.error(f"contenders from {','.join(CONTENDERS)}")
    facts = machine_facts()
    results = run(contenders, args.connections, args.warmup, args.duration)
    print(
        table(
            ["contender", "requests", "instructions/request"],
            [[r["contender"], r["requests"], f"{r['per_request']:,d}"] for r in results],
        )
    )
    settings = {"connections": args.connections, "warmup": args.warmup, "duration": args.duration}
    path = write_results(
        "instructions", {"machine": facts, "settings": settings, "results": results}
    )
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
