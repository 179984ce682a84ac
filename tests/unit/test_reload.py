"""proxy/reload.py: hooks get the new settings; restart-only changes are reported."""

from __future__ import annotations

import logging

import structlog
from aiohttp import web
from pydantic import SecretStr

from proxy import reload
from proxy.settings import Settings, SettingsError


def base(**overrides: object) -> Settings:
    values: dict[str, object] = {"client_id": "a", "client_secret": SecretStr("s")}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_hooks_get_the_new_settings_and_restart_only_changes_are_logged() -> None:
    app = web.Application()
    reload.setup(app, base())
    got: list[Settings] = []
    app[reload.RELOAD_HOOKS].append(got.append)
    before = logging.getLogger().level
    new = base(port=9999, log_level="warning")
    with structlog.testing.capture_logs() as logs:
        changed = reload.reload(app, new, base())
    assert got == [new]
    assert changed == ["port"]
    warning = next(e for e in logs if e["log_level"] == "warning")
    assert warning["settings"] == ["port"]
    assert logging.getLogger().level == logging.WARNING  # the log-level hook
    reload.reload(app, base(log_level="info"), new)
    assert logging.getLogger().level == logging.INFO
    logging.getLogger().setLevel(before)


def test_a_failing_hook_does_not_stop_the_others() -> None:
    app = web.Application()
    reload.setup(app, base())
    got: list[Settings] = []

    def broken(settings: Settings) -> None:
        raise RuntimeError("boom")

    app[reload.RELOAD_HOOKS][:0] = [broken]
    app[reload.RELOAD_HOOKS].append(got.append)
    reload.reload(app, base(), base())
    assert len(got) == 1


def test_settings_that_fail_to_load_leave_everything_as_it_was() -> None:
    app = web.Application()
    reload.setup(app, base())
    got: list[Settings] = []
    app[reload.RELOAD_HOOKS].append(got.append)

    def bad() -> Settings:
        raise SettingsError(["port: must be 0..65535 (from x.toml)"])

    app[reload.SETTINGS_LOADER] = bad
    current = base()
    with structlog.testing.capture_logs() as logs:
        assert reload.reload_from_sources(app, current) is current
    assert got == []
    assert any(e["log_level"] == "error" for e in logs)


def test_restart_only_is_read_from_the_fields_so_a_new_store_setting_is_reported() -> None:
    """The cache settings came after the old RESTART_ONLY list and were silently kept."""
    app = web.Application()
    reload.setup(app, base())
    changed = reload.reload(app, base(cache_store="disk", cache_ttl=60), base())
    assert changed == ["cache_store", "cache_ttl"]
    assert {"host", "port", "usage_store"} <= Settings.restart_only()
    assert not {"allow_from", "budgets", "log_level", "client_secret"} & Settings.restart_only()
