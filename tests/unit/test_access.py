"""Access decisions (proxy/access.py) without sockets, and the settings behind them."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest
from pydantic import SecretStr

from proxy import access
from proxy.access import AccessRules, startup_warnings
from proxy.cli import main
from proxy.errors import (
    AddressNotAllowed,
    ClientAuthRequired,
    HostNotAllowed,
    OperationNotAllowed,
    OriginNotAllowed,
)
from proxy.log_setup import REDACTED, Redactor, configure_logging, short_secrets
from proxy.settings import Settings, SettingsError, load_settings
from tests.path_escapes import ESCAPES

KEY = "ci-job-key-0123456789"


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def rules(**overrides: Any) -> AccessRules:
    return AccessRules.from_settings(Settings(**overrides))


def no_local(_: str | None) -> str | None:
    return None


# -- who may connect ---------------------------------------------------------------------------


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_default_allow_from_admits_loopback(remote: str) -> None:
    rules().check_address(remote)


@pytest.mark.parametrize("remote", ["10.0.0.5", "192.168.1.2", "::ffff:10.0.0.5", "fe80::1", None])
def test_default_allow_from_refuses_other_addresses(remote: str | None) -> None:
    with pytest.raises(AddressNotAllowed) as caught:
        rules().check_address(remote)
    assert caught.value.status == 403
    assert caught.value.code == "address_not_allowed"


def test_allow_from_ranges_and_the_cached_answer_stays_right() -> None:
    r = rules(allow_from=["10.0.0.0/8", "fc00::/7"])
    for _ in range(3):  # the second and third answers come from the cache
        r.check_address("10.20.30.40")
        r.check_address("fd00::1")
        with pytest.raises(AddressNotAllowed):
            r.check_address("127.0.0.1")


def test_address_cache_is_bounded() -> None:
    r = rules(allow_from=["10.0.0.0/8"])
    for i in range(3000):
        r.check_address(f"10.0.{i // 256}.{i % 256}")
    assert len(r.address_answers) <= access._CACHE_LIMIT


def test_metrics_allow_from_opens_only_metrics() -> None:
    r = rules(metrics_allow_from=["10.9.0.0/16"])
    r.check_address("10.9.1.1", metrics=True)
    r.check_address("127.0.0.1", metrics=True)  # allow_from addresses may scrape too
    with pytest.raises(AddressNotAllowed):
        r.check_address("10.9.1.1")  # ... but not forward
    with pytest.raises(AddressNotAllowed):
        r.check_address("10.8.1.1", metrics=True)


def test_everyone_only_when_both_families_are_open() -> None:
    assert rules(allow_from=["0.0.0.0/0", "::/0"]).everyone
    assert not rules(allow_from=["0.0.0.0/0"]).everyone
    assert not rules().everyone


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-a-network", "300.1.1.1"])
def test_invalid_cidr_is_a_settings_error_naming_allow_from(bad: str) -> None:
    os.environ["ASPOSE_PROXY_ALLOW_FROM"] = json.dumps(["127.0.0.0/8", bad])
    try:
        with pytest.raises(SettingsError) as caught:
            load_settings()
    finally:
        del os.environ["ASPOSE_PROXY_ALLOW_FROM"]
    (line,) = caught.value.problems
    assert line.startswith("allow_from: ")
    assert "(from ASPOSE_PROXY_ALLOW_FROM)" in line


def test_invalid_cidr_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_ID", "cid")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET", "a-long-enough-secret")
    monkeypatch.setenv("ASPOSE_PROXY_ALLOW_FROM", '["10.0.0.0/99"]')
    assert main(["run"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("aspose-proxy: allow_from: ")


def test_allow_from_flag_takes_commas_or_json() -> None:
    loaded = load_settings({"allow_from": "10.0.0.0/8, ::1"})
    assert loaded.settings.allow_from == ["10.0.0.0/8", "::1"]
    loaded = load_settings({"allow_from": '["192.168.0.0/16"]'})
    assert loaded.settings.allow_from == ["192.168.0.0/16"]


def test_non_loopback_bind_with_default_allow_from_warns_what_to_set() -> None:
    (warning,) = startup_warnings(Settings(host="0.0.0.0"))
    assert "allow_from" in warning
    assert "ASPOSE_PROXY_ALLOW_FROM=" in warning
    assert "10.0.0.0/8" in warning
    assert startup_warnings(Settings()) == []
    assert startup_warnings(Settings(host="::1")) == []
    assert startup_warnings(Settings(host="0.0.0.0", allow_from=["10.0.0.0/8"])) == []


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"upstream_url": "http://api.aspose.example"}, ["upstream_url", "token_url"]),
        ({"token_url": "http://id.aspose.example/connect/token"}, ["token_url"]),
        ({"upstream_url": "http://10.0.0.5:8090"}, ["upstream_url", "token_url"]),
        ({"upstream_url": "http://127.0.0.1:8090"}, []),  # the sandbox on this machine
        ({"upstream_url": "http://localhost:8090"}, []),
        ({"upstream_url": "http://[::1]:8090"}, []),
        ({"upstream_url": "https://api.aspose.cloud"}, []),
    ],
)
def test_plain_http_to_another_host_is_warned_about(
    settings: dict[str, str], named: list[str]
) -> None:
    warnings = startup_warnings(Settings(**settings))  # type: ignore[arg-type]
    assert [w.split(" ", 1)[0] for w in warnings] == named
    assert all("http://" in w and "https://" in w for w in warnings)


# -- browsers: Host and Origin -----------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8080",
        "LOCALHOST:1",
        "localhost.:8080",
        "127.0.0.1",
        "127.0.0.1:8080",
        "127.55.1.2:9",
        "[::1]",
        "[::1]:8080",
        None,  # HTTP/1.0 without Host: not a browser
    ],
)
def test_loopback_listener_answers_loopback_host_names(host: str | None) -> None:
    rules(host="127.0.0.1").check_host_header(host)


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8080",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        "0x7f.0.0.1",
        "",
        "build-host.evil.example",
    ],
)
@pytest.mark.parametrize("listener", ["127.0.0.1", "0.0.0.0", "::"])
def test_any_listener_refuses_other_host_names_421(host: str, listener: str) -> None:
    r = AccessRules.from_settings(Settings(host=listener), hostname="build-host")
    for _ in range(2):  # cached answer too
        with pytest.raises(HostNotAllowed) as caught:
            r.check_host_header(host)
    assert caught.value.status == 421
    assert caught.value.code == "host_not_allowed"


def test_allow_hosts_adds_names_any_port() -> None:
    r = rules(allow_hosts=["proxy.internal", "Aspose-Proxy"])
    r.check_host_header("proxy.internal:8080")
    r.check_host_header("aspose-proxy")
    with pytest.raises(HostNotAllowed):
        r.check_host_header("other.internal")


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.1:8080",
        "203.0.113.7",
        "[::2]:8080",
        "[fd00::1]",
        "Build-Host:8080",
        "build-host.example.com",
        "BUILD-HOST.example.com.",
    ],
)
def test_ip_literals_and_this_machines_name_are_answered_on_any_listener(host: str) -> None:
    r = AccessRules.from_settings(Settings(host="0.0.0.0"), hostname="build-host.example.com")
    r.check_host_header(host)


def test_host_refusal_names_the_setting_and_its_variable() -> None:
    with pytest.raises(HostNotAllowed) as caught:
        rules(host="0.0.0.0").check_host_header("evil.example")
    assert "allow_hosts" in caught.value.message
    assert "ASPOSE_PROXY_ALLOW_HOSTS" in caught.value.message


@pytest.mark.parametrize("site", ["cross-site", "same-site", "CROSS-SITE"])
def test_cross_site_requests_without_origin_are_refused(site: str) -> None:
    with pytest.raises(OriginNotAllowed) as caught:
        rules().check_browser(None, site)
    assert (caught.value.status, caught.value.code) == (403, "origin_not_allowed")


@pytest.mark.parametrize("site", ["same-origin", "none", None])
def test_same_origin_user_initiated_and_non_browser_requests_pass(site: str | None) -> None:
    rules().check_browser(None, site)


def test_cross_site_request_from_an_allowed_origin_passes() -> None:
    r = rules(allow_origins=["https://app.example.com"])
    r.check_browser("https://app.example.com", "cross-site")
    with pytest.raises(OriginNotAllowed):
        r.check_browser("https://evil.example", "cross-site")


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:8080"])
def test_any_origin_is_refused_by_default(origin: str) -> None:
    with pytest.raises(OriginNotAllowed) as caught:
        rules().check_browser(origin, None)
    assert (caught.value.status, caught.value.code) == (403, "origin_not_allowed")


def test_allow_origins_lets_listed_origins_through() -> None:
    r = rules(allow_origins=["https://app.example.com/"])
    r.check_browser("https://app.example.com", None)
    r.check_browser("HTTPS://APP.EXAMPLE.COM", None)
    for origin in ("https://app.example.com.evil.example", "null", "http://app.example.com"):
        with pytest.raises(OriginNotAllowed):
            r.check_browser(origin, None)


# -- who may use it ----------------------------------------------------------------------------


def key_rules(**overrides: Any) -> AccessRules:
    keys = {"ci-job": SecretStr(KEY), "laptop": SecretStr("laptop-key-abcdefgh")}
    return rules(access_keys=keys, **overrides)


def test_access_key_names_the_client() -> None:
    assert key_rules().client(KEY, None, no_local) == "ci-job"
    assert key_rules().client("laptop-key-abcdefgh", None, no_local) == "laptop"


@pytest.mark.parametrize("key", ["abc\udcffdef", "é" * 20, "\ud800"])
def test_a_non_ascii_key_is_a_wrong_key_not_an_error(key: str) -> None:
    # aiohttp hands undecodable header bytes over as surrogates (issue 16: a 500 before).
    assert key_rules().client(key, None, no_local) is None
    with pytest.raises(ClientAuthRequired):
        key_rules(require_client_auth=True).client(key, None, no_local)


@pytest.mark.parametrize("key", [None, "", "wrong", KEY[:-1], KEY + "x", KEY.upper()])
def test_without_a_valid_key_401_when_required(key: str | None) -> None:
    assert key_rules().client(key, None, no_local) is None  # optional: anonymous
    with pytest.raises(ClientAuthRequired) as caught:
        key_rules(require_client_auth=True).client(key, None, no_local)
    assert (caught.value.status, caught.value.code) == (401, "client_auth_required")
    assert KEY not in caught.value.message


def test_keys_are_held_and_looked_up_only_as_digests() -> None:
    """The rules keep SHA-256 digests, never a key; a presented key is digested, then looked
    up (timing depends on the digest, which a caller cannot steer towards a key's)."""
    r = key_rules()
    assert sorted(r.key_names.values()) == ["ci-job", "laptop"]
    assert all(len(digest) == 32 for digest in r.key_names)
    held = repr(r) + repr(r.key_names) + repr(r.access_keys)
    assert KEY not in held and "laptop-key-abcdefgh" not in held
    assert r.client(KEY.encode().decode(), None, no_local) == "ci-job"  # equal, not identical


def test_local_client_token_names_the_client_only_for_configured_clients() -> None:
    r = rules(local_clients={"alice": SecretStr("alice-secret-0123456")}, require_client_auth=True)
    tokens = {"Bearer good": "alice", "Bearer anonymous": "", "Bearer removed": "bob"}

    def client_of(authorization: str | None) -> str | None:
        return tokens.get(authorization or "")

    assert r.client(None, "Bearer good", client_of) == "alice"
    for authorization in ("Bearer anonymous", "Bearer removed", "Bearer real-aspose-token", None):
        with pytest.raises(ClientAuthRequired):
            r.client(None, authorization, client_of)


def test_require_client_auth_alone_is_a_settings_error() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"require_client_auth": True})
    (line,) = caught.value.problems
    assert line.startswith("require_client_auth: ")
    os.environ["ASPOSE_PROXY_ACCESS_KEYS"] = json.dumps({"ci": KEY})
    try:
        assert load_settings({"require_client_auth": True}).settings.require_client_auth
    finally:
        del os.environ["ASPOSE_PROXY_ACCESS_KEYS"]


