"""Env vars as settings: the names, JSON for lists/maps/models, errors that never show values."""

from __future__ import annotations

import pytest

from proxy.settings import SettingsError, load_settings


def test_lists_maps_and_models_come_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_ALLOW_FROM", '["10.0.0.0/8", "::1/128"]')
    monkeypatch.setenv("ASPOSE_PROXY_LOCAL_CLIENTS", '{"ci": "a-long-enough-local-secret"}')
    monkeypatch.setenv("ASPOSE_PROXY_BUDGETS", '[{"client": "ci", "period": "day", "calls": 5}]')
    settings = load_settings().settings
    assert settings.allow_from == ["10.0.0.0/8", "::1/128"]
    assert settings.local_clients["ci"].get_secret_value() == "a-long-enough-local-secret"
    assert settings.budgets[0].calls == 5


def test_plain_values_stay_text_for_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_PORT", "9091")
    monkeypatch.setenv("ASPOSE_PROXY_REQUIRE_CLIENT_AUTH", "false")
    monkeypatch.setenv("ASPOSE_PROXY_CLIENT_SECRET", '["not", "json", "for", "a", "secret"]')
    loaded = load_settings()
    assert loaded.settings.port == 9091
    assert loaded.settings.require_client_auth is False
    assert loaded.settings.client_secret is not None
    assert loaded.settings.client_secret.get_secret_value().startswith('["not"')
    assert loaded.origins["port"] == "ASPOSE_PROXY_PORT"


def test_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("aspose_proxy_port", "9092")
    assert load_settings().settings.port == 9092


def test_bad_json_names_the_variable_never_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASPOSE_PROXY_LOCAL_CLIENTS", "{ci: s3cr3t-value")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.problems == [
        "local_clients: not valid JSON (from ASPOSE_PROXY_LOCAL_CLIENTS); a valid value: "
        '{"my-app": "a-local-secret-of-16-chars-or-more"}'
    ]
    assert "s3cr3t" not in str(caught.value)
