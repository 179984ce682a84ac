"""The access line's direct JSON path writes exactly what the processor chain writes (issue 11).

``AccessLine`` renders the usual line field by field instead of through structlog's processors;
these tests render the same calls both ways and compare, so a difference in quoting, order,
redaction or number format fails here.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from proxy import logging as proxy_logging
from proxy.logging import REDACTED, configure_logging

SECRET = "a-client-secret-for-the-tests"


class _Stream(io.StringIO):
    def isatty(self) -> bool:
        return False


def _both_ways(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(direct path line, processor chain line, raw direct line) for one access-line call."""
    stream = _Stream()
    configure_logging("json", "info", [SECRET], stream=stream, flush_interval=0)
    line = proxy_logging.access_logger()
    direct = line._json_line("request", dict(fields))
    assert direct is not None, "the usual line should take the direct path"
    event: Any = {"event": "request", **fields, "logger": "proxy.access", "level": "info"}
    for processor in line._processors:
        event = processor(None, "info", event)
    a, b = json.loads(direct), json.loads(event)
    a.pop("timestamp"), b.pop("timestamp")
    return a, b, direct


@pytest.mark.parametrize(
    "fields",
    [
        {
            "request_id": "abc",
            "method": "GET",
            "path": "/v4.0/words/x",
            "status": 200,
            "duration_ms": 1.23,
        },
        {
            "request_id": "r",
            "method": "PUT",
            "path": '/v4.0/ü/ñ \\"q"',
            "status": 413,
            "duration_ms": 0.5,
            "aborted": True,
            "client": "ci-job",
        },
        {
            "request_id": "r",
            "method": "GET",
            "path": f"/v4.0/{SECRET}/x",
            "status": 200,
            "duration_ms": 12.0,
        },
        {
            "request_id": "r",
            "method": "GET",
            "path": "/x?access_token=eyJabc.def",
            "status": 401,
            "duration_ms": 3,
            "note": None,
        },
        {"request_id": "r", "status": 200, "duration_ms": float("inf"), "count": 10**20},
    ],
)
def test_direct_json_line_equals_the_processor_chain(fields: dict[str, Any]) -> None:
    direct, chain, raw = _both_ways(fields)
    assert direct == chain
    assert SECRET not in raw and "eyJabc" not in raw
    assert list(json.loads(raw)) == [*chain_keys(fields), "logger", "level", "timestamp"]


def chain_keys(fields: dict[str, Any]) -> list[str]:
    return ["event", *fields]


def test_secret_in_a_path_is_masked_on_the_direct_path() -> None:
    _, _, raw = _both_ways({"path": f"/v4.0/{SECRET}", "status": 200})
    assert json.loads(raw)["path"] == f"/v4.0/{REDACTED}"


@pytest.mark.parametrize(
    "fields",
    [
        {"authorization": "Bearer x"},  # a credential's name: the chain masks the value
        {"level": "error"},  # one of the chain's own keys
        {"headers": {"a": "b"}},  # not a plain value
    ],
)
def test_anything_unusual_takes_the_processor_chain(fields: dict[str, Any]) -> None:
    stream = _Stream()
    configure_logging("json", "info", [SECRET], stream=stream, flush_interval=0)
    line = proxy_logging.access_logger()
    assert line._json_line("request", dict(fields)) is None
    line.info("request", **fields)
    written = json.loads(stream.getvalue().splitlines()[-1])
    if "authorization" in fields:
        assert written["authorization"] == REDACTED
