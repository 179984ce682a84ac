"""CPU seconds the proxy spends per GiB of large upload (issue #11), MB/s beside it.

On a shared machine wall-clock MB/s is noisy; the CPU time the proxy process (all its threads)
spends on a transfer is not, and it is what sets the ceiling on a dedicated core. For each size
and repeat: one ``curl -T`` of a sparse file (a PUT with ``Content-Length``, ``Expect:`` off,
as bench/transfer.py does) through ``aspose-proxy run`` to bench/upstream.py, which drains it.
The proxy's user+sys time (``/proc/PID/stat``) is read before and after; its peak RSS (VmHWM)
is reset before and read after. A body this large goes through ``TeeBody`` (streamed upstream
and copied to the spool file for a replay).

Pinned like bench/all.py when there are two CPUs: the proxy on CPU 0, curl and the upstream on
CPU 1. Every run has a timeout and the whole run a budget; the servers are stopped by pid on the
way out. ``--source DIR`` (repeatable) runs the ``proxy`` package in DIR instead of the
installed one, so a change is compared with a snapshot of HEAD under the same load, uploads
interleaved; ``--sink nginx --nginx`` adds bench/all.py's fast sink and nginx's buffered
``proxy_pass`` (its CPU: master and workers), for the ratio the issue is about.

    .venv/bin/python bench/upload_cpu.py --sizes 256MiB,1GiB --repeat 9
    mkdir -p /tmp/head && git archive HEAD proxy | tar -x -C /tmp/head
    .venv/bin/python bench/upload_cpu.py --source /tmp/head --source . --sink nginx --nginx
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import all as bench_all  # the same nginx sink as the full comparison
import throughput
from _common import (
    ASPOSE_PROXY,
    Proc,
    median,
    parse_size,
    pinned,
    proxy_env,
    start_announcing,
    start_upstream,
    stopping,
    table,
    wait_http,
)
from transfer import transfer

GiB = 1024**3
MiB = 1024**2


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) time of the process and its children (nginx's workers), all threads."""
    root = psutil.Process(pid)
    user = system = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        user += times.user
        system += times.system
    return user, system


def minor_faults(pid: int) -> int:
    """Minor page faults of the process and its children: fresh memory touched."""
    total = 0
    for one in _tree(pid):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[7])  # minflt, field 10 of proc(5), after pid and comm
    return total


def _tree(pid: int) -> list[int]:
    try:
        return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return []


def ctx_switches(pid: int) -> int:
    """Voluntary context switches summed over the threads: how often the process slept."""
    total = 0
    for one in _tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{one}/task").iterdir():
                with contextlib.suppress(OSError):
                    for line in (task / "status").read_text().splitlines():
                        if line.startswith("voluntary_ctxt_switches"):
                            total += int(line.split()[1])
    return total


def start_proxy(
    upstream_url: str, workdir: Path, log_level: str, source: str, cpu: str | None
) -> Proc:
    """``aspose-proxy run`` in front of the upstream; ``source``: a directory holding another
    ``proxy`` package to run instead of the installed one (empty: the installed one)."""
    workdir.mkdir()
    proxy = start_announcing(
        "proxy",
        pinned([ASPOSE_PROXY, "run"], cpu),
        env={
            **proxy_env(upstream_url, workdir, log_level),
            **({"PYTHONPATH": source} if source else {}),
        },
        log_path=workdir / "proxy.log",
    )
    return proxy


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    sources = args.source or [""]
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_cpu, load_cpu = ("0", "1") if pin else (None, None)
    runs: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.budget
    with tempfile.TemporaryDirectory(prefix="aspose-bench-upcpu-") as tmpdir:
        tmp = Path(tmpdir)
        procs: list[Proc] = []
        with contextlib.ExitStack() as stack, stopping(procs):
            upstream = start_upstream(tmp, load_cpu)
            procs.append(upstream)
            if args.sink == "nginx":
                # bench/all.py's sink: nginx stores PUT bodies in /dev/shm, faster than a drain
                # in Python on the CPU curl uses, so MB/s is the proxy's, not the sink's.
                sink, note = stack.enter_context(
                    bench_all.large_body_upstream(upstream, sizes, tmp, load_cpu)
                )
                if sink is None:
                    print(note, flush=True)
                else:
                    upstream = sink
            proxies = []
            if args.nginx:
                (tmp / "nginx").mkdir()
                nginx, reason = throughput.start_contender(
                    "nginx", upstream, tmp / "nginx", server_cpu
                )
                if nginx is None:
                    print(f"no nginx: {reason}", flush=True)
                else:
                    procs.append(nginx)
                    nginx.extra["idle_rss"] = psutil.Process(nginx.pid).memory_info().rss
                    proxies.append(("nginx", nginx))
            for n, source in enumerate(sources):
                proxy = start_proxy(upstream.url, tmp / f"p{n}", args.log_level, source, server_cpu)
                procs.append(proxy)
                wait_http(proxy.url + "/readyz")
                # A first upload: the token, the upstream connection and the imports are warm.
                transfer(proxy.url, "up", 64 * MiB, tmp, cpu=load_cpu, timeout=60)
                proxy.extra["idle_rss"] = psutil.Process(proxy.pid).memory_info().rss
                proxies.append((source or "installed", proxy))
            # Interleaved (size, then variant, within each repeat): a load change on a shared
            # machine hits every variant alike.
            for rep in range(args.repeat):
                for size in sizes:
                    for label, proxy in proxies:
                        if time.monotonic() > deadline:
                            print("time budget used up: stopping early", flush=True)
                            return runs
                        runs.append(one(proxy, label, size, rep, tmp, load_cpu, args))
            for label, proxy in proxies:
                if proxy.log_path is not None and proxy.log_path.exists():
                    text = proxy.log_path.read_text(errors="replace")
                    slow = [line for line in text.splitlines() if "slow spool write" in line]
                    print(f"{label}: {len(slow)} slow spool writes")
                    for line in slow[:5]:
                        print(f"  {line[:200]}")
    return runs


