"""One log line when the usage store stops answering a budget or rate check, one when it is back.

Every call under a budget or rate limit asks the store; while it is down each of them gets
503 ``usage_store_unavailable``, and a line per call would flood the log (issue 17: one per
outage). Budgets and the rate limiter of one app share one ``Outage``.
"""

from __future__ import annotations

import structlog

from proxy.errors import UsageStoreUnavailable

log = structlog.get_logger("proxy.usage")


class Outage:
    """Whether the store is failing now, and the two log lines of its outage."""

    __slots__ = ("down",)

    def __init__(self) -> None:
        self.down = False

    def failed(self, exc: BaseException) -> UsageStoreUnavailable:
        """The error for the client; the log line only when the outage begins."""
        if not self.down:
            self.down = True
            log.error(
                "usage store unreachable: calls under a budget or rate limit get 503 "
                "usage_store_unavailable until it is back",
                cause=type(exc).__name__,
            )
        return UsageStoreUnavailable(
            "The usage store that counts this call's budget or rate limit cannot be reached.",
            retry_after=1,
        )

    def answered(self) -> None:
        """The store answered again (call only while ``down``)."""
        self.down = False
        log.warning("usage store reachable again: budgets and rate limits enforced again")
