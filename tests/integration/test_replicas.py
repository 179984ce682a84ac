"""Issue 17: workers and replicas act as one (real processes, real redis-server, the sandbox)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import RunningSandbox
from tests.integration.test_workers import proxy_env, start_workers

__all__ = ["start_workers"]  # the fixture, shared with test_workers.py

KUBERNETES_WARNING = "SQLite usage_store inside Kubernetes"


async def test_budgets_on_sqlite_in_a_pod_are_warned_about_once_not_once_per_worker(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], tmp_path: Path
) -> None:
    env = proxy_env(
        sandbox,
        KUBERNETES_SERVICE_HOST="10.96.0.1",
        ASPOSE_PROXY_USAGE_STORE=f"sqlite://{tmp_path / 'usage.db'}",
        ASPOSE_PROXY_BUDGETS=json.dumps([{"client": "*", "calls": 100}]),
    )
    running = await start_workers("--workers", "2", env=env)
    status, _, _ = await running.get("/healthz")
    assert status == 200
    assert running.log.count(KUBERNETES_WARNING) == 1, running.log


DISC = "/v4.0/words/storage/disc"
BUDGET_OF_3 = json.dumps([{"client": "*", "calls": 3}])


def sqlite_env(sandbox: RunningSandbox, store: Path, **extra: str) -> dict[str, str]:
    return proxy_env(
        sandbox,
        ASPOSE_PROXY_USAGE_STORE=f"sqlite://{store}",
        ASPOSE_PROXY_USAGE_FLUSH_INTERVAL="0.1",
        **extra,
    )


async def test_two_workers_on_sqlite_share_a_budget_of_3_exactly(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], tmp_path: Path
) -> None:
    env = sqlite_env(sandbox, tmp_path / "usage.db", ASPOSE_PROXY_BUDGETS=BUDGET_OF_3)
    running = await start_workers("--workers", "2", env=env)
    # Each call on a new connection: SO_REUSEPORT spreads them over both workers.
    statuses = [(await running.get(DISC))[0] for _ in range(8)]
    assert sorted(statuses) == [200] * 3 + [429] * 5, statuses


async def test_two_run_processes_on_one_sqlite_file_share_a_budget_of_3_exactly(
    sandbox: RunningSandbox, start_workers: Callable[..., Any], tmp_path: Path
) -> None:
    env = sqlite_env(sandbox, tmp_path / "usage.db", ASPOSE_PROXY_BUDGETS=BUDGET_OF_3)
    first, second = [await start_workers(env=env) for _ in range(2)]
    statuses = [(await (first, second)[i % 2].get(DISC))[0] for i in range(8)]
    assert sorted(statuses) == [200] * 3 + [429] * 5, statuses