def test_require_client_auth_with_local_clients_needs_the_local_endpoint() -> None:
    local = {
        "local_clients": {"alice": SecretStr("alice-secret-0123456")},
        "require_client_auth": True,
    }
    assert Settings(**local).require_client_auth
    with pytest.raises(ValueError, match="require_client_auth"):
        Settings(**local, local_token_endpoint=False)


def test_require_client_auth_alone_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_ID", "cid")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET", "a-long-enough-secret")
    assert main(["run", "--require-client-auth"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("aspose-proxy: require_client_auth: ")


def test_access_keys_are_no_flag_masked_in_config_and_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--access-keys", "{}"])
    capsys.readouterr()
    monkeypatch.setenv("ASPOSE_PROXY_ACCESS_KEYS", json.dumps({"ci-job": KEY}))
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_ID", "cid")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET", "a-long-enough-secret")
    assert main(["config"]) == 0
    out, err = capsys.readouterr()
    assert KEY not in out + err
    assert 'access_keys = { ci-job = "**********" }  # from ASPOSE_PROXY_ACCESS_KEYS' in out
    assert 'allow_from = ["127.0.0.0/8", "::1/128"]  # from default' in out
    settings = load_settings().settings
    assert KEY in settings.secret_values
    assert KEY not in repr(settings)
    redactor = Redactor(settings.secret_values)
    assert redactor.redact(f"key={KEY}!") == f"key={REDACTED}!"
    event = redactor(None, "info", {"headers": {"X-Proxy-Key": "not-a-configured-key"}})
    assert event["headers"] == {"X-Proxy-Key": REDACTED}


# -- what they may do --------------------------------------------------------------------------


def test_empty_allow_lists_limit_nothing() -> None:
    r = rules()
    assert not r.limits_operations
    r.check_operation("DELETE", "/anything/../at/all")


def test_allow_methods() -> None:
    r = rules(allow_methods=["get", "POST"])
    r.check_operation("GET", "/v4.0/words/x")
    r.check_operation("POST", "/v4.0/words/x")
    with pytest.raises(OperationNotAllowed) as caught:
        r.check_operation("DELETE", "/v4.0/words/x")
    assert (caught.value.status, caught.value.code) == (403, "operation_not_allowed")


@pytest.mark.parametrize(
    "path",
    [
        "/v4.0/words/storage/disc",
        "/v4.0/words",
        "/v4.0/words/",
        "/V4.0/Words/Storage/disc",  # Aspose's routes are case-insensitive
        "/v4.0/words/file.docx?folder=../cells",  # the query is not part of the match
        "/v4.0/words/my%20file.docx",
        "/v4.0/words/a.b/c..d/...docx",  # dots inside names are fine
    ],
)
def test_paths_under_an_allowed_prefix_pass(path: str) -> None:
    rules(allow_paths=["/v4.0/words/"]).check_operation("GET", path)


@pytest.mark.parametrize(
    "path",
    [
        "/v4.0/cells/x",
        "/v4.0/wordsmith/x",  # prefixes match whole segments
        *ESCAPES,
        "/v4.0/words/.",
        "/v4.0/words/..",
        "/v4.0/words/..;x/cells",
        "/v4.0/words/.../cells",
        "/v4.0/words/..%5ccells",
        "/v4.0/words/..\\cells",
        "/v4.0/words/%252e%252e/cells",  # double encoding
        "/v4.0/words/x%2fy",
        "/v4.0/words/%00/x",
        # What a Windows/IIS upstream might decode into something else (issue 16).
        "/v4.0/words/%u002e%u002e/cells/x",
        "/v4.0/words/%U002E./cells/x",
        "/v4.0/words/%c0%ae%c0%ae/cells/x",  # overlong UTF-8 for '.'
        "/v4.0/words/%c0%af",  # overlong UTF-8 for '/'
        "/v4.0/words/%ff/x",  # invalid UTF-8
        "/v4.0/words/%EF%BC%8E%EF%BC%8E/cells/x",  # full-width dots
        "/v4.0/words/..%EF%BC%8Fcells/x",  # full-width slash
        "/v4.0/words/..%EF%BC%BCcells/x",  # full-width backslash
        "/v4.0/words/%09/x",
        "/v4.0/words/x%0d%0ay",
        "/v4.0/words/x%7f",
    ],
)
def test_paths_that_could_leave_the_prefix_are_refused(path: str) -> None:
    r = rules(allow_paths=["/v4.0/words/"])
    for _ in range(2):  # the remembered answer too
        with pytest.raises(OperationNotAllowed):
            r.check_operation("GET", path)


def test_allow_paths_must_be_absolute() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"allow_paths": "v4.0/words/"})
    assert caught.value.problems[0].startswith("allow_paths: ")


# -- short secrets and the redactor ------------------------------------------------------------


def test_short_secret_is_not_masked_everywhere_but_warned_about() -> None:
    redactor = Redactor(["abc", "a-long-enough-secret"])
    assert redactor.redact("abcdef status 200") == "abcdef status 200"
    assert redactor.redact("x a-long-enough-secret y") == f"x {REDACTED} y"
    named = Settings(client_secret=SecretStr("abc"), access_keys={"ci": SecretStr(KEY)})
    assert short_secrets(named.named_secrets) == ["client_secret"]


def test_run_warns_about_short_secrets_naming_the_setting_not_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_ID", "cid")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET", "zq7")  # access keys this short: exit 2

    import proxy.cli

    def configure(*args: Any, **kwargs: Any) -> Any:
        kwargs["stream"] = stream
        kwargs["flush_interval"] = 0
        return configure_logging(*args, **kwargs)

    def no_run(_: Any) -> int:
        return 0

    monkeypatch.setattr(proxy.cli, "configure_logging", configure)
    monkeypatch.setattr("proxy.server.run", no_run)
    assert main(["check"]) == 0
    text = stream.getvalue()
    assert "client_secret is shorter than 8 characters" in text
    assert "zq7" not in text
