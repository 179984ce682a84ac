"""Header rules In -> Out (proxy/headers.py): hop-by-hop, Connection-named, request-only."""

from __future__ import annotations

import pytest

from proxy.headers import (
    connection_tokens,
    outbound_request_headers,
    outbound_response_headers,
)

HOP_BY_HOP = [
    ("Connection", "keep-alive"),
    ("Proxy-Connection", "keep-alive"),
    ("Keep-Alive", "timeout=5, max=100"),
    ("Proxy-Authenticate", 'Basic realm="proxy"'),
    ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
    ("TE", "trailers"),
    ("Trailer", "Expires"),
    ("Transfer-Encoding", "chunked"),
    ("Upgrade", "websocket"),
]
END_TO_END = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json"),
    ("X-Custom", "kept"),
]


def names(pairs: list[tuple[str, str]]) -> list[str]:
    return [name.lower() for name, _ in pairs]


def without_auth(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The outbound request headers minus the Authorization the proxy adds itself."""
    return [(n, v) for n, v in pairs if n.lower() != "authorization"]


@pytest.mark.parametrize(("name", "value"), HOP_BY_HOP, ids=[n for n, _ in HOP_BY_HOP])
def test_hop_by_hop_header_dropped_from_request(name: str, value: str) -> None:
    out = outbound_request_headers([(name, value), *END_TO_END], "tok")
    assert name.lower() not in names(out)
    assert without_auth(out) == END_TO_END


@pytest.mark.parametrize(("name", "value"), HOP_BY_HOP, ids=[n for n, _ in HOP_BY_HOP])
def test_hop_by_hop_header_dropped_from_response(name: str, value: str) -> None:
    out = outbound_response_headers([(name, value), *END_TO_END])
    assert out == END_TO_END


def test_hop_by_hop_names_matched_case_insensitively() -> None:
    pairs = [("TRANSFER-ENCODING", "chunked"), ("keep-alive", "5"), ("uPgRaDe", "h2c")]
    assert outbound_response_headers([*pairs, ("X-A", "1")]) == [("X-A", "1")]


def test_headers_named_in_connection_dropped_from_request() -> None:
    pairs = [("Connection", "X-Hop, x-other"), ("X-Hop", "1"), ("X-Other", "2"), ("X-Keep", "3")]
    out = outbound_request_headers(pairs, "tok")
    assert without_auth(out) == [("X-Keep", "3")]


def test_headers_named_in_connection_dropped_from_response() -> None:
    pairs = [("X-Hop", "1"), ("Connection", "x-hop"), ("X-Keep", "3")]
    assert outbound_response_headers(pairs) == [("X-Keep", "3")]


def test_connection_list_with_spaces_mixed_case_and_empty_items() -> None:
    pairs = [("connection", " X-Foo ,,  X-BAR  , "), ("x-foo", "1"), ("X-Bar", "2"), ("X-Baz", "3")]
    assert outbound_response_headers(pairs) == [("X-Baz", "3")]


def test_several_connection_headers_all_honoured() -> None:
    pairs = [
        ("Connection", "X-One"),
        ("X-One", "1"),
        ("CONNECTION", "X-Two"),
        ("X-Two", "2"),
        ("X-Three", "3"),
    ]
    assert outbound_response_headers(pairs) == [("X-Three", "3")]
    assert without_auth(outbound_request_headers(pairs, "tok")) == [("X-Three", "3")]


def test_connection_tokens_collects_every_listed_name_lowercased() -> None:
    pairs = [("Connection", "Keep-Alive, X-A"), ("connection", "x-b"), ("X-A", "v")]
    assert connection_tokens(pairs) == frozenset({"keep-alive", "x-a", "x-b"})


def test_connection_named_header_kept_when_no_connection_header() -> None:
    # Without a Connection header nothing but the fixed lists is dropped.
    assert outbound_response_headers([("X-Hop", "1")]) == [("X-Hop", "1")]


@pytest.mark.parametrize("name", ["Authorization", "authorization", "Host", "Expect"])
def test_request_only_header_dropped_from_request(name: str) -> None:
    out = outbound_request_headers([(name, "client value"), ("X-Keep", "1")], "tok")
    assert "client value" not in [v for _, v in out]
    assert without_auth(out) == [("X-Keep", "1")]


@pytest.mark.parametrize(
    "name",
    [
        "X-HTTP-Method-Override",
        "x-http-method",
        "X-Method-Override",
        "X-Original-URL",
        "X-Rewrite-Url",
    ],
)
def test_method_and_url_overrides_are_never_forwarded(name: str) -> None:
    out = outbound_request_headers([(name, "DELETE"), ("X-Keep", "1")], "tok")
    assert without_auth(out) == [("X-Keep", "1")]


def test_content_length_dropped_from_request() -> None:
    # The client's value is re-set by the handler; kept, a spilled body got two of them.
    out = outbound_request_headers([("Content-Length", "5"), ("X-Keep", "1")], "tok")
    assert "content-length" not in names(out)
    assert without_auth(out) == [("X-Keep", "1")]


def test_bearer_token_set_once_replacing_client_authorization() -> None:
    out = outbound_request_headers(
        [("Authorization", "Bearer client-token"), ("X-Keep", "1")], "proxy-token"
    )
    auth = [v for n, v in out if n.lower() == "authorization"]
    assert auth == ["Bearer proxy-token"]


def test_host_and_expect_are_kept_on_responses() -> None:
    # Only requests lose them: upstream response headers of those names are end-to-end.
    pairs = [("Expect", "x"), ("Authorization", "y"), ("Host", "z")]
    assert outbound_response_headers(pairs) == pairs


def test_content_length_dropped_from_response() -> None:
    # The handler re-adds it from upstream's value itself.
    assert outbound_response_headers([("Content-Length", "5"), ("X-A", "1")]) == [("X-A", "1")]


def test_repeated_headers_keep_their_order_in_request() -> None:
    pairs = [
        ("Accept", "a"),
        ("X-Rep", "1"),
        ("Connection", "close"),
        ("X-Rep", "2"),
        ("Accept", "b"),
        ("X-Rep", "3"),
    ]
    out = without_auth(outbound_request_headers(pairs, "tok"))
    assert out == [("Accept", "a"), ("X-Rep", "1"), ("X-Rep", "2"), ("Accept", "b"), ("X-Rep", "3")]


def test_repeated_set_cookie_keeps_order_in_response() -> None:
    pairs = [("Set-Cookie", "a=1"), ("Keep-Alive", "5"), ("Set-Cookie", "b=2"), ("Vary", "X")]
    assert outbound_response_headers(pairs) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Vary", "X"),
    ]


def test_end_to_end_headers_kept_with_original_case_and_values() -> None:
    pairs = [
        ("Content-Type", "application/octet-stream"),
        ("content-encoding", "gzip"),
        ("X-Aspose-Client", "python sdk"),
        ("Cache-Control", "no-cache"),
        ("ETag", '"abc"'),
    ]
    assert without_auth(outbound_request_headers(pairs, "tok")) == pairs
    assert outbound_response_headers(pairs) == pairs


def test_filtering_accepts_any_iterable_of_pairs() -> None:
    # aiohttp passes a multidict's items() view, which is iterable only.
    out = outbound_response_headers(iter([("Connection", "x-a"), ("X-A", "1"), ("X-B", "2")]))
    assert out == [("X-B", "2")]
