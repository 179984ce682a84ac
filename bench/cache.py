"""A cache hit against the same call forwarded: MB/s and the proxy's peak RSS, with curl.

Two proxies in front of bench/upstream.py, started side by side: one with ``cache_store = off``
(every call forwarded) and one with a disk cache (warmed once, then every call is a hit). The
call is ``GET /v4.0/barcode/generate/qr?size=N`` (allow-listed; bench/upstream.py answers N
bytes from memory, so the forwarded figure is the proxy forwarding a download). Rounds are
interleaved (forwarded, hit, forwarded, hit, ...) so machine noise hits both alike; the
medians are reported, and the median of the per-round ratios (forwarded time / hit time: a
pair ran back to back, so it saw the same machine). Issue 19: hits must stream at least as
fast as a forwarded download, with flat memory (peak RSS must not grow with the answer's size).

    .venv/bin/python bench/cache.py                      # 1 MiB and 50 MiB, 5 rounds each
    .venv/bin/python bench/cache.py --sizes 1MiB --rounds 3
"""

# ruff: noqa: S603  (bench: runs curl and our own servers)
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ASPOSE_PROXY,
    machine_facts,
    median,
    parse_size,
    proxy_env,
    start_announcing,
    start_upstream,
    stopping,
    table,
    write_results,
)
from transfer import PeakRss

PATH = "/v4.0/barcode/generate/qr"


def fetch(url: str, pid: int) -> dict[str, Any]:
    """One GET with curl to /dev/null: seconds, bytes, X-Cache, the server's peak RSS."""
    peak = PeakRss(pid)
    peak.reset()
    cmd = ["curl", "-sS", "-o", "/dev/null", "-D", "-", "-w", "\n%{size_download} %{time_total}"]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=300, check=True)
    head, _, tail = done.stdout.rpartition("\n")
    size, seconds = tail.split()
    cache = next(
        (
            line.split(":", 1)[1].strip()
            for line in head.splitlines()
            if line.lower().startswith("x-cache:")
        ),
        "",
    )
    return {"bytes": int(size), "seconds": float(seconds), "x_cache": cache, "rss": peak.read()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1MiB,50MiB")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="aspose-bench-cache-") as tmp, stopping([]) as procs:
        work = Path(tmp)
        upstream = start_upstream(work)
        procs.append(upstream)
        contenders = {}
        for name, store in (("forwarded", "off"), ("hit", f"file://{work / 'cache'}")):
            spool = work / name
            spool.mkdir()
            env = proxy_env(upstream.url, spool, "warning")
            env["ASPOSE_PROXY_CACHE_STORE"] = store
            env["ASPOSE_PROXY_CACHE_MAX_ENTRY_SIZE"] = str(max(sizes))  # 64 MiB by default
            env["ASPOSE_PROXY_CACHE_MAX_SIZE"] = str(2 * sum(sizes))
            proc = start_announcing(
                name, [ASPOSE_PROXY, "run"], env=env, log_path=work / f"{name}.log"
            )
            procs.append(proc)
            contenders[name] = proc
        for size in sizes:
            url = f"{PATH}?size={size}"
            fetch(contenders["hit"].url + url, contenders["hit"].pid)  # the miss that stores it
            runs: dict[str, list[dict[str, Any]]] = {"forwarded": [], "hit": []}
            for _ in range(args.rounds):
                for name, proc in contenders.items():
                    run = fetch(proc.url + url, proc.pid)
                    assert run["bytes"] == size, run
                    assert run["x_cache"] == ("HIT" if name == "hit" else ""), run
                    runs[name].append(run)
            ratios = [
                f["seconds"] / h["seconds"]
                for f, h in zip(runs["forwarded"], runs["hit"], strict=True)
            ]
            ratio = median(ratios)
            for name, done in runs.items():
                mbps = median([size / r["seconds"] / 1e6 for r in done])
                rss = max(r["rss"] for r in done) / 2**20
                speed = f"{ratio:.2f}" if name == "hit" else ""
                rows.append((f"{size / 2**20:g} MiB", name, f"{mbps:.0f}", speed, f"{rss:.1f}"))
                results.append(
                    {
                        "size": size,
                        "contender": name,
                        "mb_per_s": mbps,
                        "peak_rss_mib": rss,
                        "runs": done,
                    }
                )
    headers = ("answer", "contender", "MB/s (median)", "hit speed / forwarded", "peak RSS MiB")
    print(table(headers, rows))
    path = write_results(
        "cache", {"machine": machine_facts(), "rounds": args.rounds, "results": results}
    )
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
