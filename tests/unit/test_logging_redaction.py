"""Redaction on the rendered output of the real processor chain (proxy/log_setup.py).

Every test configures the package's own chain onto a StringIO and asserts on the text that
chain wrote, for JSON and console alike, through structlog and through stdlib logging (the
way aiohttp's own loggers reach it). ``capture_logs`` is not used: it replaces the chain.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator

import jwt
import pytest
import structlog

from proxy.log_setup import REDACTED, configure_logging

SECRET = "Sup3r-Secret-Value-42"
FORMATS = ["json", "console"]

Render = Callable[[], str]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo ``configure_logging``: structlog defaults, root handlers and levels as they were."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("aiohttp.access")
    access_level = access.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    access.setLevel(access_level)


@pytest.fixture(params=FORMATS)
def log_format(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def output(log_format: str) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(log_format, "debug", secrets=[SECRET], stream=stream)  # type: ignore[arg-type]
    return stream


def make_jwt() -> str:
    claims = {"client_id": "cid", "exp": int(time.time()) + 3600, "jti": "abc123"}
    return jwt.encode(claims, "signing-key-" + "k" * 32, algorithm="HS256")


def aiohttp_logger() -> logging.Logger:
    return logging.getLogger("aiohttp.server")


def raise_with(message: str) -> None:
    raise RuntimeError(message)


# -- bearer tokens and JWTs ---------------------------------------------------------------------


def test_bearer_token_masked_structlog(output: io.StringIO) -> None:
    structlog.get_logger("proxy.test").info(
        "upstream call", header="Authorization: Bearer abc.def", path="/v4.0/words"
    )
    text = output.getvalue()
    assert "abc.def" not in text
    assert "Authorization: Bearer " + REDACTED in text
    assert "upstream call" in text
    assert "/v4.0/words" in text


def test_bearer_token_masked_stdlib(output: io.StringIO) -> None:
    aiohttp_logger().warning("bad request with %s header", "Bearer abc.def")
    text = output.getvalue()
    assert "abc.def" not in text
    assert "bad request with Bearer " + REDACTED + " header" in text


def test_full_jwt_masked_everywhere(output: io.StringIO) -> None:
    token = make_jwt()
    header, payload, signature = token.split(".")
    structlog.get_logger("proxy.test").info(f"fetched {token}", token=token, note="kept-note")
    aiohttp_logger().info("jwt %s seen", token)
    text = output.getvalue()
    for part in (token, payload, signature, header):
        assert part not in text
    assert "kept-note" in text
    assert "fetched " + REDACTED in text
    assert "seen" in text


def test_truncated_jwt_start_masked(output: io.StringIO) -> None:
    structlog.get_logger("proxy.test").info("partial", value="prefix eyJhbGciOi suffix")
    aiohttp_logger().info("cut: eyJhbGciOi")
    text = output.getvalue()
    assert "eyJhbGciOi" not in text
    assert "prefix " + REDACTED + " suffix" in text
    assert "cut: " + REDACTED in text


# -- the configured secret, wherever it is ---------------------------------------------------------


def test_secret_inside_longer_string_masked(output: io.StringIO) -> None:
    structlog.get_logger("proxy.test").info(f"before-{SECRET}-after", detail=f"x{SECRET}y")
    text = output.getvalue()
    assert SECRET not in text
    assert f"before-{REDACTED}-after" in text
    assert f"x{REDACTED}y" in text


def test_secret_in_nested_dict_masked(output: io.StringIO) -> None:
    structlog.get_logger("proxy.test").info(
        "nested", outer={"inner": {"deep": f"pw={SECRET}"}, "keep": "visible-value"}
    )
    text = output.getvalue()
    assert SECRET not in text
    assert "visible-value" in text


def test_secret_in_list_and_tuple_masked(output: io.StringIO) -> None:
    structlog.get_logger("proxy.test").info(
        "lists", items=["visible-item", SECRET], pair=(SECRET, "visible-pair")
    )
    text = output.getvalue()
    assert SECRET not in text
    assert "visible-item" in text
    assert "visible-pair" in text


def test_secret_in_bytes_and_objects_masked(output: io.StringIO) -> None:
    class Holder:
        def __repr__(self) -> str:
            return f"Holder(secret={SECRET!r}, name='visible-holder')"

        __str__ = __repr__

    structlog.get_logger("proxy.test").info(
        "odd values", raw=f"raw:{SECRET}".encode(), obj=Holder(), values={SECRET}
    )
    text = output.getvalue()
    assert SECRET not in text
    assert "visible-holder" in text


def test_secret_in_bound_contextvars_masked(output: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(request_id="req-visible", leaked=SECRET)
    structlog.get_logger("proxy.test").info("with context")
    text = output.getvalue()
    assert SECRET not in text
    assert "req-visible" in text


def test_secret_in_stdlib_message_args_masked(output: io.StringIO) -> None:
    aiohttp_logger().error("client sent %s in %s", SECRET, "visible-place")
    text = output.getvalue()
    assert SECRET not in text
    assert f"client sent {REDACTED} in visible-place" in text


def test_secret_as_dict_key_masked(output: io.StringIO) -> None:
    structlog.get_logger("proxy.test").info(
        "keys", mapping={SECRET: "v", "visible-key": "w"}, **{f"k-{SECRET}": 1}
    )
    text = output.getvalue()
    assert "visible-key" in text
    assert SECRET not in text


def test_client_secret_in_form_body_masked(output: io.StringIO) -> None:
    body = "grant_type=client_credentials&client_id=visible-cid&client_secret=unlisted-xyz&x=1"
    structlog.get_logger("proxy.test").debug("token request", body=body)
    aiohttp_logger().debug("form %s", body)
    text = output.getvalue()
    assert "unlisted-xyz" not in text
    assert "grant_type=client_credentials&client_id=visible-cid&client_secret=" in text
    assert f"client_secret={REDACTED}&x=1" in text


def test_credential_named_keys_masked_in_structured_values(output: io.StringIO) -> None:
    structlog.get_logger("proxy.test").info(
        "form",
        form={"client_id": "visible-cid", "client_secret": "unlisted-xyz"},
        access_token="opaque-token-abc",
    )
    text = output.getvalue()
    assert "visible-cid" in text
    assert "unlisted-xyz" not in text
    assert "opaque-token-abc" not in text


# -- exceptions and tracebacks ---------------------------------------------------------------------


def test_structlog_exception_message_and_traceback_masked(output: io.StringIO) -> None:
    token = make_jwt()
    try:
        raise_with(f"upstream refused {SECRET} and Bearer {token}")
    except RuntimeError:
        structlog.get_logger("proxy.test").exception("call failed", where="visible-where")
    text = output.getvalue()
    assert SECRET not in text
    assert token not in text
    assert token.split(".")[1] not in text
    assert "Traceback" in text
    assert "RuntimeError: upstream refused " + REDACTED in text
    assert "call failed" in text
    assert "visible-where" in text


def test_stdlib_exc_info_message_and_traceback_masked(output: io.StringIO) -> None:
    token = make_jwt()
    try:
        raise_with(f"Error with header Authorization: Bearer {token} and {SECRET}")
    except RuntimeError:
        aiohttp_logger().error("Error handling request from %s", "127.0.0.1", exc_info=True)
    text = output.getvalue()
    assert token not in text
    assert SECRET not in text
    assert "Error handling request from 127.0.0.1" in text
    assert "Traceback" in text
    assert "RuntimeError: Error with header Authorization: Bearer " + REDACTED in text


def fail_with_locals() -> None:
    hidden = "".join(["LOCAL", "VAR", "SENTINEL"])  # this value only ever lives in a local
    if hidden:
        raise ValueError("plain message")


def test_tracebacks_have_no_local_variables(output: io.StringIO) -> None:
    try:
        fail_with_locals()
    except ValueError:
        structlog.get_logger("proxy.test").exception("structlog failure")
        aiohttp_logger().exception("stdlib failure")
    text = output.getvalue()
    assert text.count("ValueError: plain message") == 2
    assert "fail_with_locals" in text
    assert "LOCALVARSENTINEL" not in text


# -- the shape of the output -----------------------------------------------------------------


def test_json_output_is_one_object_per_line() -> None:
    stream = io.StringIO()
    configure_logging("json", "debug", secrets=[SECRET], stream=stream)
    log = structlog.get_logger("proxy.test")
    log.info("first", n=1)
    try:
        raise_with("multi\nline\nmessage")
    except RuntimeError:
        log.exception("second")
        aiohttp_logger().error("third", exc_info=True)
    aiohttp_logger().warning("fourth %d", 4)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    events = [json.loads(line) for line in lines]
    assert all(isinstance(event, dict) for event in events)
    assert [e["event"] for e in events] == ["first", "second", "third", "fourth 4"]
    assert [e["logger"] for e in events] == ["proxy.test", "proxy.test"] + ["aiohttp.server"] * 2
    assert [e["level"] for e in events] == ["info", "error", "error", "warning"]
    assert all("timestamp" in e for e in events)
    assert "Traceback" in events[1]["exception"]
    assert "Traceback" in events[2]["exception"]


def test_log_level_filters_both_paths() -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", secrets=[], stream=stream)
    structlog.get_logger("proxy.test").info("hidden-structlog")
    aiohttp_logger().info("hidden-stdlib")
    structlog.get_logger("proxy.test").warning("shown-structlog")
    aiohttp_logger().warning("shown-stdlib")
    text = stream.getvalue()
    assert "hidden" not in text
    assert "shown-structlog" in text
    assert "shown-stdlib" in text
