"""The proxy's own pages: ``GET /_proxy/`` (status at a glance) and ``GET /_proxy/usage`` (JSON).

Server-rendered HTML from one template: no script, no request to another host (the CSP header
says so), a ``<meta refresh>`` for auto-refresh, readable without JavaScript. Both pages follow
the access rules of forwarded requests (the guards treat them as such) and show no secret,
key or token: only names, counts and the token's timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from html import escape
from importlib.resources import files
from string import Template
from typing import Any

from aiohttp import web

from proxy.cache.step import ConversionCache
from proxy.errors import BadRequest, NotFound, UsageStoreUnavailable
from proxy.metrics import Metrics
from proxy.state import STATE
from proxy.tokens import TokenCache
from proxy.usage.report import PERIODS, usage_report

SAMPLE_EVERY = 5.0  # seconds between traffic samples
WINDOWS = (60, 300)  # the page shows rates over the last minute and the last five
REFRESH = 10  # seconds between automatic reloads of the page
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}
TEMPLATE = Template(files("proxy").joinpath("templates/status.html").read_text("utf-8"))


class Traffic:
    """Answered requests and errors sampled every few seconds, for rates over recent minutes."""

    def __init__(self, metrics: Metrics, clock: Any = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._samples: deque[tuple[float, float, float]] = deque(
            maxlen=int(max(WINDOWS) / SAMPLE_EVERY) + 1
        )
        self.sample()

    def sample(self) -> None:
        self._samples.append((self._clock(), *self._metrics.answered_totals()))

    def rates(self, window: float) -> tuple[float, float]:
        """Requests per second and the share of them answered 4xx/5xx over ``window`` s."""
        now, total, errors = self._clock(), *self._metrics.answered_totals()
        oldest = next((s for s in self._samples if now - s[0] <= window), None)
        if oldest is None or now - oldest[0] < 1:
            return 0.0, 0.0
        requests = total - oldest[1]
        return requests / (now - oldest[0]), ((errors - oldest[2]) / requests) if requests else 0.0

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: sample in the background as long as the app lives."""

        async def sampler() -> None:
            while True:
                await asyncio.sleep(SAMPLE_EVERY)
                self.sample()

        task = asyncio.create_task(sampler(), name="status-traffic")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _report(request: web.Request, period: str) -> dict[str, Any]:
    usage = request.app[STATE].usage
    try:
        return await usage_report(period, usage.counter.rows, usage.budgets.rules)
    except Exception as exc:
        raise UsageStoreUnavailable(
            f"The usage store cannot be read ({type(exc).__name__}).", retry_after=5
        ) from None


async def usage_json(request: web.Request) -> web.Response:
    """``GET /_proxy/usage?period=day|month``: this process's unwritten calls included."""
    period = request.query.get("period", "day")
    if period not in PERIODS:
        raise BadRequest("period must be day or month.")
    report = await _report(request, period)
    return web.json_response(report, headers={"Cache-Control": "no-store"})


async def not_found(request: web.Request) -> web.Response:
    raise NotFound(f"No page at {request.path}; the status page is /_proxy/.")


