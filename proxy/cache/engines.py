"""The configured store: ``cache_store`` to a ``CacheStore`` (disk or Redis), or None when off.

The engines are imported here, when chosen: a proxy without a Redis cache never loads redis-py
(tests/integration/test_import_cost.py)."""

from __future__ import annotations

from proxy.cache.location import OFF, disk_dir
from proxy.cache.store import CacheStore
from proxy.settings import Settings


def open_cache_store(settings: Settings) -> CacheStore | None:
    """A store object for the settings (not opened yet), or None for ``off``."""
    url = settings.cache_store
    if url == OFF:
        return None
    if url.startswith(("redis://", "rediss://")):
        from proxy.cache.redis_store import RedisStore

        return RedisStore(url, settings.cache_store_password, ttl=settings.cache_ttl)
    from proxy.cache.disk import DiskStore

    return DiskStore(disk_dir(url), ttl=settings.cache_ttl, max_size=settings.cache_max_size)
