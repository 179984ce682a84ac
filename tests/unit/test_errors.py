"""The proxy's own error answers (proxy/errors.py): Aspose's JSON shape, header, statuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from proxy.errors import (
    ERROR_HEADER,
    BadRequest,
    BodyTooLarge,
    ProxyError,
    TokenUnavailable,
    UpstreamTimeout,
    UpstreamUnreachable,
    error_response,
)


def body_of(response: web.Response) -> dict[str, object]:
    assert response.text is not None
    data = json.loads(response.text)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(
    ("error_class", "status", "code"),
    [
        (BadRequest, 400, "bad_request"),
        (BodyTooLarge, 413, "body_too_large"),
        (TokenUnavailable, 503, "token_unavailable"),
        (UpstreamUnreachable, 502, "upstream_unreachable"),
        (UpstreamTimeout, 504, "upstream_timeout"),
        (ProxyError, 500, "internal_error"),
    ],
)
def test_status_code_and_header_per_error_class(
    error_class: type[ProxyError], status: int, code: str
) -> None:
    response = error_response(error_class("Something happened."), "req-1")
    assert response.status == status
    assert response.headers[ERROR_HEADER] == code
    assert ERROR_HEADER == "X-Proxy-Error"
    assert body_of(response)["Error"]["Code"] == code  # type: ignore[index]


def test_body_has_aspose_error_shape() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    response = error_response(UpstreamTimeout("No headers within 300 s."), "abc-123")
    after = datetime.now(UTC)

    assert response.content_type == "application/json"
    body = body_of(response)
    assert set(body) == {"RequestId", "Error"}
    assert body["RequestId"] == "abc-123"
    error = body["Error"]
    assert isinstance(error, dict)
    assert set(error) == {"Code", "Message", "Description", "DateTime"}
    assert error["Code"] == "upstream_timeout"
    assert error["Message"] == "No headers within 300 s."
    assert error["Description"] == UpstreamTimeout.description
    assert isinstance(error["Description"], str)
    assert error["Description"]
    stamp = error["DateTime"]
    assert isinstance(stamp, str)
    assert stamp.endswith("Z")
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before <= parsed <= after + timedelta(seconds=1)


def test_message_is_json_escaped() -> None:
    message = 'He said "no"\nand left \\ </script>'
    body = body_of(error_response(BadRequest(message), "r"))
    assert body["Error"]["Message"] == message  # type: ignore[index]


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (2.5, "3"), (59.999, "60"), (60.0, "60")],
)
def test_retry_after_rounded_up_to_whole_seconds(retry_after: float, header: str) -> None:
    response = error_response(TokenUnavailable("No token.", retry_after=retry_after), "r")
    assert response.headers["Retry-After"] == header


def test_no_retry_after_without_a_wait() -> None:
    response = error_response(UpstreamUnreachable("Down."), "r")
    assert "Retry-After" not in response.headers


def test_retry_after_on_any_error_class_that_carries_it() -> None:
    response = error_response(UpstreamUnreachable("Down.", retry_after=4.2), "r")
    assert response.headers["Retry-After"] == "5"


def test_error_is_an_exception_with_its_message() -> None:
    error = TokenUnavailable("No access token: rejected.", retry_after=3)
    assert isinstance(error, ProxyError)
    assert isinstance(error, Exception)
    assert str(error) == "No access token: rejected."
    assert error.message == "No access token: rejected."
    assert error.retry_after == 3
