"""``BoundedCache``: remembered answers that cost at most a fixed number of entries.

The request path remembers answers per client-chosen value (address, Host, path, target URL):
most traffic repeats a few values, so a dict lookup replaces a parse. A client sending endless
distinct values must cost a re-parse, not memory: when full, the cache forgets everything (one
``clear()``, cheaper and simpler than an LRU, and a hot value comes back on its next use).
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V], Generic[K, V]):
    """A dict with ``remember``, which clears it first when it holds ``limit`` entries.

    A dict subclass so that the hit (``get``) stays the plain C lookup on the request path.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: K, value: V) -> V:
        """Store ``value`` under ``key`` (forgetting everything first when full); return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
