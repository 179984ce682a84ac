"""Issue 17: the pure rules about several processes sharing (or not sharing) a usage store."""

from __future__ import annotations

import pytest

from proxy.usage.rules import kubernetes_sqlite_warning, memory_store_workers_warning

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


def test_budgets_with_no_store_and_several_workers_are_warned_about() -> None:
    """Each worker of usage_store = "off" counts in its own memory: N workers, N budgets."""
    warning = memory_store_workers_warning("off", True, 2)
    assert warning is not None
    assert "own memory" in warning and "SQLite" in warning and "Redis" in warning


@pytest.mark.parametrize(
    ("store", "has_limits", "workers"),
    [("off", True, 1), ("off", False, 4), (SQLITE, True, 4), ("redis://redis:6379/0", True, 4)],
)
def test_no_memory_store_warning_where_the_counts_are_shared_or_alone(
    store: str, has_limits: bool, workers: int
) -> None:
    assert memory_store_workers_warning(store, has_limits, workers) is None
