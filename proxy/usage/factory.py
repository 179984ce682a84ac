"""``open_store(url)``: the usage store engine a ``usage_store`` URL names.

The engines are imported here only when chosen: a process on the default store never loads
redis-py (import cost, see tests/integration/test_import_cost.py), not to hide a cycle (the
engines import only proxy/usage/store.py).
"""

from __future__ import annotations

from pydantic import SecretStr

from proxy.usage.memory import MemoryStore
from proxy.usage.rules import OFF, sqlite_path
from proxy.usage.store import UsageStore


def open_store(
    url: str, password: SecretStr | None = None, *, create: bool = True, application: str = ""
) -> UsageStore:
    """The store for a ``usage_store`` URL, not yet opened (``create``: make a missing file;
    ``application``: whose budgets and rate limits its ledger holds, see ``store.app_key``)."""
    if url == OFF:
        return MemoryStore()
    if url.startswith("sqlite://"):
        from proxy.usage.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url), create=create, application=application)
    from proxy.usage.redis import RedisStore

    return RedisStore(url, password, application)
