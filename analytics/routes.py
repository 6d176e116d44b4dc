"""Analytics HTTP routes (read scope)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from flask import Blueprint, Response, current_app, jsonify, request

from analytics import queries
from analytics.schemas import AlertBody, AlertList, FleetSummaryBody, PerformanceBody, SeriesBody, WindowBody
from chargewatch.alerts import AlertPolicy
from chargewatch.efficiency_ports import EfficiencyStores
from chargewatch.pairing import PairingRegistry
from chargewatch.readings import DEVICE_ID, parse_timestamp
from chargewatch.settings import Settings
from webapi.auth import require
from webapi.errors import ApiError
from webapi.schemas import from_ms

bp = Blueprint("analytics", __name__)

# Windows are stored as epoch milliseconds; outside these bounds a period cannot hold any, and near
# the calendar's ends the period arithmetic would overflow.
_EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)


def _stores() -> EfficiencyStores:
    return current_app.extensions["efficiency_stores"]


def _settings() -> Settings:
    return current_app.extensions["chargewatch_settings"]


def _policy() -> AlertPolicy:
    return current_app.extensions["alert_policy"]


def _window_ms() -> int:
    return _settings().efficiency.window_seconds * 1000


def _time_param(name: str) -> datetime | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        moment = parse_timestamp(value)
    except ValueError as err:
        raise ApiError(400, "invalid_parameter",
                       f"{name} must be RFC 3339 with an offset, e.g. 2026-11-23T00:00:00Z ({err})") from None
    if not _EARLIEST <= moment < _LATEST:
        raise ApiError(400, "invalid_parameter", f"{name} must be from {_EARLIEST:%Y-%m-%dT%H:%M:%SZ} "
                       f"and before {_LATEST:%Y-%m-%dT%H:%M:%SZ}")
    return moment


def _period(default_hours: int = 24) -> queries.Period:
    """?start=&stop= (RFC 3339); stop defaults to now, start to ``default_hours`` before stop."""
    stop = _time_param("stop")
    start = _time_param("start")
    if stop is None:
        # Up to the newest window the task runner has computed: a window that closed seconds ago
        # is not counted half-done.
        state = _stores().runner_state.load()
        now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
        stop_ms = min(now_ms, int(state["last_stop_ms"])) if "last_stop_ms" in state else now_ms
        stop = from_ms(stop_ms)
    start = start or stop - timedelta(hours=default_hours)
    if start >= stop:
        raise ApiError(400, "invalid_parameter", "start must be before stop")
    if stop - start > timedelta(days=_settings().retention_days):
        raise ApiError(400, "invalid_parameter", f"the period may span at most {_settings().retention_days} days")
    return queries.Period.aligned(int(start.timestamp() * 1000), int(stop.timestamp() * 1000), _window_ms())


def _vehicle(vehicle_id: str) -> str:
    if not DEVICE_ID.fullmatch(vehicle_id):
        raise ApiError(400, "invalid_device_id", "a vehicle id is 1-64 characters of [A-Za-z0-9._:-]")
    return vehicle_id


def _int_param(name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, "invalid_parameter", f"{name} is a whole number from {low} to {high}")
    return value


@bp.get("/v1/analytics/performance/<vehicle_id>")
@require("read")
def performance(vehicle_id: str) -> Response:
    report = queries.performance_report(_stores().windows, _vehicle(vehicle_id), _period(), _window_ms(), _policy())
    pairings: PairingRegistry = current_app.extensions["pairing_registry"]
    body = PerformanceBody.of(report, pairings.current().meter_for(vehicle_id), _policy().threshold,
                              _settings().efficiency.window_seconds)
    return jsonify(body.model_dump(mode="json"))


@bp.get("/v1/analytics/fleet/summary")
@require("read")
def fleet_summary() -> Response:
    worst = _int_param("worst", 10, 1, 1000)
    summary = queries.fleet_summary(_stores().windows, _period(), _window_ms(), _policy(), worst)
    active = _stores().alerts.firing_count()
    return jsonify(FleetSummaryBody.of(summary, _policy().threshold, active).model_dump(mode="json"))


@bp.get("/v1/analytics/efficiency/<vehicle_id>")
@require("read")
def efficiency_series(vehicle_id: str) -> Response:
    period = _period()
    windows = queries.efficiency_series(_stores().windows, _vehicle(vehicle_id), period, _window_ms())
    body = SeriesBody(vehicle_id=vehicle_id, period_start=from_ms(period.start_ms), period_end=from_ms(period.end_ms),
                      window_seconds=_settings().efficiency.window_seconds, windows=[WindowBody.of(w) for w in windows])
    return jsonify(body.model_dump(mode="json"))


@bp.get("/v1/analytics/alerts")
@require("read")
def alerts() -> Response:
    state = request.args.get("state", "active")
    if state not in ("active", "recent"):
        raise ApiError(400, "invalid_parameter", "state is active (firing now) or recent (firing, or resolved lately)")
    hours = _int_param("hours", 24, 1, 24 * 31)
    since_ms = int((time.time() - hours * 3600) * 1000)
    records = queries.list_alerts(_stores().alerts, since_ms, active_only=state == "active")
    return jsonify(AlertList(alerts=[AlertBody.of(r) for r in records]).model_dump(mode="json"))
