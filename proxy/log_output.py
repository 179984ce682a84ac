"""Where rendered log lines go: a sink that writes them in batches, as Envoy's access log does.

A write syscall per request line is a large share of a small request's cost, so ordinary
lines are collected and written at most every ``flush_interval`` seconds (or at 64 KiB);
warnings and errors, and everything when the interval is 0, are written at once; whatever is
pending is written when the process exits. The structlog logger and the stdlib handler share
one sink, so lines keep their order.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from typing import Any, TextIO

MAX_PENDING = 64 * 1024


class LineSink:
    """Rendered lines to ``stream``, batched; safe to use from several threads."""

    def __init__(self, stream: TextIO, flush_interval: float) -> None:
        self._stream = stream
        self._interval = flush_interval
        self._pending: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None
        atexit.register(self.flush)

    def write(self, line: str, urgent: bool = False) -> None:
        with self._lock:
            self._pending.append(line)
            self._size += len(line)
            if not (urgent or self._interval <= 0 or self._size >= MAX_PENDING):
                if self._timer is None and self._schedule():
                    return
                if self._timer is not None:
                    return
        self.flush()

    def _schedule(self) -> bool:
        """Arrange a flush ``flush_interval`` from now; False outside an event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._timer = loop.call_later(self._interval, self.flush)
        return True

    def flush(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._pending:
                return
            text = "\n".join(self._pending) + "\n"
            self._pending.clear()
            self._size = 0
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed stream at exit: nothing left to tell
            pass

    def close(self) -> None:
        self.flush()
        atexit.unregister(self.flush)


class SinkLogger:
    """The logger structlog wraps: info and below are batched, warnings and above urgent."""

    def __init__(self, sink: LineSink, name: str = "") -> None:
        self._sink = sink
        self.name = name

    def _batched(self, message: str) -> None:
        self._sink.write(message)

    def _urgent(self, message: str) -> None:
        self._sink.write(message, urgent=True)

    msg = debug = info = _batched
    warning = warn = error = err = critical = exception = fatal = _urgent


class SinkLoggerFactory:
    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    def __call__(self, *args: Any) -> SinkLogger:
        return SinkLogger(self._sink, str(args[0]) if args else "")


class SinkHandler(logging.Handler):
    """stdlib records (aiohttp's own loggers) into the same sink."""

    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sink.write(self.format(record), urgent=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)
