"""The words of ``aspose-proxy check`` (issue 18): the token host to try and the secret's source."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from proxy.check_command import host_hint, secret_source
from proxy.settings import LoadedSettings, Settings

SECRET = SecretStr("a-secret-long-enough-to-redact")


@pytest.mark.parametrize(
    ("token_url", "other"),
    [
        ("https://api.aspose.cloud/connect/token", "https://id.aspose.cloud/connect/token"),
        ("https://id.aspose.cloud/connect/token", "https://api.aspose.cloud/connect/token"),
    ],
)
def test_an_invalid_client_names_the_host_asked_and_the_other_one(
    token_url: str, other: str
) -> None:
    hint = host_hint(Settings(client_secret=SECRET, token_url=token_url))
    asked = token_url.split("/")[2]
    assert f"requested from {asked};" in hint
    assert f"try token_url = {other}" in hint


def test_another_token_host_is_named_without_advice() -> None:
    hint = host_hint(Settings(client_secret=SECRET, token_url="http://127.0.0.1:9/connect/token"))
    assert hint == "the token was requested from 127.0.0.1 (token_url)"


def loaded(origins: dict[str, str], **values: object) -> LoadedSettings:
    return LoadedSettings(Settings(**values), origins)


def test_the_secret_source_is_named(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret\n")
    from_file = loaded(
        {"client_secret": f"client_secret_file ({secret_file})",
         "client_secret_file": "ASPOSE_PROXY_CLIENT_SECRET_FILE"},
        client_secret_file=secret_file,
    )  # fmt: skip
    assert secret_source(from_file) == (
        f"the file {secret_file} (client_secret_file, from ASPOSE_PROXY_CLIENT_SECRET_FILE)"
    )
    from_env = loaded({"client_secret": "ASPOSE_PROXY_CLIENT_SECRET"}, client_secret=SECRET)
    assert secret_source(from_env) == "the environment variable ASPOSE_PROXY_CLIENT_SECRET"
    from_toml = loaded({"client_secret": "/etc/aspose-proxy.toml"}, client_secret=SECRET)
    assert secret_source(from_toml) == "client_secret in /etc/aspose-proxy.toml"
