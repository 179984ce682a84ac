"""Settings precedence, sources and messages (proxy/settings.py) and the ``config`` CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from proxy.cli import main
from proxy.settings import Settings, SettingsError, load_settings

SECRET = "Hunter2-very-secret-value"


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def write_toml(tmp_path: Path, text: str, name: str = "proxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(excinfo: pytest.ExceptionInfo[SettingsError]) -> list[str]:
    return excinfo.value.problems


# -- precedence and origins --------------------------------------------------------------------


def test_precedence_cli_over_env_over_toml_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(
        tmp_path,
        'port = 1111\nhost = "10.0.0.1"\nclient_id = "toml-id"\nlog_level = "warning"\n',
    )
    monkeypatch.setenv("ASPOSE_PROXY_PORT", "2222")
    monkeypatch.setenv("ASPOSE_PROXY_HOST", "10.0.0.2")

    loaded = load_settings({"port": "3333", "host": None}, path)

    s = loaded.settings
    assert (s.port, s.host, s.client_id, s.log_level) == (3333, "10.0.0.2", "toml-id", "warning")
    assert s.upstream_timeout == 300.0
    assert loaded.origins["port"] == "--port"
    assert loaded.origins["host"] == "ASPOSE_PROXY_HOST"
    assert loaded.origins["client_id"] == str(path)
    assert loaded.origins["log_level"] == str(path)
    assert loaded.origins["upstream_timeout"] == "default"


def test_env_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_toml(tmp_path, "read_timeout = 5.0\n")
    monkeypatch.setenv("ASPOSE_PROXY_READ_TIMEOUT", "7.5")
    loaded = load_settings({}, path)
    assert loaded.settings.read_timeout == 7.5
    assert loaded.origins["read_timeout"] == "ASPOSE_PROXY_READ_TIMEOUT"


def test_every_key_has_an_origin_defaults_included() -> None:
    loaded = load_settings({}, None)
    assert set(loaded.origins) >= set(Settings.model_fields)
    assert loaded.origins["port"] == "default"
    assert loaded.settings.port == 8080
    assert loaded.settings.host == "127.0.0.1"
    assert loaded.settings.upstream_url == "https://api.aspose.cloud"


def test_config_env_var_names_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(tmp_path, 'client_id = "from-file"\n')
    monkeypatch.setenv("ASPOSE_PROXY_CONFIG", str(path))
    loaded = load_settings({}, None)
    assert loaded.settings.client_id == "from-file"
    assert loaded.origins["client_id"] == str(path)


def test_explicit_config_path_beats_config_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = write_toml(tmp_path, 'client_id = "env-file"\n', "env.toml")
    cli_file = write_toml(tmp_path, 'client_id = "cli-file"\n', "cli.toml")
    monkeypatch.setenv("ASPOSE_PROXY_CONFIG", str(env_file))
    assert load_settings({}, cli_file).settings.client_id == "cli-file"


def test_named_toml_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError) as caught:
        load_settings({}, missing)
    assert problems_of(caught) == [f"config: file {missing} does not exist"]


def test_config_env_var_naming_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings({}, None)


def test_invalid_toml_is_an_error_without_its_content(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f'client_secret = "{SECRET}\n')  # unterminated string
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert "not valid TOML" in str(caught.value)
    assert SECRET not in str(caught.value)


# -- problems, one line each -------------------------------------------------------------------


def test_port_out_of_range_from_env_names_key_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_PORT", "70000")
    with pytest.raises(SettingsError) as caught:
        load_settings({}, None)
    assert problems_of(caught) == [
        "port: must be 0..65535 (from ASPOSE_PROXY_PORT); a valid value: 8080"
    ]


def test_port_out_of_range_from_cli_names_flag() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"port": "-1"}, None)
    assert problems_of(caught) == ["port: must be 0..65535 (from --port); a valid value: 8080"]


def test_several_problems_give_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(tmp_path, 'upstream_url = "ftp://x"\n')
    monkeypatch.setenv("ASPOSE_PROXY_PORT", "99999")
    with pytest.raises(SettingsError) as caught:
        load_settings({"connect_timeout": "0"}, path)
    lines = problems_of(caught)
    assert len(lines) == 3
    assert sorted(line.split(":")[0] for line in lines) == [
        "connect_timeout",
        "port",
        "upstream_url",
    ]
    assert any(f"(from {path})" in line for line in lines)
    assert any("(from --connect-timeout)" in line for line in lines)


def test_unknown_toml_key_is_an_unknown_setting(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'colour = "blue"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert problems_of(caught) == [f"colour: unknown setting (from {path})"]


# -- secrets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\n\n"])
def test_client_secret_file_read_with_trailing_newline_stripped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    secret_file = tmp_path / "aspose_client_secret"
    secret_file.write_text(SECRET + ending, encoding="utf-8", newline="")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET_FILE", str(secret_file))
    settings = load_settings({}, None).settings
    assert settings.client_secret is not None
    assert settings.client_secret.get_secret_value() == SECRET
    assert settings.secret_values == (SECRET,)


def test_unreadable_client_secret_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"client_secret_file": str(tmp_path / "missing")}, None)
    (line,) = problems_of(caught)
    assert line.startswith("client_secret_file: cannot read")
    assert line.endswith("(from --client-secret-file)")


def test_both_client_secret_and_file_is_an_error_without_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret-value\n", encoding="utf-8")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET_FILE", str(secret_file))
    with pytest.raises(SettingsError) as caught:
        load_settings({}, None)
    (line,) = problems_of(caught)
    assert line.startswith("client_secret_file:")
    assert "not both" in line
    assert SECRET not in str(caught.value)
    assert "file-secret-value" not in str(caught.value)


@pytest.mark.parametrize(
    "toml",
    [
        f'client_secret = ["{SECRET}"]\n',
        f'client_secret = {{ value = "{SECRET}" }}\n',
        f'local_clients = {{ app = ["{SECRET}"] }}\n',
        f'client_secrett = "{SECRET}"\n',
        f'port = "{SECRET}"\n',
    ],
    ids=["secret-list", "secret-table", "local-client-list", "misspelt-key", "port"],
)
def test_rejected_secret_value_never_in_error_text(tmp_path: Path, toml: str) -> None:
    path = write_toml(tmp_path, toml)
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert caught.value.problems
    assert SECRET not in str(caught.value)
    assert all(SECRET not in line for line in caught.value.problems)


def test_bad_json_in_env_reported_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_LOCAL_CLIENTS", '{"app": "' + SECRET)
    with pytest.raises(SettingsError) as caught:
        load_settings({}, None)
    assert "local_clients" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_secrets_are_secretstr_and_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("ASPOSE_PROXY_LOCAL_CLIENTS", '{"app": "local-' + SECRET + '"}')
    settings = load_settings({}, None).settings
    assert isinstance(settings.client_secret, SecretStr)
    assert isinstance(settings.local_clients["app"], SecretStr)
    assert settings.client_secret.get_secret_value() == SECRET
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert SECRET not in text


def test_client_secret_from_file_origin_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET, encoding="utf-8")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET_FILE", str(secret_file))
    loaded = load_settings({}, None)
    assert loaded.origins["client_secret"].startswith("client_secret_file")
    assert str(secret_file) in loaded.origins["client_secret"]
    assert loaded.origins["client_secret_file"] == "ASPOSE_PROXY_CLIENT_SECRET_FILE"


# -- derived and normalised values ---------------------------------------------------------------


def test_token_url_defaults_to_upstream_connect_token() -> None:
    loaded = load_settings({"upstream_url": "http://sandbox.local:8090/"}, None)
    assert loaded.settings.token_url == "http://sandbox.local:8090/connect/token"
    assert loaded.origins["token_url"] == "default (from upstream_url)"


def test_default_token_url_for_default_upstream() -> None:
    assert load_settings({}, None).settings.token_url == "https://api.aspose.cloud/connect/token"


def test_explicit_token_url_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_TOKEN_URL", "https://auth.example/oauth2/token")
    loaded = load_settings({"upstream_url": "http://up.example"}, None)
    assert loaded.settings.token_url == "https://auth.example/oauth2/token"
    assert loaded.origins["token_url"] == "ASPOSE_PROXY_TOKEN_URL"


@pytest.mark.parametrize("level", ["DEBUG", "Warning", "info", "ERROR"])
def test_log_level_case_insensitive(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_LOG_LEVEL", level)
    assert load_settings({}, None).settings.log_level == level.lower()


def test_unknown_log_level_is_a_problem() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"log_level": "loud"}, None)
    (line,) = problems_of(caught)
    assert line.startswith("log_level: must be one of debug, info")
    assert line.endswith("(from --log-level)")


# -- the CLI -----------------------------------------------------------------------------------


def test_config_command_prints_each_key_with_source_and_masks_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_toml(tmp_path, "read_timeout = 12.5\n")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_ID", "cid-123")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("ASPOSE_PROXY_LOCAL_CLIENTS", '{"app": "local-' + SECRET + '"}')

    code = main(["config", "--config", str(path), "--port", "1234"])

    out, err = capsys.readouterr()
    assert code == 0
    assert SECRET not in out
    assert SECRET not in err
    lines = out.splitlines()
    assert "port = 1234  # from --port" in lines
    assert 'client_id = "cid-123"  # from ASPOSE_PROXY_CLIENT_ID' in lines
    assert 'client_secret = "**********"  # from ASPOSE_PROXY_CLIENT_SECRET' in lines
    assert f"read_timeout = 12.5  # from {path}" in lines
    assert 'host = "127.0.0.1"  # from default' in lines
    assert 'local_clients = { app = "**********" }  # from ASPOSE_PROXY_LOCAL_CLIENTS' in lines
    for key in Settings.model_fields:
        assert any(line.lstrip("# ").startswith(f"{key} = ") for line in lines), key


def test_config_command_invalid_settings_exit_2_one_line_each(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_PORT", "70000")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET", SECRET)
    code = main(["config", "--log-level", "loud"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert (
        "aspose-proxy: port: must be 0..65535 (from ASPOSE_PROXY_PORT); a valid value: 8080"
        in lines
    )
    assert any(line.startswith("aspose-proxy: log_level: must be one of") for line in lines)
    assert "Traceback" not in err
    assert SECRET not in err


def test_run_without_credentials_exits_2_naming_client_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["run"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "client_id" in err
    assert "client_secret" in err
    assert "Traceback" not in err
    assert all(line.startswith("aspose-proxy: ") for line in err.splitlines())


def test_run_with_id_but_no_secret_exits_2_naming_client_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_ID", "cid")
    code = main(["run"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines()[0].startswith("aspose-proxy: client_secret: required")
    assert "client_id:" not in err
