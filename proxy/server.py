"""Run aiohttp apps until SIGTERM/SIGINT, announcing the address each really listens on."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.connections import CONNECTION_LIMITS, guarded_runner
from proxy.gc_tuning import tune_for_serving


@dataclass
class Server:
    """A started app: its runner and the base URL it listens on."""

    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (shutdown grace), run cleanups."""
        await self.runner.cleanup()


async def start_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_grace: float = 30.0,
    reuse_port: bool = False,
) -> Server:
    """Listen on ``host:port``; ``reuse_port`` lets the workers of ``run --workers N`` share it.

    The app's ``CONNECTION_LIMITS``, when set, are applied to every connection.
    """
    options: dict[str, Any] = {
        "handle_signals": False,
        "access_log": None,
        "shutdown_timeout": shutdown_grace,
        "handler_cancellation": True,  # a client that goes away cancels its upstream work
    }
    limits = app.get(CONNECTION_LIMITS)
    runner = (
        web.AppRunner(app, **options) if limits is None else guarded_runner(app, limits, **options)
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    await site.start()
    tune_for_serving()  # the cyclic GC, measured: proxy/gc_tuning.py
    address = runner.addresses[0]
    bound_host, bound_port = address[0], address[1]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return Server(runner, f"http://{shown}:{bound_port}")


async def wait_for_stop_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def stop_signal_task() -> asyncio.Task[None]:
    """``wait_for_stop_signal`` with its handlers already installed: start it before printing
    the address, or a SIGTERM sent as soon as the address appears kills instead of draining."""
    task = asyncio.create_task(wait_for_stop_signal())
    await asyncio.sleep(0)  # the task runs up to its first await: the handlers are in place
    return task


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on uvloop when it is installed (the ``fast`` extra), else asyncio."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def announce(text: str) -> None:
    """A command's own output goes to stdout, flushed so wrappers see it at once."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
