"""Single flight: identical requests in flight make one upstream call.

The first request for a key leads (forwards and stores); the others wait for the leader's
outcome, then read the store (a hit) or, when the leader failed to store an entry, forward
themselves. Per process; two replicas may still both convert (the store is shared, the
flights are not).
"""

from __future__ import annotations

import asyncio


class Flights:
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[bool]] = {}

    def lead(self, key: str) -> asyncio.Future[bool] | None:
        """None: the caller leads and must call ``land``; else the leader's outcome to await."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        self._flights[key] = asyncio.get_running_loop().create_future()
        return None

    def land(self, key: str, stored: bool) -> None:
        """The leader is done: ``stored`` tells the waiters whether the store has the entry."""
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(stored)

    def __len__(self) -> int:
        return len(self._flights)
