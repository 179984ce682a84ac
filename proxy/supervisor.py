"""``run --workers N``: N worker processes share the listening port; this process watches them.

Each worker is a fresh interpreter (``python -m proxy run ... --worker I``), not a fork, so
nothing random made at import time (request id prefix, signing keys) is shared by accident, and
each has its own token cache. The supervisor:

- binds the address once with ``SO_REUSEPORT`` (without listening, so it takes no connection)
  to fix the port, port 0 included, and holds it while workers come and go; a plain bind first
  makes sure no other program already listens there (``SO_REUSEPORT`` would let us join it);
- announces the one URL once every worker listens;
- replaces a worker that dies, after a pause that grows while it keeps dying young;
- passes SIGHUP on; on SIGTERM/SIGINT lets every worker drain and exits 0 once they have.

The workers share a run directory (mode 0700, removed at exit, passed as ``--run-dir``) holding
the key that signs local placeholder tokens (a token one worker issued is accepted by the
others). The token schedule needs nothing from here: every worker opens the same persistent one
from its settings (``proxy.token_schedule.open_schedule``), so a rotation or a rejected secret
does not cost one token request per worker. Worker logs are relayed line-whole through this
process's stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from proxy.listening import CannotListen, bind_socket
from proxy.settings import Settings

log = structlog.get_logger("proxy.supervisor")

LOCAL_TOKEN_KEY_FILE = "local-token-key"  # noqa: S105 (a file name)
START_TIMEOUT = 30.0
# A worker that dies within this many seconds of starting counts as dying young: the pause
# before the next replacement doubles (RESTART_PAUSE up to RESTART_PAUSE_CAP), so a crash loop
# does not spin; a worker that lived longer is replaced after RESTART_PAUSE.
YOUNG = 10.0
RESTART_PAUSE = 0.5
RESTART_PAUSE_CAP = 30.0
_LISTENING = re.compile(rb"listening on (http://\S+)")
_PR_SET_PDEATHSIG = 1


def reuse_port_supported() -> bool:
    """True when this system lets several sockets listen on one port (Linux 3.9+, BSDs)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        return False
    return True


def worker_count(requested: int, cpus: int, reuse_port: bool) -> tuple[int, str | None]:
    """How many workers to run (``0`` = one per CPU) and, when falling back to 1, why."""
    count = requested or max(1, cpus)
    if count > 1 and not reuse_port:
        return 1, (
            f"workers: {count} requested, but SO_REUSEPORT is not available on this system, "
            "so the proxy runs as 1 process"
        )
    return count, None


def usable_cpus() -> int:
    """CPUs this process may run on (a container's cpuset), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def hold_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening ``SO_REUSEPORT`` socket on ``host:port`` (0 picks the port).

    Raises ``OSError`` when the address is taken, even by a listener that set SO_REUSEPORT.
    """
    # A plain bind fails on a port anyone listens on; with SO_REUSEPORT we could silently
    # share another program's (or another proxy's) port.
    with bind_socket(host, port) as plain:
        bound_host, bound_port = plain.getsockname()[:2]
    return bind_socket(bound_host, bound_port, reuse_port=True)


def follow_parent(parent_pid: int | None) -> None:
    """In a worker: get SIGTERM (and drain) when the supervisor dies, even by SIGKILL."""
    if parent_pid is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def read_local_token_key(run_dir: Path) -> bytes:
    return (run_dir / LOCAL_TOKEN_KEY_FILE).read_bytes()


