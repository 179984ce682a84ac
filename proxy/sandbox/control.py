"""The fault switchboard under ``/_sandbox/``: JSON in, JSON out, no token needed.

Tests flip these to make the token endpoints or the API misbehave, then read the counters.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.access import AccessRules, own_host_names
from proxy.errors import ProxyError
from proxy.sandbox.faults import FaultSpecError, parse_api_fault, parse_token_fault
from proxy.sandbox.state import STATE

PREFIX: Final = "/_sandbox"


async def _json_body(request: web.Request) -> Any:
    """The request's JSON, ``{}`` for an empty body; malformed JSON is a spec error."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise FaultSpecError(f"invalid JSON: {exc}") from None


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FaultSpecError("expected a JSON object")
    return value


async def revoke(request: web.Request) -> web.Response:
    """Bump the token generation: every token issued so far stops working."""
    state = request.app[STATE]
    state.generation += 1
    return web.json_response({"revoked": True, "generation": state.generation})


async def rotate_secret(request: web.Request) -> web.Response:
    """Change the secret the token endpoints accept; issued tokens stay valid."""
    secret = _object(await _json_body(request)).get("client_secret")
    if not isinstance(secret, str) or not secret:
        raise FaultSpecError("client_secret must be a non-empty string")
    request.app[STATE].change_secret(secret)
    return web.json_response({"rotated": True})


async def lockout(request: web.Request) -> web.Response:
    """Tune the failed-login lockout (tests shorten its 10 minutes); clears current ones."""
    spec = _object(await _json_body(request))
    state = request.app[STATE]
    unknown = set(spec) - {"threshold", "window", "duration"}
    if unknown:
        raise FaultSpecError(f"unknown keys: {', '.join(sorted(unknown))}")
    values = {**state.lockout.as_dict(), **spec}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise FaultSpecError(f"{key} must be a non-negative number")
    if not values["window"] or not values["duration"]:
        raise FaultSpecError("window and duration must be positive")
    state.lockout = type(state.lockout)(
        int(values["threshold"]), float(values["window"]), float(values["duration"])
    )
    return web.json_response({"lockout": state.lockout.as_dict()})


async def token_fault(request: web.Request) -> web.Response:
    fault = parse_token_fault(await _json_body(request))
    request.app[STATE].token_fault = fault
    return web.json_response({"token_fault": fault.as_dict()})


async def api_fault(request: web.Request) -> web.Response:
    fault = parse_api_fault(await _json_body(request))
    request.app[STATE].api_fault = fault
    return web.json_response({"api_fault": fault.as_dict()})


async def token_lifetime(request: web.Request) -> web.Response:
    """Lifetime of tokens issued from now on; earlier tokens keep their ``exp``."""
    seconds = _object(await _json_body(request)).get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise FaultSpecError("seconds must be a positive number")
    request.app[STATE].token_lifetime = seconds
    return web.json_response({"token_lifetime": seconds})


async def reset(request: web.Request) -> web.Response:
    """Clear faults and restore the configured secret and lifetime."""
    request.app[STATE].reset_faults()
    return web.json_response({"reset": True})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats.as_dict())


async def reset_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.stats = type(state.stats)()
    return web.json_response(state.stats.as_dict())


# The proxy's browser rules with nothing configured: localhost, IP literals and this machine's
# name as Host; no web page origin.
CONTROL_RULES = web.AppKey("control_rules", AccessRules)
# The proxy's advice names its allow_hosts setting, which the sandbox does not have.
SANDBOX_MESSAGES = {
    "host_not_allowed": "The sandbox's switches answer only the Host names localhost, an IP "
    "address or this machine's name (DNS rebinding): call them by one of those.",
}


def control_rules() -> AccessRules:
    return AccessRules(own_names=own_host_names(socket.gethostname()))


@web.middleware
async def browser_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The switches get the proxy's Host/Origin/Sec-Fetch rules (issue 16): if the sandbox is
    started by mistake on a reachable port, a web page or a DNS-rebound name cannot flip them."""
    if request.path.startswith(PREFIX + "/"):
        rules = request.app[CONTROL_RULES]
        headers = request.headers
        try:
            rules.check_host_header(headers.get("Host"))
            rules.check_browser(headers.get("Origin"), headers.get("Sec-Fetch-Site"))
        except ProxyError as refusal:
            message = SANDBOX_MESSAGES.get(refusal.code, refusal.message)
            body = {"error": refusal.code, "message": message}
            return web.json_response(body, status=refusal.status)
    return await handler(request)


@web.middleware
async def spec_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A malformed switch request gets a 400 with the reason, in plain JSON."""
    try:
        return await handler(request)
    except FaultSpecError as exc:
        return web.json_response({"error": str(exc)}, status=400)


def add_routes(app: web.Application) -> None:
    app[CONTROL_RULES] = control_rules()
    app.router.add_post(f"{PREFIX}/revoke", revoke)
    app.router.add_post(f"{PREFIX}/rotate-secret", rotate_secret)
    app.router.add_post(f"{PREFIX}/lockout", lockout)
    app.router.add_post(f"{PREFIX}/token-fault", token_fault)
    app.router.add_post(f"{PREFIX}/api-fault", api_fault)
    app.router.add_post(f"{PREFIX}/token-lifetime", token_lifetime)
    app.router.add_post(f"{PREFIX}/reset", reset)
    app.router.add_get(f"{PREFIX}/stats", stats, allow_head=False)
    app.router.add_post(f"{PREFIX}/stats/reset", reset_stats)
