"""The usage report: the ``/_proxy/usage`` JSON, and the ``usage`` command's table of it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from proxy.usage.budgets import period_bounds, used_by
from proxy.usage.rules import Budget
from proxy.usage.store import Row

PERIODS = ("day", "month")
RowsSince = Callable[[int], Awaitable[list[Row]]]


async def usage_report(
    period: str, rows_since: RowsSince, budgets: Sequence[Budget], now: float | None = None
) -> dict[str, Any]:
    """``{"period", "since", "rows": [...], "budgets": [...]}`` for the UTC day or month."""
    now = time.time() if now is None else now
    by_period: dict[str, list[Row]] = {}

    async def rows_of(name: str) -> list[Row]:
        if name not in by_period:
            start, _ = period_bounds(name, now)
            by_period[name] = await rows_since(int(start.timestamp()) // 3600)
        return by_period[name]

    rows = await rows_of(period)
    budget_lines = []
    for budget in dict.fromkeys(budgets):
        used = used_by(budget, await rows_of(budget.period))
        budget_lines.append(
            {
                "client": budget.client,
                "product": budget.product,
                "period": budget.period,
                "calls": budget.calls,
                "used": used,
                "remaining": max(0, budget.calls - used),
            }
        )
    since = period_bounds(period, now)[0]
    return {
        "period": period,
        "since": since.isoformat().replace("+00:00", "Z"),
        "rows": [
            {
                "client": row.client,
                "product": row.product,
                "kind": row.kind,
                "calls": row.calls,
                "errors": row.errors,
                "cached": row.cached,
            }
            for row in rows
        ],
        "budgets": budget_lines,
    }


def render_table(report: dict[str, Any]) -> str:
    """The report as aligned plain-text tables, for a terminal."""
    when = "today" if report["period"] == "day" else "this month"
    lines = [f"Calls {when} (since {report['since']}, UTC)", ""]
    header = ("client", "product", "kind", "calls", "errors", "cached")
    body = [tuple(str(row[c]) for c in header) for row in report["rows"]]
    if body:
        totals = (str(sum(row[c] for row in report["rows"])) for c in header[3:])
        body.append(("total", "", "", *totals))
        lines += _table(header, body, numeric=3)
    else:
        lines.append("no calls yet")
    if report["budgets"]:
        lines += ["", "Budgets"]
        columns = ("client", "product", "period", "calls", "used", "remaining")
        budgets = [tuple(str(b[c]) for c in columns) for b in report["budgets"]]
        lines += _table(columns, budgets, numeric=3)
    return "\n".join(lines)


def _table(header: Sequence[str], body: Sequence[Sequence[str]], *, numeric: int) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = [
            cell.rjust(width) if i >= numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]
