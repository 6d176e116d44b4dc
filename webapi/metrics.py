"""Prometheus metrics shared by the services.

Under gunicorn every worker is a process, so the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before any
worker starts and ``/metrics`` aggregates all workers' files (prometheus_client's multiprocess
mode). Without it (tests, a single process) the default registry is served.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from flask import Flask, Response, g
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from webapi.current import current_request

READINGS_ACCEPTED = Counter(
    "chargewatch_readings_accepted_total", "Valid readings taken in (stored, duplicate or conflicting).", ["kind"]
)
READINGS_DUPLICATE = Counter(
    "chargewatch_readings_duplicate_total", "Valid readings already stored with the same values (device retries)."
)
READINGS_CONFLICTING = Counter(
    "chargewatch_readings_conflicting_total",
    "Valid readings whose device and timestamp were already stored with other values (the first copy is kept).",
)
READINGS_UNPAIRED = Counter(
    "chargewatch_readings_unpaired_total", "Readings stored without a paired device.", ["kind"]
)
READINGS_REJECTED = Counter(
    "chargewatch_readings_rejected_total", "Readings refused, by reason (the first error's type).", ["reason"]
)
REQUEST_SECONDS = Histogram(
    "chargewatch_http_request_duration_seconds",
    "Time from request start to response, by route.",
    ["service", "route", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: MetricWrapperBase, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once per process and label values: the child it
    returns is the same object every time, and ``labels()`` takes a lock and checks the values."""
    key = (id(metric), values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child


def instrument(app: Flask, service: str) -> None:
    """Record every request's latency under its route template (bounded label values)."""

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            req = current_request()
            route = req.url_rule.rule if req.url_rule is not None else "unmatched"
            labelled(REQUEST_SECONDS, service, route, req.method, str(response.status_code)).observe(
                time.perf_counter() - started
            )
        return response


def render_metrics(collectors: Sequence[Collector] = ()) -> Response:
    """The exposition of every worker's metrics plus ``collectors`` (values computed at scrape time)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_DefaultMetrics())
    for collector in collectors:
        registry.register(collector)
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class _DefaultMetrics(Collector):
    """The process-global registry's metrics, served through a per-request registry."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()
