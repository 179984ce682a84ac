"""Settings hygiene: Kubernetes service links in ASPOSE_PROXY_PORT, and unknown variables."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from proxy.settings import SettingsError, load_settings, unknown_env_vars

SERVICE_LINK = "tcp://10.96.14.2:8080"


def test_a_service_link_in_the_port_variable_is_an_error_naming_cause_and_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_PORT", SERVICE_LINK)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    [line] = caught.value.problems
    assert "ASPOSE_PROXY_PORT" in line
    assert "Kubernetes service link" in line and "aspose-proxy" in line  # the cause
    assert "enableServiceLinks: false" in line  # the fix
    assert "\n" not in line


def test_a_port_flag_overrides_a_service_link(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_PORT", SERVICE_LINK)
    assert load_settings({"port": 9000}).settings.port == 9000


def test_a_plain_bad_port_keeps_its_ordinary_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_PORT", "eighty")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "service link" not in caught.value.problems[0]


def test_run_with_a_service_link_exits_2_with_one_line_and_no_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASPOSE_PROXY_")}
    env.update(
        ASPOSE_PROXY_PORT=SERVICE_LINK,
        ASPOSE_PROXY_CLIENT_ID="demo",
        ASPOSE_PROXY_CLIENT_SECRET="demo-secret",
    )
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "run"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "ASPOSE_PROXY_PORT" in done.stderr and "enableServiceLinks: false" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_typo_is_reported_with_the_close_match() -> None:
    found = unknown_env_vars({"ASPOSE_PROXY_UPSTREAM_TIMEOUTT": "3", "ASPOSE_PROXY_PORT": "1"})
    assert found == [("ASPOSE_PROXY_UPSTREAM_TIMEOUTT", "ASPOSE_PROXY_UPSTREAM_TIMEOUT")]


def test_an_unknown_name_without_a_close_match_is_still_reported() -> None:
    assert unknown_env_vars({"ASPOSE_PROXY_ZZZ": "1"}) == [("ASPOSE_PROXY_ZZZ", None)]


@pytest.mark.parametrize(
    "name",
    [
        "ASPOSE_PROXY_CONFIG",
        "ASPOSE_PROXY_CLIENT_SECRET_FILE",
        "ASPOSE_PROXY_WORKERS",
        "OTHER_PROGRAM_SETTING",
    ],
)
def test_known_and_foreign_names_are_not_reported(name: str) -> None:
    assert unknown_env_vars({name: "x"}) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ASPOSE_PROXY_SERVICE_HOST", "10.96.14.2"),
        ("ASPOSE_PROXY_SERVICE_PORT", "8080"),
        ("ASPOSE_PROXY_SERVICE_PORT_HTTP", "8080"),
        ("ASPOSE_PROXY_PORT_8080_TCP", SERVICE_LINK),
        ("ASPOSE_PROXY_PORT_8080_TCP_PROTO", "tcp"),
        ("ASPOSE_PROXY_PORT_8080_TCP_PORT", "8080"),
        ("ASPOSE_PROXY_PORT_8080_TCP_ADDR", "10.96.14.2"),
        # A Service named aspose-proxy-admin: same shapes, longer prefix.
        ("ASPOSE_PROXY_ADMIN_SERVICE_HOST", "10.96.14.3"),
        ("ASPOSE_PROXY_ADMIN_PORT", "tcp://10.96.14.3:9000"),
    ],
)
def test_kubernetes_service_link_variables_are_recognised_and_skipped(
    name: str, value: str
) -> None:
    assert unknown_env_vars({name: value}) == []


def test_config_command_warns_about_an_unknown_variable_on_stderr() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASPOSE_PROXY_")}
    env["ASPOSE_PROXY_UPSTREAM_TIMEOUTT"] = "3"
    env |= {"ASPOSE_PROXY_CLIENT_ID": "x", "ASPOSE_PROXY_CLIENT_SECRET": "y" * 20}
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "config"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    assert "ASPOSE_PROXY_UPSTREAM_TIMEOUTT" in done.stderr
    assert "did you mean ASPOSE_PROXY_UPSTREAM_TIMEOUT?" in done.stderr
    assert "upstream_timeout = 300.0  # from default" in done.stdout