async def status_page(upstream: str, traffic: Traffic, request: web.Request) -> web.Response:
    """``GET /_proxy/``: token, traffic, budgets and calls on one page."""
    state = request.app[STATE]
    day = await _report(request, "day")
    month = await _report(request, "month")
    html = TEMPLATE.substitute(
        refresh=REFRESH,
        upstream=escape(upstream),
        store=escape(state.usage.store.description),
        now=escape(datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        token=await _token_html(state.tokens),
        traffic=_traffic_html(traffic),
        budgets=_budgets_html(day["budgets"]),
        cache=_cache_html(state.cache, day["rows"]),
        today=_calls_html(day["rows"]),
        month=_calls_html(month["rows"]),
    )
    return web.Response(text=html, content_type="text/html", headers=HEADERS)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


async def _token_html(tokens: TokenCache | None) -> str:
    if tokens is None:
        return '<p class="bad">starting</p>'
    held = tokens.valid_token() is not None
    since = tokens.seconds_since_fetch()
    rows = [
        ("held", '<span class="ok">yes</span>' if held else '<span class="bad">no</span>'),
        ("expires in", _duration(tokens.seconds_to_expiry()) if held else "—"),
        ("last refresh", f"{_duration(since)} ago" if since is not None else "never"),
        ("last error", escape(tokens.last_error or "none")),
    ]
    standing = await tokens.schedule_standing()  # shared by every worker and replica on the store
    if standing is not None:
        failed = f"{standing['failed_token_requests']} of at most {standing['failure_budget']}"
        rows.append(("failed token requests", f"{failed} in {standing['window_seconds']} s"))
        if "blocked_until" in standing:
            rows.append(
                ("token requests", f'<span class="bad">{escape(standing["blocked_reason"])}</span>')
            )
        if "shared_state" in standing:
            rows.append(
                ("schedule", f'<span class="bad">{escape(standing["shared_state"])}</span>')
            )
    return _table(("", ""), rows, show_header=False)


def _traffic_html(traffic: Traffic) -> str:
    tiles = []
    for window in WINDOWS:
        rate, ratio = traffic.rates(window)
        tiles.append(
            f'<div><div class="big">{rate:.1f}</div><div class="muted">requests/s, last '
            f'{window // 60} min</div><div class="{"bad" if ratio > 0.05 else "ok"}">'
            f"{ratio:.1%} errors</div></div>"
        )
    return f'<div class="tiles">{"".join(tiles)}</div>'


def _budgets_html(budgets: list[dict[str, Any]]) -> str:
    if not budgets:
        return '<p class="muted">No budgets configured.</p>'
    rows = []
    for budget in budgets:
        share = budget["used"] / budget["calls"] if budget["calls"] else 1.0
        level = "full" if share >= 1 else "warn" if share >= 0.8 else ""
        bar = (
            f'<div class="bar" title="{share:.0%}"><div class="{level}" '
            f'style="width:{min(share, 1.0) * 100:.1f}%"></div></div>'
        )
        rows.append(
            (
                escape(budget["client"]),
                escape(budget["product"]),
                escape(budget["period"]),
                bar,
                f"{budget['used']} / {budget['calls']}",
                f"{share:.0%}",
            )
        )
    return _table(("client", "product", "period", "", "used", ""), rows, numeric=4, wide=3)


def _cache_html(cache: ConversionCache | None, rows: list[dict[str, Any]]) -> str:
    """Today's hit ratio (this process) and the calls, so credits, the cache saved (every
    process writing to the usage store)."""
    if cache is None:
        return '<p class="muted">Off (cache_store = "off").</p>'
    hits, misses = cache.today()
    looked_up = hits + misses
    ratio = f"{hits / looked_up:.0%}" if looked_up else "—"
    saved = sum(row.get("cached", 0) for row in rows)
    tiles = (
        f'<div><div class="big">{ratio}</div><div class="muted">hit ratio today '
        f"({hits} hits, {misses} misses)</div></div>"
        f'<div><div class="big">{saved}</div><div class="muted">calls (credits) saved '
        f"today</div></div>"
        f'<div><div class="big">{cache.stats.entries}</div><div class="muted">entries, '
        f"{cache.stats.bytes / 1048576:.1f} MiB in {escape(cache.store.description)}</div></div>"
    )
    return f'<div class="tiles">{tiles}</div>'


def _calls_html(rows: list[dict[str, Any]]) -> str:
    by_pair: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        entry = by_pair.setdefault((row["client"], row["product"]), [0, 0, 0])
        entry[0] += row["calls"]
        entry[1] += row["errors"]
        entry[2] += row.get("cached", 0)
    if not by_pair:
        return '<p class="muted">No calls yet.</p>'
    lines = [
        (escape(client), escape(product), *(str(n) for n in counts))
        for (client, product), counts in sorted(by_pair.items())
    ]
    total = [sum(counts[i] for counts in by_pair.values()) for i in range(3)]
    lines.append(("<b>total</b>", "", *(f"<b>{n}</b>" for n in total)))
    return _table(("client", "product", "calls", "errors", "cached"), lines, numeric=2)


def _table(
    header: tuple[str, ...],
    rows: Iterable[tuple[str, ...]],
    *,
    numeric: int = 99,
    wide: int = -1,
    show_header: bool = True,
) -> str:
    """Cells are HTML already (escaped by the caller); columns from ``numeric`` on align right,
    column ``wide`` takes the room left."""

    def cells(tag: str, values: tuple[str, ...]) -> str:
        return "".join(
            f'<{tag} class="{"n" if i >= numeric else "wide" if i == wide else ""}">{v}</{tag}>'
            for i, v in enumerate(values)
        )

    head = f"<tr>{cells('th', header)}</tr>" if show_header else ""
    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def add_routes(app: web.Application, upstream: str, metrics: Metrics) -> None:
    """The routes, and the traffic sampler that lives with the app."""
    traffic = Traffic(metrics)
    app.cleanup_ctx.append(traffic.run)
    page = functools.partial(status_page, upstream, traffic)
    app.router.add_get("/_proxy/", page)
    app.router.add_get("/_proxy", page)
    app.router.add_get("/_proxy/usage", usage_json)
    # The rest of /_proxy/ is the proxy's own namespace too: never forwarded upstream.
    app.router.add_route("*", "/_proxy/{tail:.*}", not_found)
