"""Issue 17: the pure rules about several processes sharing (or not sharing) a usage store."""

from __future__ import annotations

import pytest

from proxy.usage.rules import kubernetes_sqlite_warning

POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
SQLITE = "sqlite:///var/lib/aspose-proxy/usage.db"


def test_budgets_on_sqlite_inside_kubernetes_are_warned_about_and_redis_is_named() -> None:
    warning = kubernetes_sqlite_warning(SQLITE, True, POD)
    assert warning is not None
    assert "one host" in warning and "Redis" in warning and "usage_store" in warning


@pytest.mark.parametrize(
    ("store", "has_limits", "environ"),
    [
        (SQLITE, True, {}),  # not in a pod: one host, SQLite is exact
        (SQLITE, False, POD),  # nothing to multiply
        ("redis://redis:6379/0", True, POD),  # shared
        ("off", True, POD),  # no store: nothing claims to be shared
    ],
)
def test_no_warning_where_nothing_is_multiplied(
    store: str, has_limits: bool, environ: dict[str, str]
) -> None:
    assert kubernetes_sqlite_warning(store, has_limits, environ) is None
