"""The access line's direct JSON path writes exactly what the processor chain writes (issue 11).

``AccessLine.request`` renders the line as one f-string instead of through structlog's
processors; these tests render the same request both ways and compare, so a difference in
quoting, order, redaction or number format fails here.
"""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest
import structlog

from proxy import log_setup as proxy_logging
from proxy.log_setup import REDACTED, configure_logging, set_log_level

SECRET = "a-client-secret-for-the-tests"


class _Stream(io.StringIO):
    def isatty(self) -> bool:
        return False


# A plain request; each test names only what it is about.
PLAIN = {"request_id": "r", "method": "GET", "path": "/x", "status": 200, "duration_ms": 1.0}


def _line(log_format: str, **request: Any) -> tuple[dict[str, Any], str]:
    stream = _Stream()
    configure_logging(log_format, "info", [SECRET], stream=stream, flush_interval=0)  # type: ignore[arg-type]
    proxy_logging.access_logger().request(**{**PLAIN, **request})
    raw = stream.getvalue().splitlines()[-1]
    return (json.loads(raw) if log_format == "json" else {}), raw


def _chain(**request: Any) -> dict[str, Any]:
    """The same line through the processor chain (the general path)."""
    event: Any = {
        "event": "request",
        "request_id": request["request_id"],
        "method": request["method"],
        "path": request["path"],
        "status": request["status"],
        "duration_ms": round(request["duration_ms"], 2),
        "remote_addr": request.get("remote_addr"),
        "bytes_received": request.get("bytes_received", 0),
        "bytes_sent": request.get("bytes_sent", 0),
    }
    if request.get("aborted"):
        event["aborted"] = True
    if request.get("client"):
        event["client"] = request["client"]
    event.update(logger="proxy.access_log", level="info")
    for processor in proxy_logging.access_logger()._processors:
        event = processor(None, "info", event)
    parsed: dict[str, Any] = json.loads(event)
    return parsed


REQUESTS = [
    {"request_id": "abc", "method": "GET", "path": "/v4.0/words/x", "status": 200},
    {
        "request_id": "up",
        "method": "POST",
        "path": "/v4.0/words/convert",
        "status": 200,
        "remote_addr": "::1",
        "bytes_received": 5242880,
        "bytes_sent": 1234,
    },
    {
        "request_id": "r",
        "method": "PUT",
        "path": '/v4.0/ü/ñ \\"q"',
        "status": 413,
        "aborted": True,
        "client": "ci-job",
    },
    {"request_id": "r", "method": "GET", "path": f"/v4.0/{SECRET}/x", "status": 200},
    {"request_id": "eyJhbGciOi.x.y", "method": "GET", "path": "/x", "status": 401},
    {"request_id": "r", "method": f"M{SECRET}", "path": "/x", "status": 400},
    {"request_id": "r", "method": "GET", "path": "/x", "status": 200, "client": f"c{SECRET}"},
]


@pytest.mark.parametrize("request_fields", REQUESTS)
@pytest.mark.parametrize("duration_ms", [1.234, 0.5, 12.0, 3000.999])
def test_direct_json_line_equals_the_processor_chain(
    request_fields: dict[str, Any], duration_ms: float
) -> None:
    fields = {**request_fields, "duration_ms": duration_ms}
    direct, raw = _line("json", **fields)
    chain = _chain(**fields)
    direct.pop("timestamp"), chain.pop("timestamp")
    assert direct == chain
    assert list(direct) == list(chain)
    assert SECRET not in raw and "eyJhbGciOi" not in raw


def test_secret_in_a_path_is_masked_every_time() -> None:
    """The quoted path is remembered: the second request (same writer) gets the same masked
    text."""
    stream = _Stream()
    configure_logging("json", "info", [SECRET], stream=stream, flush_interval=0)
    line = proxy_logging.access_logger()
    for _ in range(2):
        line.request(**{**PLAIN, "path": f"/v4.0/{SECRET}"})
    written = [json.loads(raw) for raw in stream.getvalue().splitlines()[-2:]]
    assert [w["path"] for w in written] == [f"/v4.0/{REDACTED}"] * 2


def test_a_secret_added_later_is_masked_in_remembered_paths() -> None:
    stream = _Stream()
    configure_logging("json", "info", [SECRET], stream=stream, flush_interval=0)
    line = proxy_logging.access_logger()
    rotated = "a-rotated-secret-value"
    line.request("r", "GET", f"/v4.0/{rotated}", 200, 1.0)
    assert rotated in stream.getvalue()  # not a secret yet
    proxy_logging.add_secrets([rotated])
    line.request("r", "GET", f"/v4.0/{rotated}", 200, 1.0)
    assert rotated not in stream.getvalue().splitlines()[-1]


def test_generated_request_ids_are_written_as_they_are() -> None:
    written, _ = _line("json", request_id="0123abcd", id_from_client=False)
    assert written["request_id"] == "0123abcd"


def test_console_format_takes_the_processor_chain() -> None:
    _, raw = _line("console", path=f"/v4.0/{SECRET}", client="ci-job")
    assert "request" in raw and "ci-job" in raw and SECRET not in raw


def test_the_level_is_read_per_request() -> None:
    stream = _Stream()
    configure_logging("json", "info", [], stream=stream, flush_interval=0)
    line = proxy_logging.access_logger()
    assert line.enabled
    set_log_level("warning")
    assert not line.enabled
    set_log_level("info")
    assert line.enabled


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_the_line_carries_the_client_address_and_the_body_bytes_each_way(log_format: str) -> None:
    fields = {"remote_addr": "127.0.0.1", "bytes_received": 5000, "bytes_sent": 42}
    written, raw = _line(log_format, **fields)
    if log_format == "json":
        assert {k: written[k] for k in fields} == fields
    else:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", raw)  # without the console's colours
        assert "remote_addr=127.0.0.1" in plain and "bytes_received=5000" in plain
        assert "bytes_sent=42" in plain


def test_json_lines_start_with_timestamp_level_event() -> None:
    """Issue 18: the access line and every other line, the same three keys first."""
    stream = _Stream()
    configure_logging("json", "info", [SECRET], stream=stream, flush_interval=0)
    proxy_logging.access_logger().request(**PLAIN)
    structlog.get_logger("proxy.test").warning("something else", detail=1)
    logging.getLogger("aiohttp.server").warning("a stdlib record")
    lines = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert list(line)[:3] == ["timestamp", "level", "event"], line
