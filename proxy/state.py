"""Everything the proxy app keeps, hung off the app under one ``AppKey`` (as the sandbox's
``state.py`` does): handlers read ``request.app[STATE]``, nothing else is module-level.

``create_app`` fills it; the upstream context adds ``tokens`` once the sessions exist. The
server layer's keys (``connections.CONNECTION_LIMITS``, ``ENTRY``) and the reload hooks
(``reload.RELOAD_HOOKS``) stay with the modules that also serve the sandbox and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from proxy.cache.step import ConversionCache
from proxy.metrics import Metrics
from proxy.pipeline import Pipeline
from proxy.settings import Settings
from proxy.token_schedule import Policy, Schedule
from proxy.tokens import TokenCache
from proxy.usage.gate import Usage


@dataclass
class ProxyState:
    settings: Settings
    metrics: Metrics
    usage: Usage
    pipeline: Pipeline
    # Whether the access rules in force admit a request (readiness details for admitted callers).
    admits: Callable[[web.Request], bool]
    cache: ConversionCache | None = None  # cache_store = "off": no cache step at all
    tokens: TokenCache | None = None  # set once the upstream sessions exist
    # Set before start-up to replace the persistent token schedule (the demo's isolation) or
    # its policy (tests).
    token_schedule: Schedule | None = None
    schedule_policy: Policy | None = None


STATE: Final = web.AppKey("proxy_state", ProxyState)
