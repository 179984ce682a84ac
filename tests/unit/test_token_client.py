"""The OAuth client-credentials answer (proxy/token_client.py): parse_token_answer, Retry-After."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import jwt
import pytest

from proxy.settings import Settings
from proxy.token_client import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    TokenAnswer,
    TokenFetchError,
    parse_retry_after,
    parse_token_answer,
)
from tests.unit.token_fakes import (
    CLIENT_ID,
    SECRET,
    answer,
    token_settings,
)


@pytest.fixture
def settings() -> Settings:
    return token_settings()


# -- parse_token_answer -------------------------------------------------------------------------


def test_parse_reads_access_token_and_expires_in(settings: Settings) -> None:
    result = parse_token_answer(
        200, answer({"access_token": "abc", "expires_in": 1800, "token_type": "Bearer"}), settings
    )
    assert result == TokenAnswer("abc", 1800.0)


def test_parse_without_expires_in_uses_jwt_exp(settings: Settings) -> None:
    exp = int(time.time()) + 1234
    token = jwt.encode({"exp": exp, "client_id": CLIENT_ID}, "k" * 32, algorithm="HS256")
    result = parse_token_answer(200, answer({"access_token": token}), settings)
    assert result.access_token == token
    assert result.expires_in == pytest.approx(1234, abs=3)


def test_parse_without_expires_in_or_jwt_uses_one_day(settings: Settings) -> None:
    result = parse_token_answer(200, answer({"access_token": "opaque-token"}), settings)
    assert result.expires_in == DEFAULT_LIFETIME == 86400.0


@pytest.mark.parametrize(
    "body",
    [{}, {"expires_in": 3600}, {"access_token": ""}, {"access_token": 5}, {"access_token": None}],
)
def test_parse_without_access_token_is_a_fetch_error(
    settings: Settings, body: dict[str, Any]
) -> None:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(200, answer(body), settings)
    assert not caught.value.rejected
    assert "access_token" in caught.value.reason


@pytest.mark.parametrize("status", [400, 401])
def test_parse_invalid_client_is_rejected_naming_client_not_secret(
    settings: Settings, status: int
) -> None:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(status, b'{"error":"invalid_client"}', settings)
    error = caught.value
    assert error.rejected
    assert CLIENT_ID in error.reason
    assert "invalid_client" in error.reason
    assert SECRET not in error.reason
    assert SECRET not in str(error)


def test_parse_rejected_oauth_error_text_is_sanitised(settings: Settings) -> None:
    body = answer({"error": 'invalid_client"\n<script>' + "x" * 500})
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(400, body, settings)
    assert "\n" not in caught.value.reason
    assert "<script>" not in caught.value.reason
    assert len(caught.value.reason) < 300


@pytest.mark.parametrize("body", [b"<html>Internal Server Error</html>", b"", b"\xff\xfe{"])
def test_parse_500_garbage_is_not_rejected(settings: Settings, body: bytes) -> None:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(500, body, settings)
    assert not caught.value.rejected
    assert "500" in caught.value.reason
    assert SECRET not in caught.value.reason


def test_parse_200_garbage_is_not_rejected(settings: Settings) -> None:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(200, b"not json", settings)
    assert not caught.value.rejected


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("0", 0.0), (None, None), ("soon", None), ("-5", None)],
)
def test_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(90)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0


def test_parse_429_is_rate_limited_with_its_retry_after(settings: Settings) -> None:
    with pytest.raises(TokenFetchError) as caught:
        parse_token_answer(429, b'{"error":"x"}', settings, retry_after="600")
    assert caught.value.rate_limited and not caught.value.rejected
    assert caught.value.retry_after == 600.0


# -- clock oddities ---------------------------------------------------------------------------


@pytest.mark.parametrize("expires_in", [0, -5, "-1", 0.0])
def test_parse_expires_in_zero_or_negative_is_expired(settings: Settings, expires_in: Any) -> None:
    result = parse_token_answer(
        200, answer({"access_token": "opaque", "expires_in": expires_in}), settings
    )
    assert result.expires_in == 0.0


@pytest.mark.parametrize("expires_in", [10**12, 1e308, "inf"])
def test_parse_absurd_expires_in_is_capped(settings: Settings, expires_in: Any) -> None:
    result = parse_token_answer(
        200, answer({"access_token": "opaque", "expires_in": expires_in}), settings
    )
    assert result.expires_in == MAX_LIFETIME


def test_parse_absurd_expires_in_is_capped_by_the_jwt_exp(settings: Settings) -> None:
    token = jwt.encode({"exp": int(time.time()) + 600}, "k" * 32, algorithm="HS256")
    result = parse_token_answer(200, answer({"access_token": token, "expires_in": 10**9}), settings)
    assert result.expires_in == pytest.approx(600, abs=3)


def test_parse_jwt_exp_already_past_wins_over_expires_in(settings: Settings) -> None:
    token = jwt.encode({"exp": int(time.time()) - 60}, "k" * 32, algorithm="HS256")
    result = parse_token_answer(200, answer({"access_token": token, "expires_in": 3600}), settings)
    assert result.expires_in == 0.0
