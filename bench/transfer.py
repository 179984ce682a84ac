"""Large bodies up and down through a server with curl: MB/s and the server's peak RSS.

One transfer at a time (curl, C, never the bottleneck): an upload is ``curl -T FILE`` (a PUT
with Content-Length from a sparse file, so the client reads zeros from no disk), answered by
bench/upstream.py, which drains and drops it; a download is ``GET /bytes?size=N`` written to
/dev/null. ``Expect: 100-continue`` is switched off for every contender alike. Peak RSS is the
kernel's high-water mark (VmHWM) of each process of the server, reset before the transfer
(``/proc/PID/clear_refs``, needs to own the process) and read after it, so no spike between
samples is missed; for nginx the largest of master and worker.

Used by bench/all.py; alone:

    .venv/bin/python bench/transfer.py --url http://127.0.0.1:8080 --size 256MiB --direction up
"""

# ruff: noqa: S603  (bench: runs curl)
from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_size, pinned

MiB = 1024 * 1024
UPLOAD_PATH = "/v4.0/words/storage/file/bench.bin"


def sparse_file(directory: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no disk space (reads come from no device)."""
    path = directory / f"body-{size}.bin"
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as fh:
            fh.truncate(size)
    return path


class PeakRss:
    """The largest VmHWM of a process and its children between ``reset()`` and ``read()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _tree(self) -> list[int]:
        try:
            root = psutil.Process(self.pid)
            return [root.pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.Error:
            return []

    def reset(self) -> bool:
        ok = True
        for pid in self._tree():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                ok = False
        return ok

    def read(self) -> int:
        peak = 0
        for pid in self._tree():
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        return peak


def transfer(
    base_url: str,
    direction: str,
    size: int,
    workdir: Path,
    *,
    headers: dict[str, str] | None = None,
    cpu: str | None = None,
    server_pid: int | None = None,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """One upload (``up``) or download (``down``) of ``size`` bytes; seconds, MB/s, peak RSS."""
    cmd = ["curl", "-sS", "-o", "/dev/null", "--max-time", str(int(timeout)), "-H", "Expect:"]
    cmd += ["-w", "%{http_code} %{size_upload} %{size_download} %{time_total}"]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    if direction == "up":
        body = sparse_file(workdir, size)
        cmd += ["-H", "Content-Type: application/octet-stream", "-T", str(body)]
        cmd.append(base_url + UPLOAD_PATH)
    else:
        cmd.append(f"{base_url}/bytes?size={size}")
    peak = PeakRss(server_pid) if server_pid else None
    resettable = peak.reset() if peak else False
    done = subprocess.run(
        pinned(cmd, cpu), capture_output=True, text=True, timeout=timeout + 30, check=False
    )
    fields = done.stdout.split()
    status, sent, got, seconds = (
        (int(fields[0]), int(fields[1]), int(fields[2]), float(fields[3]))
        if len(fields) == 4
        else (0, 0, 0, 0.0)
    )
    moved = sent if direction == "up" else got
    ok = done.returncode == 0 and 200 <= status < 300 and moved == size
    return {
        "direction": direction,
        "size": size,
        "status": status,
        "ok": ok,
        "error": "" if ok else (done.stderr.strip() or f"status {status}, {moved} bytes")[-300:],
        "seconds": seconds,
        "mb_per_s": size / seconds / 1e6 if ok and seconds else 0.0,
        "peak_rss": peak.read() if peak else None,
        "hwm_reset": resettable,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="base URL of the server under test")
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--direction", choices=("up", "down"), default="up")
    parser.add_argument("--pid", type=int, help="server pid, for its peak RSS")
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    with tempfile.TemporaryDirectory(prefix="aspose-bench-xfer-") as tmp:
        r = transfer(
            args.url,
            args.direction,
            parse_size(args.size),
            Path(tmp),
            headers={k.strip(): v.strip() for k, v in headers.items()},
            server_pid=args.pid,
        )
    print(r)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
