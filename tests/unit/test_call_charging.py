"""Which requests are calls (proxy/usage/gate.py ``charged_status``), without sockets: a call
counts, and keeps its budget reservation, once its head was sent upstream (issue 16)."""

from __future__ import annotations

import asyncio

import aiohttp

from proxy.errors import TokenUnavailable, UpstreamTimeout, UpstreamUnreachable
from proxy.exchange import CLIENT_CLOSED, Exchange
from proxy.upstream import never_sent
from proxy.usage.gate import charged_status


def exchange(*, sent: bool, status: int | None = None) -> Exchange:
    record = Exchange("id")
    record.sent_upstream = sent
    record.upstream_status = status
    return record


def test_an_answered_call_counts_with_upstreams_status_whatever_happened_next() -> None:
    assert charged_status(exchange(sent=True, status=201), ConnectionResetError()) == 201


def test_a_client_that_hangs_up_after_the_head_was_sent_is_charged_as_499() -> None:
    assert charged_status(exchange(sent=True), asyncio.CancelledError()) == CLIENT_CLOSED


def test_a_timeout_or_broken_exchange_after_sending_is_charged_with_the_proxys_status() -> None:
    assert charged_status(exchange(sent=True), UpstreamTimeout("late")) == 504
    assert charged_status(exchange(sent=True), UpstreamUnreachable("broke")) == 502


def test_a_request_that_never_left_is_no_call() -> None:
    assert charged_status(exchange(sent=False), UpstreamUnreachable("no connection")) is None
    assert charged_status(exchange(sent=False), TokenUnavailable("no token")) is None
    assert charged_status(exchange(sent=False), asyncio.CancelledError()) is None


def test_only_a_failure_to_connect_means_nothing_was_sent() -> None:
    assert never_sent(aiohttp.ConnectionTimeoutError())
    assert not never_sent(aiohttp.ServerDisconnectedError())  # the head went out first
    assert not never_sent(aiohttp.SocketTimeoutError())  # connected, no answer in time