def one(
    proxy: Proc,
    label: str,
    size: int,
    rep: int,
    tmp: Path,
    load_cpu: str | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One upload through ``proxy``, with the proxy's CPU time, wake-ups and peak RSS."""
    user0, sys0 = cpu_seconds(proxy.pid)
    sw0, flt0 = ctx_switches(proxy.pid), minor_faults(proxy.pid)
    r = transfer(
        proxy.url, "up", size, tmp, cpu=load_cpu, server_pid=proxy.pid, timeout=args.timeout
    )
    user1, sys1 = cpu_seconds(proxy.pid)
    cpu = user1 + sys1 - user0 - sys0
    r.update(
        variant=label,
        repeat=rep,
        cpu_s=cpu,
        sys_share=(sys1 - sys0) / cpu if cpu else float("nan"),
        cpu_s_per_gib=cpu / (size / GiB),
        switches=ctx_switches(proxy.pid) - sw0,
        faults=minor_faults(proxy.pid) - flt0,
        idle_rss=proxy.extra["idle_rss"],
    )
    print(
        f"  [{rep + 1}/{args.repeat}] {label[-24:]:24} {size // MiB:5} MiB  "
        f"{'ok ' if r['ok'] else 'ERR'} {r['cpu_s_per_gib']:6.3f} CPU s/GiB  "
        f"{r['mb_per_s']:7.1f} MB/s  peak RSS {(r['peak_rss'] or 0) / MiB:5.1f} MiB  "
        f"sys {r['sys_share']:.0%}  switches {r['switches']}  faults {r['faults']}  {r['error']}",
        flush=True,
    )
    return r


def summary(runs: list[dict[str, Any]]) -> str:
    rows = []
    labels = list(dict.fromkeys(r["variant"] for r in runs))
    for size in sorted({r["size"] for r in runs}):
        for label in labels:
            mine = [r for r in runs if r["size"] == size and r["variant"] == label]
            ok = [r for r in mine if r["ok"]]
            rows.append(
                [
                    label[-24:],
                    f"{size // MiB} MiB",
                    len(ok),
                    len(mine) - len(ok),
                    median([r["cpu_s_per_gib"] for r in ok]),
                    min((r["cpu_s_per_gib"] for r in ok), default=float("nan")),
                    median([r["mb_per_s"] for r in ok]),
                    max((r["mb_per_s"] for r in ok), default=float("nan")),
                    median([r["sys_share"] * 100 for r in ok]),
                    median([r["switches"] / (size / GiB) for r in ok]),
                    median([r["faults"] / (size / GiB) for r in ok]),
                    max((r["idle_rss"] for r in mine), default=0) / MiB,
                    max((r["peak_rss"] or 0 for r in ok), default=0) / MiB,
                ]
            )
    return table(
        [
            "proxy",
            "size",
            "runs",
            "failed",
            "CPU s/GiB med",
            "CPU s/GiB min",
            "MB/s med",
            "MB/s max",
            "sys %",
            "switches/GiB",
            "faults/GiB",
            "idle RSS MiB",
            "peak RSS MiB",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="256MiB,1GiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--timeout", type=float, default=120.0, help="per transfer, seconds")
    parser.add_argument("--budget", type=float, default=600.0, help="whole run, seconds")
    parser.add_argument("--no-pin", action="store_true", help="no taskset")
    parser.add_argument(
        "--sink",
        choices=("python", "nginx"),
        default="python",
        help="where uploads end: bench/upstream.py (drains in Python), or bench/all.py's "
        "nginx WebDAV sink in /dev/shm (faster: MB/s is then the proxy's own)",
    )
    parser.add_argument(
        "--nginx", action="store_true", help="also nginx's buffered proxy_pass, for the ratio"
    )
    parser.add_argument(
        "--source",
        action="append",
        help="a directory with a `proxy` package to run instead of the installed one (e.g. "
        "`git archive HEAD proxy | tar -x -C DIR`); repeat it to compare variants, interleaved",
    )
    args = parser.parse_args(argv)
    print(f"load average now {os.getloadavg()[0]:.2f}", flush=True)
    runs = run(args)
    print(summary(runs))
    return 0 if runs and all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
