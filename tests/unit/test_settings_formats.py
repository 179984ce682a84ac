"""The formats a newcomer types (issue 18): durations, comma lists, secret files, typos, and one
line per rejected value with its source and a valid example."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.setting_values import parse_duration
from proxy.settings import SettingsError, load_settings

SECRET = "a-secret-long-enough-to-redact"


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    for name, value in env.items():
        monkeypatch.setenv(f"ASPOSE_PROXY_{name.upper()}", value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    return excinfo.value.problems


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0), ("250ms", 0.25),
     ("7d", 604800.0), ("12", 12.0), ("2.5", 2.5), (" 5m ", 300.0)],
)  # fmt: skip
def test_durations_accept_units_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "m5", "1h30", "", "5 m s", "-"])
def test_a_malformed_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_a_duration_in_an_env_var_is_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_UPSTREAM_TIMEOUT", "5s")
    monkeypatch.setenv("ASPOSE_PROXY_SHUTDOWN_GRACE", "1m30s")
    monkeypatch.setenv("ASPOSE_PROXY_CACHE_TTL", "7d")
    settings = load_settings().settings
    assert settings.upstream_timeout == 5.0
    assert settings.shutdown_grace == 90.0
    assert settings.cache_ttl == 604800


def test_a_list_in_an_env_var_may_be_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_ALLOW_FROM", "10.0.0.0/8, ::1/128")
    monkeypatch.setenv("ASPOSE_PROXY_ALLOW_METHODS", "GET,PUT")
    settings = load_settings().settings
    assert settings.allow_from == ["10.0.0.0/8", "::1/128"]
    assert settings.allow_methods == ["GET", "PUT"]


def test_a_list_in_an_env_var_may_still_be_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_ALLOW_FROM", '["10.0.0.0/8", "::1/128"]')
    assert load_settings().settings.allow_from == ["10.0.0.0/8", "::1/128"]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("upstream_timeout", "5x", "upstream_timeout: not a duration (from "
         "ASPOSE_PROXY_UPSTREAM_TIMEOUT); a valid value: 30s, 5m, 1h30m or 300"),
        ("port", "abc", "port: must be a valid integer (from ASPOSE_PROXY_PORT); a valid "
         "value: 8080"),
        ("require_client_auth", "maybe", "require_client_auth: must be a valid boolean (from "
         "ASPOSE_PROXY_REQUIRE_CLIENT_AUTH); a valid value: true"),
        ("budgets", "x", "budgets: not valid JSON (from ASPOSE_PROXY_BUDGETS); a valid value: "
         '[{"client": "*"'),
        ("budgets", '[{"client": "*", "product": "words", "period": "day"}]',
         "budgets[0].calls: required (from ASPOSE_PROXY_BUDGETS); a valid value: "
         '[{"client": "*"'),
    ],
)  # fmt: skip
def test_a_rejected_value_is_one_line_with_source_and_example(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    (line,) = problems(monkeypatch, **{name: value})
    assert line.startswith(expected), line
    assert "Input should" not in line and "unable to parse" not in line


def test_a_misspelt_toml_key_names_the_close_match(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text("upstream_timout = 5\n")
    with pytest.raises(SettingsError) as excinfo:
        load_settings(config_path=path)
    assert excinfo.value.problems == [
        f"upstream_timout: unknown setting (did you mean upstream_timeout?) (from {path})"
    ]


@pytest.mark.parametrize("content", [f"{SECRET}\n", f"{SECRET}  \n", f"{SECRET}\r\n", SECRET])
def test_a_secret_file_loses_its_trailing_newline_and_spaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(content)
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET_FILE", str(secret_file))
    secret = load_settings().settings.client_secret
    assert secret is not None and secret.get_secret_value() == SECRET


@pytest.mark.parametrize("content", ["", "\n", "   \n"])
def test_an_empty_secret_file_is_refused_at_start_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(content)
    (line,) = problems(monkeypatch, client_secret_file=str(secret_file))
    assert line.startswith(f"client_secret_file: {secret_file} is empty"), line


def test_a_relative_secret_file_in_toml_is_relative_to_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "secret.txt").write_text(SECRET + "\n")
    config = tmp_path / "conf" / "proxy.toml"
    config.write_text('client_secret_file = "secret.txt"\n')
    monkeypatch.chdir(tmp_path)  # not where the file is
    settings = load_settings(config_path=config).settings
    assert settings.client_secret_file == tmp_path / "conf" / "secret.txt"
    assert settings.client_secret is not None
    assert settings.client_secret.get_secret_value() == SECRET
