"""Settings reload on SIGHUP: components whose rules may change at runtime register a hook.

On SIGHUP the settings are loaded again from the same sources (CLI flags, env, TOML, secret
file: ``app[SETTINGS_LOADER]``, set by the command that runs the app) and each hook in
``app[RELOAD_HOOKS]`` is passed the new Settings; a hook swaps in a newly built immutable rules
object. Registered here: the log level. Elsewhere: credentials (proxy/credentials.py), access
rules, usage budgets. Settings typed ``AtStart[...]`` (proxy/settings.py) keep their
start-up values; a reload that changes one says so in a log line. Settings that fail to load
leave everything as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from proxy.log_setup import set_log_level
from proxy.settings import Settings, SettingsError

RELOAD_HOOKS = web.AppKey("reload_hooks", list[Callable[[Settings], None]])
SETTINGS_LOADER: web.AppKey[Callable[[], Settings]] = web.AppKey("settings_loader")

log = structlog.get_logger("proxy.reload")


def setup(app: web.Application, settings: Settings) -> None:
    """Give ``app`` its hook list with the log-level hook, and SIGHUP handling while it runs
    (``settings``: the ones it starts with)."""
    if RELOAD_HOOKS not in app:
        app[RELOAD_HOOKS] = []
    app[RELOAD_HOOKS].append(lambda new: set_log_level(new.log_level))
    app.cleanup_ctx.append(lambda app: _sighup_ctx(app, settings))


def reload(app: web.Application, settings: Settings, current: Settings) -> list[str]:
    """Pass ``settings`` to every hook; return the restart-only settings that changed."""
    changed = sorted(
        name
        for name in Settings.restart_only()
        if getattr(settings, name) != getattr(current, name)
    )
    for hook in app[RELOAD_HOOKS]:
        try:
            hook(settings)
        except Exception:  # one broken hook must not stop the others (nor the proxy)
            log.exception("a settings reload hook failed", hook=getattr(hook, "__qualname__", ""))
    if changed:
        log.warning("settings changed that take effect only after a restart", settings=changed)
    log.info("settings reloaded", restart_needed=changed)
    return changed


def reload_from_sources(app: web.Application, current: Settings) -> Settings:
    """Load the settings again and apply them; on a settings error keep ``current``."""
    try:
        settings = app[SETTINGS_LOADER]()
    except SettingsError as exc:
        log.error("settings not reloaded: keeping the current ones", problems=exc.problems)
        return current
    reload(app, settings, current)
    return settings


async def _sighup_ctx(app: web.Application, applied: Settings) -> AsyncIterator[None]:
    """While the app runs, SIGHUP reloads the settings (only when a loader was given)."""
    if SETTINGS_LOADER not in app:
        yield
        return
    loop = asyncio.get_running_loop()

    def on_sighup() -> None:
        nonlocal applied
        log.info("SIGHUP: reloading settings")
        applied = reload_from_sources(app, applied)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGHUP)
