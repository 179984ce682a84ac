"""Shared helpers for the benchmark scripts: subprocesses, machine facts, tables, JSON output.

Not a benchmark itself. Every server a script starts is a subprocess started here, stopped by
its own pid (SIGTERM, then SIGKILL after a grace), never by name.
"""

# ruff: noqa: S603, S310  (bench helper: starts our own servers, polls loopback URLs)
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
ASPOSE_PROXY = str(VENV_BIN / "aspose-proxy")

_URL = re.compile(r"listening on (http://\S+)")


@dataclass
class Proc:
    """A started server: its Popen, base URL and the file its stderr goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(5)


def proxy_env(upstream_url: str, spool_dir: Path, log_level: str) -> dict[str, str]:
    """Settings for ``aspose-proxy run`` in front of ``bench/upstream.py`` and its token URL.

    Usage accounting, where the proxy has it, keeps its default engine (SQLite) but in
    ``spool_dir``, so a benchmark never writes to the user's own usage database.
    """
    env = {
        "ASPOSE_PROXY_UPSTREAM_URL": upstream_url,
        "ASPOSE_PROXY_TOKEN_URL": upstream_url + "/connect/token",
        "ASPOSE_PROXY_CLIENT_ID": "bench",
        "ASPOSE_PROXY_CLIENT_SECRET": "bench-secret",
        "ASPOSE_PROXY_PORT": "0",
        "ASPOSE_PROXY_SPOOL_DIR": str(spool_dir),
        "ASPOSE_PROXY_LOG_LEVEL": log_level,
        "ASPOSE_PROXY_LOG_FORMAT": "json",
    }
    if "usage_store" in proxy_settings_fields():
        env["ASPOSE_PROXY_USAGE_STORE"] = f"sqlite://{spool_dir.resolve()}/usage.db"
    return env


ACCESS_KEY = "bench-access-key-0123456789abcdef"  # a fixed fake key, loopback only


def proxy_settings_fields() -> frozenset[str]:
    """The settings the installed proxy knows (features arrive while the benchmarks exist)."""
    from proxy.settings import Settings

    return frozenset(Settings.model_fields)


def secured_env() -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Access control and usage accounting switched on: (env, client headers, missing settings).

    Clients must send ``X-Proxy-Key``; every forwarded call is counted in the usage store (on by
    default, see ``proxy_env``). Settings this proxy does not have yet are listed in the third
    item, and the configuration then runs without them.
    """
    fields = proxy_settings_fields()
    wanted = ("access_keys", "require_client_auth", "usage_store")
    missing = [name for name in wanted if name not in fields]
    if "access_keys" in missing or "require_client_auth" in missing:
        return {}, {}, missing
    env = {
        "ASPOSE_PROXY_ACCESS_KEYS": json.dumps({"bench": ACCESS_KEY}),
        "ASPOSE_PROXY_REQUIRE_CLIENT_AUTH": "true",
    }
    return env, {"X-Proxy-Key": ACCESS_KEY}, missing


def parse_size(text: str) -> int:
    """``1GiB``, ``256MiB``, ``64k`` or a plain number of bytes."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    """Prefix ``cmd`` with ``taskset -c cpus`` when asked and available."""
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *cmd]
    return list(cmd)


def start_announcing(
    name: str,
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = 20.0,
    pattern: re.Pattern[str] = _URL,
) -> Proc:
    """Start ``cmd`` and wait for a ``listening on http://...`` line on its stdout."""
    stderr: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        stderr = open(log_path, "wb")  # noqa: SIM115 (lives as long as the process)
    popen = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # Ctrl-C in the terminal goes to us, we stop it by pid
    )
    assert popen.stdout is not None
    found: list[str] = []
    lines: list[str] = []

    def reader() -> None:
        assert popen.stdout is not None
        for raw in popen.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not found:
                lines.append(line)
                m = pattern.search(line)
                if m:
                    found.append(m.group(1).rstrip("/"))
        # keep draining so the child never blocks on a full pipe

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if popen.poll() is not None or time.monotonic() > deadline:
            proc = Proc(name, popen, "", log_path)
            proc.stop()
            tail = ""
            if log_path is not None and log_path.exists():
                tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} did not start: {lines[-5:]} {tail}")
        time.sleep(0.02)
    return Proc(name, popen, found[0], log_path)


def start_upstream(tmp: Path, cpu: str | None = None) -> Proc:
    """``bench/upstream.py`` on a free port (optionally pinned), its stderr in ``tmp``."""
    return start_announcing(
        "upstream",
        pinned([sys.executable, str(BENCH_DIR / "upstream.py"), "--port", "0"], cpu),
        log_path=tmp / "upstream.log",
    )


def start_sandbox(workdir: Path) -> Proc:
    """``aspose-proxy sandbox`` on a free port, its files in ``workdir/sandbox-data``."""
    data = workdir / "sandbox-data"
    data.mkdir(exist_ok=True)
    cmd = [ASPOSE_PROXY, "sandbox", "--port", "0", "--data-dir", str(data)]
    return start_announcing(
        "sandbox", [*cmd, "--log-level", "warning"], log_path=workdir / "sandbox.log"
    )


def wait_http(url: str, timeout: float = 20.0, headers: dict[str, str] | None = None) -> None:
    """Poll ``url`` until it answers 200."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except urllib.error.HTTPError as exc:
            last = exc.code
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready: {last}")


def machine_facts() -> dict[str, Any]:
    import aiohttp

    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        facts["git_head"] = head.stdout.strip()
    try:
        import uvloop

        facts["uvloop"] = uvloop.__version__
    except ImportError:
        facts["uvloop"] = None
    return facts


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def uses_uvloop(pid: int) -> bool:
    """True when the process has uvloop's extension module mapped (it imported uvloop)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "uvloop/loop." in maps


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = []
    for n, row in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    text = json.dumps(payload, indent=2, default=str)
    path.write_text(text + "\n")
    (RESULTS_DIR / f"{name}-latest.json").write_text(text + "\n")
    return path


@contextlib.contextmanager
def stopping(procs: list[Proc]) -> Iterator[list[Proc]]:
    """Stop every process in ``procs`` (in reverse order) on the way out, whatever happens."""
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                proc.stop()
