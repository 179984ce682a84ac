"""CredentialsSource (proxy/credentials.py): client_secret_file changes, Kubernetes style."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr

from proxy.credentials import Credentials, CredentialsSource
from proxy.log_setup import configure_logging
from proxy.settings import Settings


class Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, credentials: Credentials, why: str) -> bool:
        self.calls.append((credentials.client_id, credentials.secret, why))
        return True


def kubernetes_secret(mount: Path, secret: str, version: int) -> None:
    """What the kubelet does: write a new timestamped dir, swap ``..data`` to it atomically."""
    new = mount / f"..2026_11_30_{version:02d}"
    new.mkdir()
    (new / "client_secret").write_text(secret + "\n")
    link = mount / "..data_tmp"
    link.symlink_to(new.name)
    os.replace(link, mount / "..data")
    if not (mount / "client_secret").is_symlink():
        (mount / "client_secret").symlink_to("..data/client_secret")


def settings_for(path: Path) -> Settings:
    return Settings(client_id="app", client_secret_file=path)


def test_kubernetes_symlink_swap_is_noticed(tmp_path: Path) -> None:
    kubernetes_secret(tmp_path, "first", 1)
    seen = Seen()
    source = CredentialsSource(settings_for(tmp_path / "client_secret"), seen)
    source.check()
    assert seen.calls == []
    kubernetes_secret(tmp_path, "second", 2)
    source.check()
    assert seen.calls == [("app", "second", "client_secret_file changed")]
    source.check()
    assert len(seen.calls) == 1


def test_file_rewritten_in_place_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("aaaa")
    seen = Seen()
    source = CredentialsSource(settings_for(path), seen)
    path.write_text("bbbbbb")
    source.check()
    assert [c[1] for c in seen.calls] == ["bbbbbb"]


def test_same_content_rewritten_is_not_a_rotation(tmp_path: Path) -> None:
    kubernetes_secret(tmp_path, "same", 1)
    seen = Seen()
    source = CredentialsSource(settings_for(tmp_path / "client_secret"), seen)
    kubernetes_secret(tmp_path, "same", 2)
    source.check()
    assert seen.calls == []


def test_missing_file_mid_swap_keeps_the_current_credentials(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("first")
    seen = Seen()
    source = CredentialsSource(settings_for(path), seen)
    path.unlink()
    source.check()
    assert seen.calls == []
    path.write_text("second")
    source.check()
    assert [c[1] for c in seen.calls] == ["second"]


def test_reload_hands_over_client_id_and_secret(tmp_path: Path) -> None:
    seen = Seen()
    source = CredentialsSource(Settings(client_id="a", client_secret=SecretStr("s1")), seen)
    source.reload(Settings(client_id="b", client_secret=SecretStr("s2")))
    assert seen.calls == [("b", "s2", "SIGHUP")]


@pytest.mark.parametrize(
    "settings",
    [Settings(client_id="b"), Settings(client_secret=SecretStr("s2"))],
    ids=["no secret", "no client id"],
)
def test_reload_without_credentials_keeps_the_current_ones(settings: Settings) -> None:
    seen = Seen()
    source = CredentialsSource(Settings(client_id="a", client_secret=SecretStr("s1")), seen)
    source.reload(settings)
    assert seen.calls == []


def test_credentials_repr_hides_the_secret() -> None:
    credentials = Credentials("app", SecretStr("very-secret-value"))
    assert "very-secret-value" not in repr(credentials)
    assert "very-secret-value" not in str(credentials)


@pytest.mark.parametrize("text", ["secret\n", "secret\r\n", "secret"])
def test_file_secret_read_like_settings(tmp_path: Path, text: str) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    seen = Seen()
    source = CredentialsSource(settings_for(path), seen)
    path.write_text(text)
    os.utime(path, ns=(1, 1))
    source.check()
    assert [c[1] for c in seen.calls] == ["secret"]


def test_a_reloaded_secret_is_redacted_from_then_on(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging("json", "info", ["first-secret-value"], stream=stream, flush_interval=0)
    try:
        path = tmp_path / "secret"
        path.write_text("first-secret-value")
        source = CredentialsSource(settings_for(path), Seen())
        path.write_text("second-secret-value")
        source.check()
        source.reload(Settings(client_id="app", client_secret=SecretStr("third-secret-value")))
        log = structlog.get_logger("test")
        log.error("boom", detail="upstream said second-secret-value and third-secret-value")
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "boom" in text
    assert "second-secret-value" not in text
    assert "third-secret-value" not in text
