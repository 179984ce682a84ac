"""Prometheus instruments, on the application's own registry (no global default registry)."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Every instrument the proxy exports; one instance per application."""

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # `labels` (a worker's pid) are added to every sample when it is rendered, not per
        # request: the workers of `run --workers N` each answer /metrics for themselves.
        self._exposed = self.registry
        self.per_worker = bool(labels)
        if labels:
            self._exposed = CollectorRegistry(auto_describe=False)
            self._exposed.register(_Labelled(self.registry, dict(labels)))
        # The two instruments every request touches are plain numbers on the hot path (a dict
        # entry, a bucket index); prometheus-client renders them at scrape time, as it does
        # the usage totals. Its own Counter and Histogram take a lock per update (~8k
        # instructions per small request, issue 11).
        self._answered: dict[int, int] = {}
        self._latency = _LatencyHistogram(LATENCY_BUCKETS)
        self.registry.register(_AnsweredCollector(self._answered))
        self.registry.register(self._latency)
        self.observe_upstream_latency = self._latency.observe
        self.token_fetches = Counter(
            "aspose_proxy_token_fetches",
            "Token requests to the Aspose token endpoint, by result (ok, rejected, error).",
            ["result"],
            registry=self.registry,
        )
        self.replays = Counter(
            "aspose_proxy_replays",
            "Requests replayed with a renewed token after upstream answered 401.",
            registry=self.registry,
        )
        self.stale_connections = Counter(
            "aspose_proxy_upstream_stale_connection",
            "Upstream connections that broke before any response header, by outcome: retried "
            "(idempotent method, resent once on a fresh connection) or failed (answered 502).",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "aspose_proxy_errors",
            "Answers the proxy made itself (not upstream's), by status and error code: refused "
            "clients (401, 403, 421, 429), unreachable upstream, no token, ...",
            ["status", "code"],
            registry=self.registry,
        )
        self._error_counters: dict[str, Counter] = {}
        self.client_auth_failures = Counter(
            "aspose_proxy_client_auth_failures",
            "Wrong client credentials, by credential: access_key (X-Proxy-Key), bearer_token "
            "(a local client's token) or client_secret (at the local token endpoint).",
            ["credential"],
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "aspose_proxy_connections_refused",
            "Connections closed as soon as they were accepted, by the cap they would have "
            "passed: max_connections (this process) or max_connections_per_client.",
            ["limit"],
            registry=self.registry,
        )
        self.token_seconds_to_expiry = Gauge(
            "aspose_proxy_token_seconds_to_expiry",
            "Seconds until the current access token expires (0 when none is held).",
            registry=self.registry,
        )

    def count_request(self, status: int) -> None:
        """Count one answered request."""
        answered = self._answered
        answered[status] = answered.get(status, 0) + 1

    def watch_calls(self, totals: Callable[[], Mapping[tuple[str, str, str, str], int]]) -> None:
        """``aspose_proxy_calls_total``, read at scrape time from the usage counter's totals.

        The hot path increments one dict entry; the labelled series are built only here.
        """
        self.registry.register(_CallsCollector(totals))

    def answered_totals(self) -> tuple[float, float]:
        """All requests answered so far, and those answered with a status of 400 or more."""
        answered = dict(self._answered)
        total = float(sum(answered.values()))
        errors = float(sum(n for status, n in answered.items() if status >= 400))
        return total, errors

    def watch_token_expiry(self, seconds_left: Callable[[], float]) -> None:
        """Compute the expiry gauge at scrape time, not per request."""
        self.token_seconds_to_expiry.set_function(seconds_left)

    def count_error(self, status: int, code: str) -> None:
        """Count one answer the proxy made itself (only on the error path)."""
        child = self._error_counters.get(code)
        if child is None:
            child = self._error_counters[code] = self.errors.labels(str(status), code)
        child.inc()

    def count_auth_failure(self, credential: str) -> None:
        """One failed client authentication (only on the refusal path)."""
        self.client_auth_failures.labels(credential).inc()

    def count_refused_connection(self, limit: str) -> None:
        """One connection closed at accept by a connection cap (only on the refusal path)."""
        self.connections_refused.labels(limit).inc()

    def render(self) -> bytes:
        return generate_latest(self._exposed)


class _Labelled(Collector):
    """Another registry's samples with constant labels added, at scrape time."""

    def __init__(self, inner: CollectorRegistry, labels: dict[str, str]) -> None:
        self._inner = inner
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            family.samples = [
                sample._replace(labels={**sample.labels, **self._labels})
                for sample in family.samples
            ]
            yield family


class _AnsweredCollector(Collector):
    """``aspose_proxy_requests_total{status}`` from the per-status counts."""

    def __init__(self, answered: dict[int, int]) -> None:
        self._answered = answered

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for status, value in sorted(self._answered.items()):
            family.add_metric((str(status),), value)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "aspose_proxy_requests", "Requests answered, by HTTP status.", labels=("status",)
        )


class _LatencyHistogram(Collector):
    """``aspose_proxy_upstream_latency_seconds``: one bucket count and a sum per observation,
    made cumulative when scraped."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self._bounds, seconds)] += 1  # le: bound >= value
        self._sum += seconds

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield self._family([], 0.0)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self._bounds, math.inf), self._counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        yield self._family(cumulative, self._sum)

    @staticmethod
    def _family(buckets: list[tuple[str, float]], total: float) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "aspose_proxy_upstream_latency_seconds",
            "Time from sending a request upstream to receiving its response headers.",
        )
        if buckets:
            family.add_metric([], buckets, total)
        return family


class _CallsCollector(Collector):
    """Calls upstream answered, by client, product, kind and status class (bounded values)."""

    def __init__(self, totals: Callable[[], Mapping[tuple[str, str, str, str], int]]) -> None:
        self._totals = totals

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for labels, value in sorted(self._totals().items()):
            family.add_metric(labels, value)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "aspose_proxy_calls",
            "Calls sent upstream, answered or not (one per forwarded request, replays included), "
            "by client, product, kind (api or storage) and status class.",
            labels=("client", "product", "kind", "status_class"),
        )
