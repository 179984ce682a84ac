"""Start-up time (exec -> ``/readyz`` 200) and idle RSS of the proxy, against the sandbox.

Starts ``aspose-proxy sandbox`` once, then per repeat execs ``aspose-proxy run`` on a port
chosen beforehand (so polling starts at exec, not when the port is announced) and polls every
5 ms: the first TCP accept is "listening", the first ``/readyz`` 200 is "ready" (a token was
fetched from the sandbox); the CPU time the process had used by then is taken too (user + system:
unlike the wall clock, it hardly moves when other work loads the machine). Then one small request
goes through, and after a 1 s settle the idle RSS is the median of 1 s of 50 ms samples. The
minimal forwarder is measured the same way (no token: "ready" is its first answer) as the floor
an aiohttp process on uvloop starts from.

The proxy package's bytecode is compiled first, as ``pip install`` (and so the image) does: with
``PYTHONDONTWRITEBYTECODE`` set and an editable install, every start would otherwise compile ~30
modules from source (~100 ms, ~0.7 MiB), a cost no installed proxy pays. ``--source`` skips that
step (it measures a checkout with no ``__pycache__`` only if there is none).

    .venv/bin/python bench/startup.py                  # 5 repeats, ~30 s
    .venv/bin/python bench/startup.py --repeat 1 --importtime   # + the slowest imports
"""

# ruff: noqa: S603  (bench: runs our own servers)
from __future__ import annotations

import argparse
import compileall
import http.client
import os
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
    start_sandbox,
    stopping,
    table,
    write_results,
)

MiB = 1024 * 1024
POLL = 0.005


def _status(port: int, path: str) -> int | None:
    """HTTP status of GET path on 127.0.0.1:port, None when nothing listens yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def idle_rss(pid: int, settle: float = 1.0, window: float = 1.0) -> float:
    """Median RSS (bytes) over ``window`` seconds of 50 ms samples, after ``settle`` seconds."""
    proc = psutil.Process(pid)
    time.sleep(settle)
    samples = []
    end = time.monotonic() + window
    while time.monotonic() < end:
        samples.append(proc.memory_info().rss)
        time.sleep(0.05)
    return median(samples)


def measure_one(
    cmd: list[str],
    env: dict[str, str],
    port: int,
    ready_path: str,
    request_path: str,
    log_path: Path,
    timeout: float = 30.0,
    any_answer: bool = False,
) -> dict[str, Any]:
    """Exec ``cmd``, time it to listening and to ``ready_path`` 200 (or any answer if
    ``any_answer``); then its idle RSS."""
    with open(log_path, "wb") as log:
        started = time.monotonic()
        popen = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, **env},
            start_new_session=True,
        )
    proc = Proc("server", popen, f"http://127.0.0.1:{port}")
    ps = psutil.Process(popen.pid)
    listening = ready = None
    cpu = 0.0
    try:
        deadline = started + timeout
        while ready is None:
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} not ready: {log_path.read_text()[-1500:]}")
            status = _status(port, ready_path)
            now = time.monotonic()
            if status is not None and listening is None:
                listening = now - started
            if status == 200 or (any_answer and status is not None):
                ready = now - started
                times = ps.cpu_times()
                cpu = times.user + times.system
            else:
                time.sleep(POLL)
        _status(port, request_path)  # one request through: pools and lazy paths exist
        rss = idle_rss(popen.pid)
    finally:
        proc.stop()
    return {"listening_s": listening, "ready_s": ready, "cpu_s": cpu, "idle_rss": rss}


def importtime(env: dict[str, str]) -> list[tuple[str, float, float]]:
    """The slowest top-level imports of ``aspose-proxy run``: (module, self ms, cumulative ms)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import proxy.cli, proxy.app, proxy.server"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, self_us, cum_us, name = (p.strip() for p in line.replace("import time:", "|").split("|"))
        if self_us.isdigit() and not name.startswith(" "):
            depth = len(line.split("|")[2]) - len(line.split("|")[2].lstrip())
            if depth <= 3:  # top-level: "| name" has one leading space, +2 per level
                rows.append((name, int(self_us) / 1000, int(cum_us) / 1000))
    return sorted(rows, key=lambda r: -r[2])[:12]


def measure(repeat: int, workdir: Path) -> dict[str, Any]:
    """Start-up and idle RSS of the proxy (against a sandbox) and of the minimal forwarder."""
    procs: list[Proc] = []
    runs: dict[str, list[dict[str, Any]]] = {"proxy": [], "minimal": []}
    with stopping(procs):
        sandbox = start_sandbox(workdir)
        procs.append(sandbox)
        for _ in range(repeat):
            port = free_port()
            env = {
                "ASPOSE_PROXY_UPSTREAM_URL": sandbox.url,
                "ASPOSE_PROXY_CLIENT_ID": "demo",
                "ASPOSE_PROXY_CLIENT_SECRET": "demo-secret",
                "ASPOSE_PROXY_PORT": str(port),
                "ASPOSE_PROXY_SPOOL_DIR": str(workdir),
                "ASPOSE_PROXY_LOG_FORMAT": "json",
            }
            runs["proxy"].append(
                measure_one(
                    [ASPOSE_PROXY, "run"],
                    env,
                    port,
                    "/readyz",
                    "/v4.0/words/storage/disc",
                    workdir / "proxy.log",
                )
            )
            port = free_port()
            forwarder = [sys.executable, str(BENCH_DIR / "minimal_forwarder.py")]
            runs["minimal"].append(
                measure_one(
                    [*forwarder, "--upstream", sandbox.url, "--port", str(port)],
                    {},
                    port,
                    "/v4.0/words/storage/disc",
                    "/v4.0/words/storage/disc",
                    workdir / "minimal.log",
                    any_answer=True,
                )
            )
    summary = {
        name: {
            "ready_s": median([r["ready_s"] for r in rs]),
            "listening_s": median([r["listening_s"] for r in rs]),
            "cpu_s": median([r["cpu_s"] for r in rs]),
            "idle_rss_mib": median([r["idle_rss"] for r in rs]) / MiB,
        }
        for name, rs in runs.items()
    }
    return {"repeat": repeat, "summary": summary, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="fresh starts (default 5)")
    parser.add_argument("--importtime", action="store_true", help="also list the slowest imports")
    parser.add_argument(
        "--source", action="store_true", help="do not compile the proxy's bytecode first"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be 1..20")
    facts = machine_facts()
    if not args.source:
        import proxy

        compileall.compile_dir(Path(proxy.__file__).parent, quiet=1)
    facts["bytecode_compiled_first"] = not args.source
    with tempfile.TemporaryDirectory(prefix="aspose-bench-start-") as tmp:
        result = measure(args.repeat, Path(tmp))
    rows = [
        [name, s["listening_s"] * 1000, s["ready_s"] * 1000, s["cpu_s"] * 1000, s["idle_rss_mib"]]
        for name, s in result["summary"].items()
    ]
    how = "from source" if args.source else "bytecode compiled first"
    print(f"medians of {args.repeat} fresh start(s), {how}")
    print(
        table(
            ["server", "exec->listening ms", "exec->ready ms", "CPU to ready ms", "idle RSS MiB"],
            rows,
        )
    )
    if args.importtime:
        imports = importtime({})
        result["importtime"] = imports
        print()
        print(table(["top-level import", "self ms", "cumulative ms"], imports))
    path = write_results("startup", {"machine": facts, **result})
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
