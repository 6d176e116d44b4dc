"""Console pages: server-rendered HTML (Jinja), charts drawn by plotly.js from JSON in the page."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, redirect, render_template, request, send_file, url_for
from flask.typing import ResponseReturnValue

from analytics import queries
from analytics.console import charts, data
from analytics.console.session import safe_next, sign_in, sign_out, signed_in
from chargewatch.alerts import AlertPolicy
from chargewatch.efficiency_ports import EfficiencyStores
from chargewatch.pairing import PairingRegistry
from chargewatch.readings import DEVICE_ID_PATTERN
from chargewatch.settings import Settings
from webapi.schemas import from_ms

bp = Blueprint("console", __name__, template_folder="templates", static_folder="static",
               static_url_path="/console/static")

PRESET_HOURS = (1, 6, 24, 72, 168, 720)
PER_PAGE = 50
STATUSES = ("low", "above_one", "ok", "no_data")
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


class PageError(ValueError):
    """A parameter the page cannot use; shown on the page with a 400."""


def _settings() -> Settings:
    return current_app.extensions["chargewatch_settings"]


def _stores() -> EfficiencyStores:
    return current_app.extensions["efficiency_stores"]


def _policy() -> AlertPolicy:
    return current_app.extensions["alert_policy"]


def _window_ms() -> int:
    return _settings().efficiency.window_seconds * 1000


def _parse_time(name: str) -> datetime | None:
    """A ``datetime-local`` value (taken as UTC) or RFC 3339 with an offset."""
    value = request.args.get(name, "").strip()
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PageError(f"{name} must be a date and time such as 2026-11-23T06:00 (UTC)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _period() -> tuple[queries.Period, dict[str, str]]:
    """The page's period and the query arguments that name it (kept in every link). Without
    ``start``/``stop``: the last ``hours`` (24) up to the newest computed window, as the API does."""
    start, stop = _parse_time("start"), _parse_time("stop")
    if start is None and stop is None:
        try:
            hours = int(request.args.get("hours", 24))
        except ValueError:
            hours = 0
        if hours not in PRESET_HOURS:
            raise PageError(f"hours is one of {', '.join(map(str, PRESET_HOURS))}")
        state = _stores().runner_state.load()
        now = data.now_ms()
        stop_ms = min(now, int(state["last_stop_ms"])) if "last_stop_ms" in state else now
        period = queries.Period.aligned(stop_ms - hours * 3_600_000, stop_ms, _window_ms())
        return period, ({} if hours == 24 else {"hours": str(hours)})
    if start is None or stop is None:
        raise PageError("give both start and stop, or neither")
    if start >= stop:
        raise PageError("start must be before stop")
    if stop - start > timedelta(days=_settings().retention_days + 1):
        raise PageError(f"the period may span at most {_settings().retention_days} days")
    period = queries.Period.aligned(int(start.timestamp() * 1000), int(stop.timestamp() * 1000), _window_ms())
    if period.end_ms <= period.start_ms:
        raise PageError("the period must hold at least one whole window")
    return period, {"start": request.args["start"], "stop": request.args["stop"]}


def _error_page(message: str) -> tuple[str, int]:
    return render_template("console/error.html", message=message), 400


def _period_context(period: queries.Period, args: dict[str, str]) -> dict[str, Any]:
    return {
        "period": period, "period_args": args, "presets": PRESET_HOURS,
        "hours": int(args.get("hours", 24)) if "start" not in args else None,
        "start_value": _local(period.start_ms), "stop_value": _local(period.end_ms),
    }


def _local(ms: int) -> str:
    return from_ms(ms).strftime("%Y-%m-%dT%H:%M")


@bp.app_template_filter("utc")
def _utc(ms: int | None) -> str:
    return "" if ms is None else from_ms(ms).strftime("%Y-%m-%d %H:%M UTC")


@bp.app_template_filter("iso")
def _iso(ms: int | None) -> str:
    return "" if ms is None else from_ms(ms).isoformat().replace("+00:00", "Z")


@bp.app_template_filter("pct")
def _pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.1f} %"


@bp.app_template_filter("kwh")
def _kwh(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f} kWh"


@bp.app_context_processor
def _helpers() -> dict[str, Any]:
    def link(endpoint: str, args: dict[str, str] | None = None, **values: Any) -> str:
        base = url_for(endpoint, **values)
        query = {k: v for k, v in (args or {}).items() if v not in (None, "")}
        return base + ("?" + urlencode(query) if query else "")

    return {"link": link, "auth_enabled": current_app.extensions["chargewatch_tokens"] is not None,
            "status_labels": {"low": "below threshold", "above_one": "above 100 %", "ok": "ok",
                              "no_data": "not enough data"}}


@bp.after_request
def _headers(response: Response) -> Response:
    # plotly.js inserts <style> elements, hence 'unsafe-inline' for styles only; no inline scripts.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


# -- sign-in ---------------------------------------------------------------------------------


@bp.get("/")
def root() -> ResponseReturnValue:
    return redirect(url_for("console.fleet"))


@bp.get("/favicon.ico")
def favicon() -> Response:
    return Response(status=204)  # browsers ask for one; the console has none


@bp.get("/console/")
def home() -> ResponseReturnValue:
    return redirect(url_for("console.fleet"))


@bp.get("/console/sign-in")
def sign_in_form() -> str:
    return render_template("console/sign_in.html", next=safe_next(request.args.get("next")), failed=False)


@bp.post("/console/sign-in")
def sign_in_submit() -> ResponseReturnValue:
    target = safe_next(request.form.get("next"))
    if sign_in(request.form.get("token", "").strip()):
        return redirect(target, code=303)
    return render_template("console/sign_in.html", next=target, failed=True), 401


@bp.post("/console/sign-out")
def sign_out_submit() -> ResponseReturnValue:
    sign_out()
    return redirect(url_for("console.sign_in_form"), code=303)


@bp.get("/console/assets/plotly.min.js")
def plotly_js() -> Response:
    """plotly.js from the installed ``plotly`` package (pinned in pyproject.toml)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return send_file(path, mimetype="text/javascript", max_age=86_400)


