"""Error bodies in the two shapes clients parse: Words API errors and OAuth token errors.

The Words Python SDK reads ``RequestId`` and ``Error`` from every error body and crashes on
anything else, so every API error the sandbox makes goes through :func:`words_error`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus

from aiohttp import web


class BadRequestError(ValueError):
    """Something in the request is malformed; the API guard answers 400 in the Words shape."""


def utc_iso(timestamp: float | None = None) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix, the form the Aspose SDKs' date parsers accept."""
    moment = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def error_code(status: int) -> str:
    """A PascalCase code named after the status (``404`` → ``NotFound``)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    return "".join(word.capitalize() if word.islower() else word for word in phrase.split())


def words_error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A Words API error response: ``{"RequestId", "Error": {"Code", "Message", ...}}``."""
    body = {
        "RequestId": str(uuid.uuid4()),
        "Error": {
            "Code": code or error_code(status),
            "Message": message,
            "Description": message,
            "DateTime": utc_iso(),
        },
    }
    return web.json_response(body, status=status, headers=headers)


def oauth_error(error: str, status: int = 400) -> web.Response:
    """An OAuth 2.0 token error (RFC 6749 §5.2): ``{"error": "invalid_client"}``."""
    return web.json_response({"error": error}, status=status)
