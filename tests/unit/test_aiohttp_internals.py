"""The canary for ``proxy/aiohttp_internals.py``: every aiohttp private attribute the proxy
touches still exists and still means what the proxy relies on.

When an aiohttp upgrade fails one of these, the message names the attribute and what breaks
without it; fix ``proxy/aiohttp_internals.py`` (and its table) before anything else.
"""

from __future__ import annotations

import inspect

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_protocol import RequestHandler


def _source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def _canary(ok: bool, attribute: str, breaks: str) -> None:
    assert ok, f"aiohttp {aiohttp.__version__} changed {attribute}: {breaks}"


async def test_client_session_retry_connection_still_switches_aiohttp_s_own_resend() -> None:
    async with aiohttp.ClientSession() as session:
        _canary(
            getattr(session, "_retry_connection", None) is True,
            "ClientSession._retry_connection",
            "aiohttp may resend on a stale connection itself: more than two sends",
        )
    _canary(
        "self._retry_connection" in _source(aiohttp.ClientSession._request),
        "ClientSession._retry_connection (no longer read by _request)",
        "disable_connection_retry has no effect: more than two sends",
    )


def test_stream_response_send_headers_immediately_still_decides_the_first_write() -> None:
    _canary(
        web.StreamResponse._send_headers_immediately is True
        and "self._send_headers_immediately" in _source(web.StreamResponse),
        "StreamResponse._send_headers_immediately",
        "WholeResponse writes headers and body in two writes (slower, still correct)",
    )


def test_prepare_hook_is_still_awaited_for_every_response() -> None:
    _canary(
        "request._prepare_hook(self)" in _source(web.StreamResponse._start),
        "BaseRequest._prepare_hook",
        "X-Request-Id and Server: aspose-proxy are no longer set on responses",
    )


def test_request_match_info_is_still_what_request_app_reads() -> None:
    request = make_mocked_request("GET", "/")
    _canary(
        hasattr(request, "_match_info") and "_match_info" in _source(web.Request.app.fget),
        "Request._match_info",
        "request.app and the app's on_response_prepare hooks break for forwarded requests",
    )


@pytest.mark.parametrize(
    ("owner", "attribute", "breaks"),
    [
        (web.Application, "_make_request", "requests are not made as LeavingRequest"),
        (web.AppRunner, "_make_server", "the connection guards are not applied"),
    ],
)
def test_factories_the_guarded_server_overrides_still_exist(
    owner: type, attribute: str, breaks: str
) -> None:
    _canary(callable(getattr(owner, attribute, None)), f"{owner.__name__}.{attribute}", breaks)


def test_make_request_still_takes_the_request_class() -> None:
    _canary(
        "_cls" in inspect.signature(web.Application._make_request).parameters,
        "Application._make_request(_cls=...)",
        "requests are not made as LeavingRequest",
    )


async def test_server_still_keeps_its_loop_and_protocol_options() -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(handler, max_line_size=123)
    _canary(
        getattr(server, "_kwargs", {}).get("max_line_size") == 123,
        "Server._kwargs",
        "the guarded protocols lose the parser bounds",
    )
    _canary(hasattr(server, "_loop"), "Server._loop", "the guarded protocols have no loop")


def test_request_handler_still_has_the_head_deadline_s_attributes() -> None:
    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    for attribute in ("_waiter", "_request_count", "_loop"):
        _canary(
            attribute in slots,
            f"RequestHandler.{attribute}",
            "the request-head deadline (slowloris guard) cannot tell a head awaited or done",
        )
    _canary(
        "self._request_count += 1" in _source(RequestHandler),
        "RequestHandler._request_count (no longer counted per head)",
        "the request-head deadline never sees a head complete",
    )


def test_request_state_is_still_the_dict_behind_request_keys() -> None:
    request = make_mocked_request("GET", "/")
    key = web.RequestKey("canary", int)
    request[key] = 1
    _canary(
        isinstance(getattr(request, "_state", None), dict) and request._state.get(key) == 1,
        "BaseRequest._state",
        "responses lose X-Request-Id (the hook finds no Exchange)",
    )


def test_match_info_apps_is_still_the_list_hooks_are_run_for() -> None:
    _canary(
        "_apps" in web.UrlMappingMatchInfo.__slots__,
        "MatchInfo._apps",
        "the app's on_response_prepare hooks no longer run",
    )
