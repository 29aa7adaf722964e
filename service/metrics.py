"""Prometheus metrics through ``prometheus_client``, one registry per app.

Each app (``service.runtime.Runtime``) gets its own ``CollectorRegistry``, so two apps in one
process (tests, a benchmark beside a server) never share or double-register series. ``Metrics``
is a thin by-name front: call sites say ``metrics.inc("hypergen_tokens_total", n, kind="prompt")``
and the names stay declared in one place (``service_metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    exposition,
    generate_latest,
)

# generate_latest writes the 0.0.4 text format; newer clients name a later default content type
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """A per-app registry of named metrics; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self._metrics: dict[str, Counter | Histogram] = {}

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self._add(name, Counter(name, help, tuple(labels), registry=self.registry))

    def histogram(
        self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        metric = Histogram(name, help, tuple(labels), buckets=buckets, registry=self.registry)
        self._add(name, metric)

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A gauge whose value is read by ``read()`` at scrape time."""
        Gauge(name, help, registry=self.registry).set_function(read)

    def _add(self, name: str, metric: Counter | Histogram) -> None:
        if name in self._metrics:
            raise ValueError(f"metric {name} is declared twice")
        self._metrics[name] = metric

    def _child(self, name: str, labels: dict[str, object]):
        metric = self._metrics[name]
        return metric.labels(**{k: str(v) for k, v in labels.items()}) if labels else metric

    def inc(self, name: str, amount: float = 1.0, **labels: object) -> None:
        self._child(name, labels).inc(amount)

    def observe(self, name: str, value: float, **labels: object) -> None:
        self._child(name, labels).observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def service_metrics(
    queue_depth: Callable[[], float],
    cached_adapters: Callable[[], float],
    running_jobs: Callable[[], float] = lambda: 0,
) -> Metrics:
    """The service's metrics (names are part of the API: see the README)."""
    m = Metrics()
    m.counter(
        "hypergen_requests_total",
        "HTTP requests by route, method and status.",
        ("route", "method", "status"),
    )
    m.histogram(
        "hypergen_request_duration_seconds",
        "HTTP request latency by route.",
        LATENCY_BUCKETS,
        ("route",),
    )
    m.histogram(
        "hypergen_batch_size",
        "Jobs (prompts) per batch (window batching) or per decode step (continuous batching).",
        BATCH_BUCKETS,
    )
    m.histogram(
        "hypergen_batch_duration_seconds",
        "Time to run one batch, prefill to last token (window batching), or one decode step "
        "with the prefill of the jobs joining at it (continuous batching).",
        LATENCY_BUCKETS,
    )
    m.histogram(
        "hypergen_prefill_size",
        "Jobs per prefill: a batch's start, or jobs joining a running batch.",
        BATCH_BUCKETS,
    )
    m.counter(
        "hypergen_adapter_lookups_total",
        "Adapters resolved for requests, by source: memory (LRU hit), store (disk hit) or generated (miss).",
        ("source",),
    )
    m.counter(
        "hypergen_tokens_total", "Tokens processed, by kind (prompt or completion).", ("kind",)
    )
    m.gauge("hypergen_queue_jobs", "Jobs waiting for a batch.", queue_depth)
    m.gauge("hypergen_running_jobs", "Jobs decoding now.", running_jobs)
    m.gauge(
        "hypergen_adapter_cache_entries", "Adapters held in the in-memory LRU.", cached_adapters
    )
    return m
