"""Local token endpoints, so the official SDKs need no real secret.

Each SDK insists on fetching a token itself, each from its own path. The proxy answers those
requests with a placeholder in Aspose's JSON shape and never forwards them; the placeholder is
then replaced on API calls like any client ``Authorization``. With ``local_clients`` set, the
endpoint checks credentials and the placeholder names its client (HMAC-signed with a key made
at start-up), so the access log can tell shared clients apart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from aiohttp import web
from pydantic import SecretStr

from proxy.body import DEFAULT_BODY_TIMEOUT
from proxy.exchange import EXCHANGE
from proxy.token_form import TOKEN_PATHS, TokenRequest, matches, read_token_request

PLACEHOLDER_PREFIX = "aspose-proxy."
LIFETIME = 86400


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LocalTokens:
    """Issues and reads placeholder tokens; checks ``local_clients`` when configured."""

    def __init__(
        self,
        local_clients: dict[str, SecretStr],
        key: bytes | None = None,
        failed: Callable[[str | None, str], None] | None = None,
        *,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        self._clients = {k: v.get_secret_value() for k, v in local_clients.items()}
        # The workers of `run --workers N` share one key: any of them accepts the placeholder.
        self._key = key or secrets.token_bytes(32)
        self._failed = failed  # told of each refused client secret: (address, "client_secret")
        self._body_timeout = body_timeout  # request_body_timeout: a stalled form gets 408

    def _sign(self, payload: str) -> bytes:
        digest = hmac.new(self._key, payload.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=")

    def issue(self, client_id: str) -> str:
        payload = f"{_b64(client_id.encode())}.{int(time.time()) + LIFETIME}"
        return f"{PLACEHOLDER_PREFIX}{payload}.{self._sign(payload).decode()}"

    def client_of(self, authorization: str | None) -> str | None:
        """The client id a valid, unexpired placeholder was issued to, else None."""
        # RFC 9110 §11.1: the scheme is case-insensitive ("bearer x" is "Bearer x").
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        token = authorization[7:].strip()
        if not token.startswith(PLACEHOLDER_PREFIX):
            return None
        payload, _, signature = token[len(PLACEHOLDER_PREFIX) :].rpartition(".")
        encoded_id, _, expires = payload.partition(".")
        # Compared as bytes: a non-ASCII token is a wrong one, not an error (issue 16).
        given = signature.encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(given, self._sign(payload)) or not expires.isdigit():
            return None
        if int(expires) < time.time():
            return None
        try:
            return base64.urlsafe_b64decode(encoded_id + "=" * (-len(encoded_id) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    def _client_for(self, form: TokenRequest) -> str | None:
        """The client the request proves to be, or None when ``local_clients`` refuses it."""
        if not self._clients:
            return next(iter(sorted(form.client_ids)), "")
        for client_id in sorted(form.client_ids):
            expected = self._clients.get(client_id)
            if expected is not None and matches(form.client_secrets, expected):
                return client_id
        return None

    async def handle(self, request: web.Request) -> web.Response:
        """POST on an SDK token path: an OAuth answer, errors in OAuth's shape too."""
        form = await read_token_request(request, self._body_timeout)
        if form is None or not form.grant_types:
            return _oauth_error("invalid_request")
        if not matches(form.grant_types, "client_credentials"):
            return _oauth_error("unsupported_grant_type")
        client_id = self._client_for(form)
        if client_id is None:
            if self._failed is not None:
                self._failed(request.remote, "client_secret")
            return _oauth_error("invalid_client")
        if client_id:
            request[EXCHANGE].client = client_id
        body = {
            "access_token": self.issue(client_id),
            "expires_in": LIFETIME,
            "token_type": "Bearer",
        }
        return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _oauth_error(code: str) -> web.Response:
    # RFC 6749 §5.2: 400 with {"error": ...}
    return web.json_response({"error": code}, status=400, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application, local_tokens: LocalTokens) -> None:
    for path in TOKEN_PATHS:
        app.router.add_post(path, local_tokens.handle)
