"""Prometheus metrics in the text exposition format (version 0.0.4), without a client library.

Counters and histograms are declared once with their label names; gauges read a callback at
scrape time. Everything is thread-safe (one lock; updates are a few dict operations).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _escape(value: object) -> str:
    return str(value).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _labels(names: Sequence[str], values: Sequence[object], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    """A registry; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._meta: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {}
        self._values: dict[str, dict[tuple, list[float]]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self._declare(name, "counter", help, labels)

    def histogram(
        self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        self._declare(name, "histogram", help, labels, tuple(sorted(buckets)))

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._declare(name, "gauge", help, ())
        self._gauges[name] = read

    def _declare(self, name, kind, help, labels, buckets=()) -> None:
        if name in self._meta:
            raise ValueError(f"metric {name} is declared twice")
        self._meta[name] = (kind, help, tuple(labels), buckets)
        self._values[name] = {}

    def _slot(self, name: str, labels: dict[str, object], size: int) -> list[float]:
        names = self._meta[name][2]
        if set(labels) != set(names):
            raise ValueError(f"metric {name} takes labels {names}, got {sorted(labels)}")
        key = tuple(str(labels[n]) for n in names)
        return self._values[name].setdefault(key, [0.0] * size)

    def inc(self, name: str, amount: float = 1.0, **labels: object) -> None:
        with self._lock:
            self._slot(name, labels, 1)[0] += amount

    def observe(self, name: str, value: float, **labels: object) -> None:
        """Add ``value`` to a histogram: bucket counts (non-cumulative here), sum, count."""
        buckets = self._meta[name][3]
        with self._lock:
            slot = self._slot(name, labels, len(buckets) + 3)
            slot[bisect.bisect_left(buckets, value)] += 1  # index len(buckets) is +Inf
            slot[-2] += value
            slot[-1] += 1

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, help, names, buckets) in self._meta.items():
                lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
                if kind == "gauge":
                    lines.append(f"{name} {_number(self._gauges[name]())}")
                    continue
                for key, slot in sorted(self._values[name].items()):
                    if kind == "counter":
                        lines.append(f"{name}{_labels(names, key)} {_number(slot[0])}")
                        continue
                    cumulative = 0.0
                    for bound, count in zip((*buckets, math.inf), slot):
                        cumulative += count
                        le = 'le="' + _number(bound) + '"'
                        lines.append(
                            f"{name}_bucket{_labels(names, key, le)} {_number(cumulative)}"
                        )
                    lines.append(f"{name}_sum{_labels(names, key)} {_number(slot[-2])}")
                    lines.append(f"{name}_count{_labels(names, key)} {_number(slot[-1])}")
        return "\n".join(lines) + "\n"


def service_metrics(
    queue_depth: Callable[[], float], cached_adapters: Callable[[], float]
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
    m.histogram("hypergen_batch_size", "Jobs (prompts) per batched forward pass.", BATCH_BUCKETS)
    m.histogram(
        "hypergen_batch_duration_seconds",
        "Time to run one batch, prefill to last token.",
        LATENCY_BUCKETS,
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
    m.gauge(
        "hypergen_adapter_cache_entries", "Adapters held in the in-memory LRU.", cached_adapters
    )
    return m
