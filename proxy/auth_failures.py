"""Failed client authentications: counted in ``/metrics``, one warning per address per minute.

A throttle would lock every local client out together (they all come from 127.0.0.1), so
guessing is made hopeless instead (keys of 16 characters at least, see settings) and visible
here (issue 16). The warning carries the count since the last one, so a guesser making
thousands of tries a second costs one log line a minute.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from proxy.bounded_cache import BoundedCache

log = structlog.get_logger("proxy.auth_failures")

WINDOW = 60.0  # seconds between two warnings about one address
_ADDRESSES = 4096  # addresses remembered; when full, forgotten (a fresh warning each)

Warn = Callable[[str | None, int], None]


def _warn(address: str | None, failures: int) -> None:
    log.warning(
        "failed client authentications",
        address=address or "(unknown)",
        failures=failures,
        window_seconds=int(WINDOW),
    )


class AuthFailures:
    """Counts each failure (``count``, the metric, by credential) and warns (``warn``) at the
    first failure of an address, then at its first failure at least ``WINDOW`` seconds after
    the previous warning, with the failures since."""

    def __init__(
        self,
        count: Callable[[str], None],
        warn: Warn = _warn,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._warn = warn
        self._clock = clock
        # address -> [time of the last warning, failures since it]
        self._pending: BoundedCache[str | None, list[float]] = BoundedCache(_ADDRESSES)

    def record(self, address: str | None, credential: str) -> None:
        """One wrong ``credential`` (access_key, bearer_token, client_secret) from ``address``."""
        self._count(credential)
        now = self._clock()
        entry = self._pending.get(address)
        if entry is not None and now - entry[0] < WINDOW:
            entry[1] += 1
            return
        failures = 1 + (int(entry[1]) if entry is not None else 0)
        self._pending.remember(address, [now, 0])
        self._warn(address, failures)
