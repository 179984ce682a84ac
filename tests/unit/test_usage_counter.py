"""The counter: attribution of a path, the one-increment hot path, batched writes, reports."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.usage.counter import UsageCounter, classify
from proxy.usage.memory import MemoryStore
from proxy.usage.report import render_table, usage_report
from proxy.usage.rules import Budget
from proxy.usage.store import Batch, Row, current_hour


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v4.0/words/storage/file/a.docx", ("words", "storage")),
        ("/v4.0/words/a.docx/convert?format=pdf", ("words", "api")),
        ("/v3.0/cells/book.xlsx/worksheets", ("cells", "api")),
        ("/v3.0/pdf/storage/disc", ("pdf", "storage")),
        ("/v3.0/PDF/x", ("pdf", "api")),
        ("/v3.0/slides/x?folder=/storage/", ("slides", "api")),  # the query is not the path
        ("/v1.0/unknown-product/x", ("other", "api")),  # label values stay bounded
        ("/words/storage/file", ("other", "storage")),  # no version segment
        ("/", ("other", "api")),
        ("/v4.0", ("other", "api")),
    ],
)
def test_classify(path: str, expected: tuple[str, str]) -> None:
    assert classify(path) == expected


class FlakyStore(MemoryStore):
    """Fails the first ``failures`` writes."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.batches: list[dict[Any, Any]] = []

    async def add(self, batch: Batch) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store down")
        self.batches.append(dict(batch))
        await super().add(batch)


async def test_a_failed_write_is_retried_with_the_next_batch() -> None:
    store = FlakyStore(failures=1)
    counter = UsageCounter(store, flush_interval=1)
    counter.record("ci", "words", "api", 200)
    with pytest.raises(ConnectionError):
        await counter.flush()
    counter.record("ci", "words", "api", 502)
    await counter.flush()
    assert store.batches == [{(current_hour(), "ci", "words", "api"): (2, 1, 0)}]


async def test_calls_are_written_once_per_flush_and_only_what_grew() -> None:
    store = FlakyStore(failures=0)
    counter = UsageCounter(store, flush_interval=1)
    counter.record("ci", "words", "api", 200)
    counter.record("ci", "words", "api", 404)
    counter.record("web", "cells", "storage", 301)
    await counter.flush()
    await counter.flush()
    counter.record("ci", "words", "api", 200)
    counter.count_cached("ci", "words", "api")  # a cache hit: written as cached, not a call
    await counter.flush()
    hour = current_hour()
    assert store.batches == [
        {(hour, "ci", "words", "api"): (2, 1, 0), (hour, "web", "cells", "storage"): (1, 0, 0)},
        {(hour, "ci", "words", "api"): (1, 0, 1)},
    ]
    # The cumulative totals (what /metrics shows) keep the status class.
    assert counter.totals == {
        ("ci", "words", "api", "2xx"): 2,
        ("ci", "words", "api", "4xx"): 1,
        ("web", "cells", "storage", "3xx"): 1,
    }


async def test_report_json_shape_and_table() -> None:
    rows = [Row("ci", "words", "api", 120, 3, 40), Row("web", "pdf", "storage", 7, 0)]

    async def rows_since(hour: int) -> list[Row]:
        return rows

    budgets = [Budget(client="ci", product="*", period="month", calls=100)]
    now = 1_790_000_000.0  # 2026-09-21
    report = await usage_report("day", rows_since, budgets, now=now)
    assert report["since"] == "2026-09-21T00:00:00Z"
    assert report["rows"][0] == {
        "client": "ci",
        "product": "words",
        "kind": "api",
        "calls": 120,
        "errors": 3,
        "cached": 40,
    }
    assert report["budgets"] == [
        {
            "client": "ci",
            "product": "*",
            "period": "month",
            "calls": 100,
            "used": 120,
            "remaining": 0,
        }
    ]
    table = render_table(report).splitlines()
    assert table[0] == "Calls today (since 2026-09-21T00:00:00Z, UTC)"
    assert table[2:7] == [
        "client  product  kind     calls  errors  cached",
        "------  -------  -------  -----  ------  ------",
        "ci      words    api        120       3      40",
        "web     pdf      storage      7       0       0",
        "total                       127       3      40",
    ]