def clean_up_after(parent_pid: int | None, run_dir: Path | None) -> None:
    """In a worker at exit: a supervisor that was killed left its run directory; remove it."""
    if parent_pid is not None and run_dir is not None and os.getppid() != parent_pid:
        shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class _Slot:
    """One worker position: the process in it now and how often it died young in a row."""

    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    deaths_in_a_row: int = 0
    listening: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    """Starts, watches, replaces and stops the workers of one ``run``."""

    def __init__(self, settings: Settings, argv: Sequence[str], count: int) -> None:
        self._settings = settings
        self._argv = list(argv)
        self._slots = [_Slot(i) for i in range(count)]
        self._stopping = asyncio.Event()
        self._run_dir = Path()
        self._port = 0
        self._url = ""
        self._out: BinaryIO = sys.stderr.buffer
        self._announced = False
        self._failed = False
        self._pipes: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 when every worker drained, 1 when start-up failed.

        Raises ``CannotListen`` when the address cannot be bound."""
        settings = self._settings
        try:
            holder = hold_port(settings.host, settings.port)
        except OSError as exc:
            raise CannotListen(settings.host, settings.port, exc) from None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._pass_on, signal.SIGHUP)
        try:
            with holder:
                bound_host, self._port = holder.getsockname()[:2]
                shown = f"[{bound_host}]" if ":" in bound_host else bound_host
                self._url = f"http://{shown}:{self._port}"
                self._run_dir = Path(tempfile.mkdtemp(prefix="aspose-proxy-run-"))
                self._prepare_run_dir()
                return await self._serve()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self._run_dir.name:
                shutil.rmtree(self._run_dir, ignore_errors=True)

    def _prepare_run_dir(self) -> None:
        key = self._run_dir / LOCAL_TOKEN_KEY_FILE
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))

    async def _serve(self) -> int:
        keepers = [
            asyncio.create_task(self._keep(slot), name=f"worker-{slot.index}")
            for slot in self._slots
        ]
        stop = asyncio.create_task(self._stopping.wait())
        started = asyncio.gather(*(slot.listening.wait() for slot in self._slots))
        waits: list[asyncio.Future[Any]] = [stop, started, *keepers]
        done, _ = await asyncio.wait(
            waits, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if started in done:
            from proxy.server import announce

            self._announced = True
            announce(
                f"aspose-proxy listening on {self._url} -> {self._settings.upstream_url} "
                f"({len(self._slots)} workers)"
            )
            log.info("proxy started", url=self._url, workers=len(self._slots), pid=os.getpid())
            await stop
            code = 0
        else:
            if not done:
                log.error("workers did not start in time", timeout=START_TIMEOUT)
                self._failed = True
            code = 1 if self._failed else 0
        started.cancel()
        stop.cancel()
        self._stopping.set()
        return await self._drain(keepers, code)

    async def _keep(self, slot: _Slot) -> None:
        """Run a worker in ``slot``; replace it when it dies, until we stop."""
        while not self._stopping.is_set():
            try:
                process = await self._start(slot)
            except OSError as exc:  # no memory, no file descriptors, no process slots
                log.error("cannot start a worker", worker=slot.index, reason=str(exc))
                if self._give_up_at_start_up():
                    return
                await self._pause(RESTART_PAUSE_CAP)
                continue
            code = await process.wait()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - slot.started_at
            if self._give_up_at_start_up():
                # It never served (bad settings, port trouble): retrying at start-up would spin.
                log.error("worker exited at start-up", worker=slot.index, exit_code=code)
                return
            slot.deaths_in_a_row = slot.deaths_in_a_row + 1 if lived < YOUNG else 0
            pause = min(RESTART_PAUSE_CAP, RESTART_PAUSE * 2**slot.deaths_in_a_row)
            log.error(
                "worker died; starting a replacement",
                worker=slot.index,
                pid=process.pid,
                exit_code=code,
                signal=signal.Signals(-code).name if code < 0 else None,
                lived_seconds=round(lived, 1),
                replace_in=pause,
            )
            await self._pause(pause)

    def _give_up_at_start_up(self) -> bool:
        """Before the URL was announced, one failed worker fails the start (exit 1)."""
        if self._announced:
            return False
        self._failed = True
        self._stopping.set()
        return True

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when we are told to stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _start(self, slot: _Slot) -> asyncio.subprocess.Process:
        command = [
            sys.executable, "-m", "proxy", *self._argv,
            "--port", str(self._port),
            "--worker", str(slot.index),
            "--supervisor", str(os.getpid()),
            "--run-dir", str(self._run_dir),
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches us; we tell the workers
        )
        slot.process = process
        slot.started_at = time.monotonic()
        assert process.stdout is not None and process.stderr is not None
        for pipe in (self._relay(process.stderr), self._watch_stdout(process.stdout, slot)):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)
        log.info("worker started", worker=slot.index, pid=process.pid)
        return process

    async def _watch_stdout(self, stream: asyncio.StreamReader, slot: _Slot) -> None:
        """The worker's one stdout line says it listens; anything after is drained."""
        while line := await stream.readline():
            if _LISTENING.search(line):
                slot.listening.set()
        slot.listening.clear()  # its replacement must announce again

    async def _relay(self, stream: asyncio.StreamReader) -> None:
        """Copy a worker's log output to our stderr in whole lines, so workers never interleave."""
        pending = b""
        while chunk := await stream.read(65536):
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if cut:
                self._write(pending[:cut])
                pending = pending[cut:]
        if pending:
            self._write(pending + b"\n")

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._out.write(data)
            self._out.flush()

    def _live(self) -> list[asyncio.subprocess.Process]:
        return [
            slot.process
            for slot in self._slots
            if slot.process is not None and slot.process.returncode is None
        ]

    def _pass_on(self, sig: signal.Signals) -> None:
        live = self._live()
        log.info("passing a signal on to the workers", signal=sig.name, workers=len(live))
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    async def _drain(self, keepers: list[asyncio.Task[None]], code: int) -> int:
        """SIGTERM every worker, wait for them (shutdown grace + margin), kill stragglers."""
        # First: no keeper may start a replacement after the worker list is taken.
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        live = self._live()
        log.info(
            "stopping: workers finish in-flight requests",
            workers=len(live),
            grace_seconds=self._settings.shutdown_grace,
        )
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_grace + 10.0
        for process in live:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await process.wait()
            except TimeoutError:
                log.error("worker did not stop in time; killing it", pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                code = code or 1
            if process.returncode not in (0, None):
                code = code or 1
        with contextlib.suppress(TimeoutError):  # the workers' last log lines
            async with asyncio.timeout(5):
                await asyncio.gather(*self._pipes, return_exceptions=True)
        log.info("stopped", exit_code=code)
        return code
