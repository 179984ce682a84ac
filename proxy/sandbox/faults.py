"""Fault switches: what a test asked to go wrong, parsed from JSON and used up request by request.

A fault with ``count=None`` lasts until cleared; otherwise each affected request uses one.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from proxy.sandbox.errors import words_error

# How much body a "reset" fault sends before it aborts the connection, and how much it promises.
RESET_SENT_BYTES = 1024
RESET_PROMISED_BYTES = 65536


class FaultSpecError(ValueError):
    """The JSON describing a fault is malformed; the control endpoint answers 400."""


@dataclass(slots=True)
class TokenFault:
    """Make the token endpoints wait ``delay`` seconds, then answer ``status`` with raw ``body``.

    With neither ``status`` nor ``body`` the request is only delayed and then served normally;
    a ``body`` without ``status`` is answered with 200, to test clients that trust the status.
    """

    status: int | None = None
    body: str | None = None
    delay: float = 0.0
    count: int | None = None

    @property
    def answers(self) -> bool:
        return self.status is not None or self.body is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ApiFault:
    """Make API calls wait ``delay`` seconds before headers, then fail with ``status``, or send
    headers and part of the body and abort the connection (``reset``)."""

    status: int | None = None
    delay: float = 0.0
    reset: bool = False
    count: int | None = None

    @property
    def answers(self) -> bool:
        return self.status is not None or self.reset

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(spec: dict[str, Any], key: str, default: float) -> float:
    value = spec.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultSpecError(f"{key} must be a non-negative number")
    return float(value)


def _status(spec: dict[str, Any]) -> int | None:
    value = spec.get("status")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise FaultSpecError("status must be an integer from 200 to 599")
    return value


def _count(spec: dict[str, Any]) -> int | None:
    value = spec.get("count")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FaultSpecError("count must be a positive integer or null")
    return value


def _check_keys(spec: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise FaultSpecError("expected a JSON object")
    unknown = set(spec) - allowed
    if unknown:
        raise FaultSpecError(f"unknown keys: {', '.join(sorted(unknown))}")
    return spec


def parse_token_fault(spec: Any) -> TokenFault:
    """Validate ``{"status", "body", "delay", "count"}``; unknown keys are typos, so rejected."""
    spec = _check_keys(spec, {"status", "body", "delay", "count"})
    body = spec.get("body")
    if body is not None and not isinstance(body, str):
        raise FaultSpecError("body must be a string or null")
    return TokenFault(_status(spec), body, _number(spec, "delay", 0.0), _count(spec))


def parse_api_fault(spec: Any) -> ApiFault:
    """Validate ``{"status", "delay", "reset", "count"}``."""
    spec = _check_keys(spec, {"status", "delay", "reset", "count"})
    reset = spec.get("reset", False)
    if not isinstance(reset, bool):
        raise FaultSpecError("reset must be true or false")
    return ApiFault(_status(spec), _number(spec, "delay", 0.0), reset, _count(spec))


def use_once(fault: TokenFault | ApiFault | None) -> tuple[bool, bool]:
    """Spend one use of ``fault``: returns (applies to this request, fault now used up)."""
    if fault is None:
        return False, False
    if fault.count is None:
        return True, False
    fault.count -= 1
    return True, fault.count <= 0


async def answer_token_fault(fault: TokenFault) -> web.Response | None:
    """Wait, then the garbage answer, or ``None`` to let the token endpoint work normally."""
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if not fault.answers:
        return None
    status = fault.status if fault.status is not None else 200
    return web.Response(status=status, text=fault.body or "", content_type="text/plain")


async def answer_api_fault(request: web.Request, fault: ApiFault) -> web.StreamResponse | None:
    """Wait, then fail as asked, or ``None`` to let the API call through."""
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.reset:
        return await _reset_mid_body(request, fault.status or 200)
    if fault.status is None:
        return None
    if fault.status in (204, 304):
        return web.Response(status=fault.status)
    if fault.status >= 400:
        return words_error(fault.status, "Fault injected by the sandbox.")
    return web.json_response({}, status=fault.status)


async def _reset_mid_body(request: web.Request, status: int) -> web.StreamResponse:
    """Promise more bytes than are sent, then abort the transport so the client sees a reset."""
    response = web.StreamResponse(status=status)
    response.content_type = "application/octet-stream"
    response.content_length = RESET_PROMISED_BYTES
    await response.prepare(request)
    await response.write(b"\0" * RESET_SENT_BYTES)  # loopback: sent at once
    if request.transport is not None:
        request.transport.abort()
    return response
