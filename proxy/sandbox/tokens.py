"""OAuth client-credentials token endpoints: issue HS256 JWTs, verify them, revoke by generation."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Final

import jwt
from aiohttp import web

from proxy.sandbox.errors import oauth_error
from proxy.sandbox.faults import answer_token_fault, use_once
from proxy.sandbox.state import STATE, SandboxState
from proxy.token_form import matches, read_token_request

ALGORITHM: Final = "HS256"
REQUIRED_CLAIMS: Final = ["exp", "iat", "jti", "client_id", "gen"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What checking a bearer token found; ``expired`` and ``revoked`` need a good signature."""

    valid: bool
    expired: bool = False
    revoked: bool = False
    reason: str = ""


def issue_token(state: SandboxState, now: float | None = None) -> tuple[str, int]:
    """A signed token and its ``expires_in``; ``exp`` rounds up so it never ends early."""
    issued = time.time() if now is None else now
    lifetime = math.ceil(state.token_lifetime)
    claims = {
        "iat": int(issued),
        "exp": math.ceil(issued + state.token_lifetime),
        "jti": uuid.uuid4().hex,
        "client_id": state.config.client_id,
        "gen": state.generation,
    }
    return jwt.encode(claims, state.signing_key, algorithm=ALGORITHM), lifetime


def verify_token(state: SandboxState, token: str, now: float | None = None) -> Verdict:
    """Check signature, expiry (our own clock, to tell expired apart) and generation."""
    try:
        claims = jwt.decode(
            token,
            state.signing_key,
            algorithms=[ALGORITHM],
            options={"verify_exp": False, "verify_iat": False, "require": REQUIRED_CLAIMS},
        )
    except jwt.InvalidTokenError:
        return Verdict(valid=False, reason="The access token is invalid.")
    moment = time.time() if now is None else now
    expired = not isinstance(claims["exp"], int | float) or moment >= claims["exp"]
    revoked = claims["gen"] != state.generation
    if expired:
        return Verdict(False, expired=True, revoked=revoked, reason="The access token expired.")
    if revoked:
        return Verdict(False, revoked=True, reason="The access token was revoked.")
    return Verdict(valid=True)


def bearer_token(request: web.Request) -> str | None:
    """The token from ``Authorization: Bearer <token>``, or ``None``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _locked_out(seconds: float) -> web.Response:
    """Aspose's answer to too many failed logins: 429 with ``Retry-After`` (600 at first)."""
    response = oauth_error("too_many_requests", status=429)
    response.headers["Retry-After"] = str(math.ceil(seconds))
    return response


async def token_endpoint(request: web.Request) -> web.Response:
    """``POST`` a client-credentials form, get ``{"access_token", "expires_in", "token_type"}``."""
    state = request.app[STATE]
    state.stats.token_requests += 1
    applies, used_up = use_once(state.token_fault)
    if applies and state.token_fault is not None:
        fault = state.token_fault
        if used_up:
            state.token_fault = None
        faulty = await answer_token_fault(fault)
        if faulty is not None:
            return faulty

    form = await read_token_request(request)
    if form is None or not form.grant_types:
        return oauth_error("invalid_request")
    if not matches(form.grant_types, "client_credentials"):
        return oauth_error("unsupported_grant_type")
    known_id = matches(form.client_ids, state.config.client_id)
    client_id = state.config.client_id if known_id else min(form.client_ids, default="")
    now = time.monotonic()
    locked = state.lockout.seconds_left(client_id, now)
    if locked:
        state.stats.locked_out_requests += 1
        return _locked_out(locked)
    if not (known_id and matches(form.client_secrets, state.client_secret)):
        state.stats.failed_token_requests += 1
        lockout = state.lockout.failed(client_id, now)
        if lockout:
            state.stats.locked_out_requests += 1
            return _locked_out(lockout)
        return oauth_error("invalid_client")

    token, expires_in = issue_token(state)
    return web.json_response(
        {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"},
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},  # RFC 6749 §5.1
    )
