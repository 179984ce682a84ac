"""The client-credentials token request form as the Aspose SDKs send it, read leniently.

Shared by the proxy's local token endpoints and the sandbox's real-looking ones. The Words
Python, .NET and C++ SDKs do not URL-encode the form, so each field keeps both its raw and its
decoded value; RFC 6749 §2.3.1 also allows the credentials in HTTP Basic auth.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_plus

from aiohttp import web

from proxy.body import DEFAULT_BODY_TIMEOUT, read_up_to

# Every path an Aspose SDK asks for a token on: PDF, Words (every language), Cells v3 and v4,
# old SDKs (see ASPOSE-API-NOTES.md).
TOKEN_PATHS: Final = (
    "/connect/token",
    "/v4.0/words/connect/token",
    "/v3.0/cells/connect/token",
    "/v4.0/cells/connect/token",
    "/oauth2/token",
)
MAX_FORM_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """Candidate values of each field (raw and decoded), Basic credentials included."""

    grant_types: frozenset[str]
    client_ids: frozenset[str]
    client_secrets: frozenset[str]


def _form_values(raw: bytes) -> dict[str, set[str]]:
    values: dict[str, set[str]] = {}
    for pair in raw.decode("utf-8", errors="replace").split("&"):
        key, sep, value = pair.partition("=")
        if sep:
            values.setdefault(unquote_plus(key), set()).update({value, unquote_plus(value)})
    return values


def _basic_credentials(authorization: str) -> tuple[str, str] | None:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error), non-ASCII (issue 16: 'Basic é'), not UTF-8
        return None
    client_id, sep, secret = decoded.partition(":")
    return (unquote_plus(client_id), unquote_plus(secret)) if sep else None


async def read_token_request(
    request: web.Request, body_timeout: float = DEFAULT_BODY_TIMEOUT
) -> TokenRequest | None:
    """The request's credentials, or None when the form is larger than any real one;
    ``RequestTimeout`` (408) when its body stalls for ``body_timeout`` seconds."""
    raw = await read_up_to(request.content, MAX_FORM_BYTES + 1, body_timeout)
    if len(raw) > MAX_FORM_BYTES:
        return None
    form = _form_values(raw)
    ids, secrets = form.get("client_id", set()), form.get("client_secret", set())
    basic = _basic_credentials(request.headers.get("Authorization", ""))
    if basic is not None:
        ids, secrets = ids | {basic[0]}, secrets | {basic[1]}
    return TokenRequest(frozenset(form.get("grant_type", ())), frozenset(ids), frozenset(secrets))


def matches(candidates: Iterable[str], expected: str) -> bool:
    """Constant-time: does any candidate equal ``expected``?"""
    wanted = expected.encode()
    return any(hmac.compare_digest(c.encode("utf-8", "surrogatepass"), wanted) for c in candidates)
