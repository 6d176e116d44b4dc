"""Operational endpoints every service has: /health, /ready, /metrics, /openapi.json."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from webapi.metrics import render_metrics
from webapi.openapi import Operation


class HealthBody(BaseModel):
    status: str = Field(description="ok, or unavailable (with 503) when a check fails")
    service: str
    checks: dict[str, str] = Field(default_factory=dict, description="check name -> ok or why it failed")
    details: dict[str, Any] = Field(default_factory=dict, description="service-specific status, e.g. taskRunner")


def ops_blueprint(service: str, openapi: Callable[[], dict[str, Any]],
                  readiness_checks: dict[str, Callable[[], None]],
                  health_details: Callable[[], dict[str, Any]] | None = None,
                  collectors: Sequence[Collector] = ()) -> Blueprint:
    """``readiness_checks`` raise an exception when the service cannot take traffic;
    ``health_details`` adds to /health; ``collectors`` add to /metrics."""
    blueprint = Blueprint(f"{service}_ops", __name__)
    document: dict[str, Any] = {}

    @blueprint.get("/health")
    def health() -> Response:
        details = health_details() if health_details else {}
        return jsonify(HealthBody(status="ok", service=service, details=details).model_dump())

    @blueprint.get("/ready")
    def ready() -> Response | tuple[Response, int]:
        checks: dict[str, str] = {}
        for name, check in readiness_checks.items():
            try:
                check()
                checks[name] = "ok"
            except Exception as err:  # a failing check is reported, not raised
                checks[name] = f"{type(err).__name__}: {err}"
        healthy = all(value == "ok" for value in checks.values())
        body = HealthBody(status="ok" if healthy else "unavailable", service=service, checks=checks)
        return jsonify(body.model_dump()), 200 if healthy else 503

    @blueprint.get("/metrics")
    def metrics() -> Response:
        return render_metrics(collectors)

    @blueprint.get("/openapi.json")
    def openapi_json() -> Response:
        if not document:
            document.update(openapi())
        return jsonify(document)

    return blueprint


OPS_OPERATIONS = [
    Operation("GET", "/health", "Liveness: the process answers", responses={200: (HealthBody, "alive")}),
    Operation("GET", "/ready", "Readiness: the store answers",
              responses={200: (HealthBody, "ready"), 503: (HealthBody, "not ready; checks say why")}),
    Operation("GET", "/metrics", "Prometheus metrics (text exposition format)",
              responses={200: (None, "metrics")}),
    Operation("GET", "/openapi.json", "This document", responses={200: (None, "OpenAPI 3.1")}),
]
