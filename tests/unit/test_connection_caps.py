"""The connection caps' policy (proxy/connections.py), without sockets: which addresses are one
client, the per-client and process-wide counts, and the bounds' settings (issue 16)."""

from __future__ import annotations

import pytest

from proxy.connections import LOOPBACK, ClientConnections, ConnectionLimits, client_of
from proxy.settings import Settings, load_settings


@pytest.mark.parametrize(
    ("address", "client"),
    [
        ("127.0.0.1", LOOPBACK),
        ("127.0.0.2", LOOPBACK),
        ("127.255.1.9", LOOPBACK),
        ("::1", LOOPBACK),
        ("::ffff:127.0.0.3", LOOPBACK),
        ("10.0.0.1", "10.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_loopback_is_one_client_and_ipv6_counts_by_its_64(address: str, client: str) -> None:
    assert client_of(address) == client


def caps(per_client: int, total: int = 1024) -> tuple[ClientConnections, list[str]]:
    refused: list[str] = []
    limits = ConnectionLimits(
        max_connections_per_client=per_client, max_connections=total, on_refused=refused.append
    )
    return ClientConnections(limits), refused


def test_a_client_is_capped_whatever_loopback_address_it_picks() -> None:
    clients, refused = caps(2)
    assert clients.admit("127.0.0.1")
    assert clients.admit("127.0.0.2")
    assert not clients.admit("127.0.0.3")
    assert clients.admit("10.0.0.1")  # another client is unaffected
    clients.release("127.0.0.2")
    assert clients.admit("127.0.0.4")
    assert refused == ["max_connections_per_client"]


def test_ipv6_addresses_in_one_64_share_the_cap() -> None:
    clients, _ = caps(2)
    assert clients.admit("2001:db8::1")
    assert clients.admit("2001:db8::2")
    assert not clients.admit("2001:db8::ffff")
    assert clients.admit("2001:db8:0:1::1")  # the next /64


def test_the_process_cap_holds_all_clients_together() -> None:
    clients, refused = caps(10, total=3)
    assert clients.admit("10.0.0.1")
    assert clients.admit("10.0.0.2")
    assert clients.admit("10.0.0.3")
    assert not clients.admit("10.0.0.4")
    assert not clients.admit("10.0.0.1")
    clients.release("10.0.0.2")
    assert clients.admit("10.0.0.4")
    assert refused == ["max_connections", "max_connections"]


def test_default_caps_are_generous_and_the_process_cap_is_1024() -> None:
    fields = Settings.model_fields
    assert fields["max_connections_per_client"].default == 256
    assert fields["max_connections"].default == 1024


def test_the_bounds_are_read_from_their_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_MAX_CONNECTIONS", "64")
    monkeypatch.setenv("ASPOSE_PROXY_REQUEST_BODY_TIMEOUT", "5")
    monkeypatch.setenv("ASPOSE_PROXY_SPOOL_MAX_SIZE", "1048576")
    settings = load_settings({}, None).settings
    assert settings.max_connections == 64
    assert settings.request_body_timeout == 5.0
    assert settings.spool_max_size == 1048576
    defaults = Settings.model_fields
    assert defaults["request_body_timeout"].default == 30.0
    assert defaults["spool_max_size"].default == 8 * 1024**3
