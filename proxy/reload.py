"""Settings reload on SIGHUP: components whose rules may change at runtime register a hook.

On SIGHUP the new Settings (read from the same sources) are passed to each hook in
``app[RELOAD_HOOKS]``; a hook swaps in a newly built immutable rules object.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from proxy.settings import Settings

RELOAD_HOOKS = web.AppKey("reload_hooks", list[Callable[[Settings], None]])
