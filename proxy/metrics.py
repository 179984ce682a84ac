"""Prometheus instruments, on the application's own registry (no global default registry)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


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
        self.requests = Counter(
            "aspose_proxy_requests",
            "Requests answered, by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "aspose_proxy_upstream_latency_seconds",
            "Time from sending a request upstream to receiving its response headers.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
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
        self.token_seconds_to_expiry = Gauge(
            "aspose_proxy_token_seconds_to_expiry",
            "Seconds until the current access token expires (0 when none is held).",
            registry=self.registry,
        )
        self._status_counters: dict[int, Counter] = {}

    def count_request(self, status: int) -> None:
        """Count one answered request; the labelled child is looked up once per status."""
        child = self._status_counters.get(status)
        if child is None:
            child = self._status_counters[status] = self.requests.labels(str(status))
        child.inc()

    def watch_calls(self, totals: Callable[[], Mapping[tuple[str, str, str, str], int]]) -> None:
        """``aspose_proxy_calls_total``, read at scrape time from the usage counter's totals.

        The hot path increments one dict entry; the labelled series are built only here.
        """
        self.registry.register(_CallsCollector(totals))

    def answered_totals(self) -> tuple[float, float]:
        """All requests answered so far, and those answered with a status of 400 or more."""
        total = errors = 0.0
        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    total += sample.value
                    if sample.labels.get("status", "0") >= "400":
                        errors += sample.value
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
            "Calls the upstream answered (one per forwarded request, replays included), "
            "by client, product, kind (api or storage) and status class.",
            labels=("client", "product", "kind", "status_class"),
        )