# -- pages -----------------------------------------------------------------------------------


@bp.get("/console/fleet")
@signed_in
def fleet() -> str | tuple[str, int]:
    try:
        period, args = _period()
        status = request.args.get("status", "")
        if status and status not in STATUSES:
            raise PageError(f"status is one of {', '.join(STATUSES)}")
        try:
            page = int(request.args.get("page", 1))
        except ValueError:
            page = 0
        if page < 1:
            raise PageError("page is a whole number from 1")
    except PageError as err:
        return _error_page(str(err))
    search = request.args.get("q", "")[:64]
    overview = data.fleet_overview(_stores(), period, _window_ms(), _policy(), search=search, status=status,
                                   page=page, per_page=PER_PAGE)
    pages = max(1, math.ceil(overview.matching / PER_PAGE))
    filters = {**args, "q": search, "status": status}
    return render_template(
        "console/fleet.html", overview=overview, search=search, status=status, statuses=STATUSES, page=page,
        pages=pages, per_page=PER_PAGE, filters=filters, threshold=_policy().threshold,
        chart=charts.fleet_timeline(overview.timeline, _policy().threshold),
        **_period_context(period, args))


@bp.get("/console/vehicles/<vehicle_id>")
@signed_in
def vehicle(vehicle_id: str) -> str | tuple[str, int]:
    if not _DEVICE_ID.fullmatch(vehicle_id):
        return _error_page("a vehicle id is 1-64 characters of A-Z a-z 0-9 . _ : -")
    try:
        period, args = _period()
    except PageError as err:
        return _error_page(str(err))
    registry: PairingRegistry = current_app.extensions["pairing_registry"]
    pairings = registry.current()
    detail = data.vehicle_detail(
        _stores(), current_app.extensions["console_reading_store"], vehicle_id, period, _window_ms(), _policy(),
        pairings.meter_for(vehicle_id), pairings.source_of(vehicle_id))
    policy = _policy()
    return render_template(
        "console/vehicle.html", vehicle_id=vehicle_id, detail=detail, threshold=policy.threshold,
        span_minutes=policy.span_ms // 60_000,
        energy_chart=charts.vehicle_energy(detail, period),
        efficiency_chart=charts.vehicle_efficiency(detail, period, policy),
        battery_chart=charts.vehicle_battery(detail, period),
        **_period_context(period, args))


@bp.get("/console/alerts")
@signed_in
def alerts() -> str | tuple[str, int]:
    try:
        hours = int(request.args.get("hours", 24))
    except ValueError:
        hours = 0
    if not 1 <= hours <= 24 * 31:
        return _error_page("hours is a whole number from 1 to 744")
    alert_store = _stores().alerts
    open_alerts = alert_store.open_alerts()
    since_ms = data.now_ms() - hours * 3_600_000
    recent = [a for a in alert_store.recent_alerts(since_ms, limit=1000) if a.state != "firing"]
    return render_template("console/alerts.html", hours=hours, hour_choices=(1, 6, 24, 72, 168, 744),
                           firing=[a for a in open_alerts if a.state == "firing"],
                           pending=[a for a in open_alerts if a.state == "pending"], recent=recent)


@bp.get("/console/health")
@signed_in
def health() -> str:
    settings = _settings()
    outbox = current_app.extensions.get("console_outbox")
    report = data.ingest_health(
        _stores(), current_app.extensions["console_reading_store"], settings.data_dir / "metrics" / "ingest",
        settings.efficiency.window_seconds, settings.efficiency.offset_seconds, data.now_ms(), outbox)
    return render_template("console/health.html", health=report, store_kind=settings.store,
                           chart=charts.readings_per_minute(report.per_minute), now_ms=data.now_ms())
