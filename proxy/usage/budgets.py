"""Budgets: calls per UTC day or month, per client and product, reserved before forwarding.

The rules are immutable and built once (a SIGHUP builds new ones); what they count lives in a
ledger: the store's when it is shared (SQLite: one transaction per reservation; Redis: one
atomic script), else this process's memory, seeded from the store at start so a restart does
not refill a budget.
A reservation is taken before the request is forwarded and given back when it never left the
proxy (refused, no connection to upstream).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

import structlog

from proxy.errors import BudgetExhausted
from proxy.usage.memory import MemoryLedger
from proxy.usage.outage import Outage
from proxy.usage.rules import ANY, Budget, applies
from proxy.usage.store import Ledger, Row

log = structlog.get_logger("proxy.usage")

WARN_AT = 0.8  # a warning is logged once when a budget passes 80 %
KEY_SLACK = 86400  # ledger keys outlive their period by a day (clocks differ a little)


def period_bounds(period: str, now: float) -> tuple[datetime, datetime]:
    """Start and end (UTC) of the ``day`` or ``month`` that holds ``now``."""
    moment = datetime.fromtimestamp(now, UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return start, start + timedelta(days=1)
    start = start.replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


def used_by(budget: Budget, rows: Iterable[Row]) -> int:
    """Calls in ``rows`` (one period's) that count against ``budget``."""
    return sum(row.calls for row in rows if applies(budget, row.client, row.product))


class _Plan:
    """The pools one (client, product) reserves in, their keys and limits, until a period ends."""

    __slots__ = ("ends", "ends_at", "keys", "limits", "pools", "ttl", "warn_at")

    def __init__(
        self, pools: tuple[Budget, ...], keyed: list[tuple[str, float]], now: float
    ) -> None:
        self.pools = pools
        self.keys = tuple(key for key, _ in keyed)
        self.ends = tuple(end for _, end in keyed)
        self.ends_at = min(self.ends)
        self.limits = tuple(budget.calls for budget in pools)
        self.warn_at = tuple(WARN_AT * budget.calls for budget in pools)
        self.ttl = int(max(self.ends) - now) + KEY_SLACK


_UNPLANNED = _Plan((Budget(client=ANY, calls=0),), [("", 0.0)], 0.0)  # a marker: not looked at yet


class Budgets:
    """The budget rules in force, and the reservation made before forwarding."""

    def __init__(
        self,
        rules: Sequence[Budget],
        ledger: Ledger | None,
        *,
        outage: Outage | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = tuple(dict.fromkeys(rules))  # an exact duplicate is one pool
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.outage = outage or Outage()
        self.active = bool(self.rules)
        self._clock = clock
        self._pools: dict[tuple[str, str], tuple[Budget, ...]] = {}
        self._plans: dict[tuple[str, str], _Plan | None] = {}
        self._warned: set[str] = set()
        self._giving_back: set[asyncio.Future[None]] = set()

    def pools_for(self, client: str, product: str) -> tuple[Budget, ...]:
        pools = self._pools.get((client, product))
        if pools is None:
            pools = self._pools[(client, product)] = tuple(
                b for b in self.rules if applies(b, client, product)
            )
        return pools

    def key(self, budget: Budget, now: float) -> tuple[str, float]:
        """The ledger key of ``budget``'s period holding ``now``, and when that period ends."""
        start, end = period_bounds(budget.period, now)
        stamp = start.strftime("%Y-%m-%d" if budget.period == "day" else "%Y-%m")
        # The product has no ':', so the rest of the key is the client name, whatever it holds.
        return f"budget:{budget.period}:{stamp}:{budget.product}:{budget.client}", end.timestamp()

    def _plan(self, client: str, product: str, now: float) -> _Plan | None:
        """What a call by ``client`` to ``product`` reserves, until the first period ends."""
        pools = self.pools_for(client, product)
        plan = None
        if pools:
            keyed = [self.key(budget, now) for budget in pools]
            plan = _Plan(pools, keyed, now)
        self._plans[(client, product)] = plan
        return plan

    async def reserve(self, client: str, product: str) -> tuple[str, ...]:
        """Reserve one call in every budget that applies, or raise ``BudgetExhausted``.

        Returns the reserved keys (empty when no budget applies): give them back with
        ``release`` if the request never leaves the proxy.
        """
        now = self._clock()
        plan = self._plans.get((client, product), _UNPLANNED)
        if plan is _UNPLANNED or (plan is not None and now >= plan.ends_at):
            plan = self._plan(client, product, now)
        if plan is None:
            return ()
        try:
            values = await self.ledger.reserve(plan.keys, plan.limits, plan.ttl)
        except Exception as exc:
            raise self.outage.failed(exc) from None
        if self.outage.down:
            self.outage.answered()
        if values[0] < 0:
            index = -1 - values[0]
            budget = plan.pools[index]
            raise BudgetExhausted(
                f"The {budget.period}ly budget of {budget.calls} calls for client "
                f"'{budget.client}' and product '{budget.product}' is spent.",
                retry_after=plan.ends[index] - now,
            )
        for index, used in enumerate(values[1:]):  # values[0]: how many were reserved
            if used >= plan.warn_at[index] and plan.keys[index] not in self._warned:
                self._warned.add(plan.keys[index])
                budget = plan.pools[index]
                log.warning(
                    "budget passed 80%",
                    client=budget.client,
                    product=budget.product,
                    period=budget.period,
                    calls=budget.calls,
                    used=used,
                )
        return plan.keys

    async def spent(self, client: str, product: str) -> bool:
        """Whether a budget for this call is already spent (changes nothing; for the
        ``Expect: 100-continue`` answer, so a refused upload is not even sent)."""
        pools = self.pools_for(client, product)
        if not pools:
            return False
        now = self._clock()
        used = await self.ledger.peek([self.key(budget, now)[0] for budget in pools])
        return any(value >= budget.calls for value, budget in zip(used, pools, strict=True))

    def release(self, keys: tuple[str, ...]) -> None:
        """Give a reservation back (the request never left the proxy); never blocks the caller."""
        task = asyncio.ensure_future(self._release(keys))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _release(self, keys: tuple[str, ...]) -> None:
        try:
            await self.ledger.release(keys)
        except Exception as exc:
            log.warning("budget give-back failed", cause=type(exc).__name__)

    async def seed(self, rows_since: Callable[[int], Awaitable[list[Row]]]) -> None:
        """Start each budget's counter at the calls the store already holds for its period."""
        now = self._clock()
        rows: dict[str, list[Row]] = {}
        for budget in self.rules:
            if budget.period not in rows:
                start, _ = period_bounds(budget.period, now)
                rows[budget.period] = await rows_since(int(start.timestamp()) // 3600)
            key, ends_at = self.key(budget, now)
            ttl = int(ends_at - now) + KEY_SLACK
            await self.ledger.seed(key, used_by(budget, rows[budget.period]), ttl)
