"""Where the cache lives: the ``cache_store`` setting checked and resolved. Imports only the
leaf proxy/redis_url.py (``proxy.settings`` uses it)."""

from __future__ import annotations

import os
from pathlib import Path

from proxy.redis_url import check_redis_url

OFF = "off"
DISK = "disk"


def check_cache_store(url: str) -> str:
    """``off``, ``disk``, ``file:///absolute/dir`` or ``redis://host:port/db`` (no password)."""
    url = url.strip()
    if url.lower() in (OFF, DISK):
        return url.lower()
    if url.startswith("file://"):
        path = url.removeprefix("file://")
        if not path.startswith("/") or path.rstrip("/") == "":
            raise ValueError("a directory store is file:///absolute/path")
        return url
    if url.startswith(("redis://", "rediss://")):
        return check_redis_url(url, "cache_store", "cache")
    raise ValueError("must be off, disk, file:///absolute/dir or redis://host:port/db")


def disk_dir(url: str) -> Path:
    """The directory of a disk store: ``file:///x`` -> ``/x``; ``disk`` ->
    ``$XDG_CACHE_HOME/aspose-proxy/cache``, else ``~/.cache/aspose-proxy/cache``."""
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "aspose-proxy" / "cache"
