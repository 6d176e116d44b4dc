"""What the console's pages show, as plain values: computed from the same store methods and the
same ``analytics.queries`` functions as the API, so a page shows the numbers the API gives. No HTTP
here."""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analytics import queries
from analytics.schemas import TaskRunnerBody
from analytics.status import runner_status
from chargewatch.alerts import AlertPolicy, lookback_ms, span_verdict
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.efficiency_ports import AlertRecord, EfficiencyStores
from chargewatch.stores import Kind, ReadingStore

STATUS_ORDER = {"low": 0, "above_one": 1, "ok": 2, "no_data": 3}


@dataclass(frozen=True)
class VehicleRow:
    """One vehicle's line in the fleet overview."""

    vehicle_id: str
    efficiency: float | None
    status: str
    ac_kwh: float
    dc_kwh: float
    alert: AlertRecord | None  # its open low_efficiency / above_one alert, if any

    @property
    def lost_kwh(self) -> float:
        """AC drawn minus DC delivered: the energy lost between grid and battery."""
        return self.ac_kwh - self.dc_kwh


@dataclass(frozen=True)
class FleetOverview:
    period: queries.Period
    rows: list[VehicleRow]  # this page only
    matching: int  # rows that pass the filter, over every page
    vehicles: int
    below_threshold: int
    above_one: int
    active_alerts: int
    ac_kwh: float
    dc_kwh: float
    efficiency: float | None
    timeline: list[tuple[int, float | None, float, float]]  # (hour stop ms, efficiency, ac, dc)

    @property
    def lost_kwh(self) -> float:
        return self.ac_kwh - self.dc_kwh


def fleet_overview(stores: EfficiencyStores, period: queries.Period, window_ms: int, policy: AlertPolicy,
                   *, search: str = "", status: str = "", page: int = 1, per_page: int = 50) -> FleetOverview:
    """Every vehicle with a window in the period, worst first: below threshold by efficiency, then
    above one, then ok, then those with too little AC energy for a verdict. ``search`` keeps ids
    containing it (case-insensitive), ``status`` one status."""
    totals = stores.windows.vehicle_totals(window_ms, period.start_ms, period.end_ms)
    open_alerts: dict[str, AlertRecord] = {}
    for alert in stores.alerts.open_alerts():
        if alert.state == "firing" or alert.vehicle_id not in open_alerts:
            open_alerts[alert.vehicle_id] = alert
    rows = []
    below = above = 0
    for vehicle_id, t in totals.items():
        efficiency = t.dc_kwh / t.ac_kwh if t.ac_kwh > 0 else None
        verdict = queries.classify(efficiency, t.ac_kwh, policy)
        below += verdict == "low"
        above += verdict == "above_one"
        rows.append(VehicleRow(vehicle_id, efficiency, verdict, t.ac_kwh, t.dc_kwh, open_alerts.get(vehicle_id)))
    needle = search.strip().lower()
    matching = [r for r in rows
                if (not needle or needle in r.vehicle_id.lower()) and (not status or r.status == status)]
    matching.sort(key=lambda r: (STATUS_ORDER[r.status], r.efficiency if r.efficiency is not None else math.inf,
                                 r.vehicle_id))
    first = (page - 1) * per_page
    ac = math.fsum(t.ac_kwh for t in totals.values())
    dc = math.fsum(t.dc_kwh for t in totals.values())
    return FleetOverview(
        period=period, rows=matching[first:first + per_page], matching=len(matching), vehicles=len(totals),
        below_threshold=below, above_one=above,
        active_alerts=sum(1 for a in open_alerts.values() if a.state == "firing"),
        ac_kwh=ac, dc_kwh=dc, efficiency=dc / ac if ac > 0 else None,
        timeline=fleet_timeline(stores, period, window_ms),
    )


def fleet_timeline(stores: EfficiencyStores, period: queries.Period, window_ms: int
                   ) -> list[tuple[int, float | None, float, float]]:
    """Fleet efficiency per hour of the period (partial hours at the ends included), as
    (hour stop ms, DC/AC or None, AC kWh, DC kWh); hours without windows are left out."""
    return [(stop, dc / ac if ac > 0 else None, ac, dc)
            for stop, ac, dc in stores.windows.fleet_hourly_energy(window_ms, period.start_ms, period.end_ms)]


@dataclass(frozen=True)
class VehicleDetail:
    report: queries.PerformanceReport
    windows: list[EfficiencyWindow]
    judged: list[tuple[int, float | None]]  # (window stop ms, the efficiency the alert rules judged there)
    soc: list[tuple[int, float]]  # (reading time ms, %)
    battery_temp: list[tuple[int, float]]  # (window stop ms, mean deg C)
    meter_id: str | None
    pairing_source: str | None
    meter_history: list[tuple[str | None, int, int]]  # (meter, first window stop, last window stop)
    alerts: list[AlertRecord]


def vehicle_detail(stores: EfficiencyStores, readings: ReadingStore, vehicle_id: str,
                   period: queries.Period, window_ms: int, policy: AlertPolicy, meter_id: str | None,
                   pairing_source: str | None, max_points: int = 2000) -> VehicleDetail:
    """Everything the vehicle page draws. SoC comes from the reading history (thinned to at most
    ``max_points``); the rest from the efficiency windows."""
    report = queries.performance_report(stores.windows, vehicle_id, period, window_ms, policy)
    windows = queries.efficiency_series(stores.windows, vehicle_id, period, window_ms)
    history = [r for r in readings.history("vehicle", vehicle_id, period.start_ms, period.end_ms)
               if "soc" in r.values]
    step = max(1, math.ceil(len(history) / max_points))
    alerts = [a for a in stores.alerts.recent_alerts(period.start_ms, limit=10_000) if a.vehicle_id == vehicle_id]
    alerts += [a for a in stores.alerts.open_alerts() if a.vehicle_id == vehicle_id and a.state == "pending"]
    alerts = [a for a in alerts if a.started_ms <= period.end_ms]
    alerts.sort(key=lambda a: a.started_ms, reverse=True)
    return VehicleDetail(
        report=report, windows=windows,
        judged=judged_efficiency(stores, vehicle_id, period, window_ms, policy),
        soc=[(r.time_ms, r.values["soc"]) for r in history[::step]],
        battery_temp=[(w.stop_ms, w.avg_battery_temp) for w in windows if w.avg_battery_temp is not None],
        meter_id=meter_id, pairing_source=pairing_source, meter_history=meter_segments(windows), alerts=alerts,
    )


def judged_efficiency(stores: EfficiencyStores, vehicle_id: str, period: queries.Period, window_ms: int,
                      policy: AlertPolicy) -> list[tuple[int, float | None]]:
    """The efficiency the alert rules judge at each window stop of the period (the span placed at
    session edges, lost readings made up: ``chargewatch.alerts.span_verdict``); None where they
    give no verdict (idle, too little energy). The line an alert fires on, unlike a plain trailing
    ratio, which swings past 100 % and 0 % at every session edge."""
    lookback = lookback_ms(policy) + window_ms
    windows = stores.windows.windows(window_ms, period.start_ms - lookback, period.end_ms, vehicle_id)
    stops = [w.stop_ms for w in windows]
    judged = []
    for stop in sorted({s for s in stops if s > period.start_ms}):
        recent = windows[bisect.bisect_right(stops, stop - lookback):bisect.bisect_right(stops, stop)]
        judged.append((stop, span_verdict(vehicle_id, recent, stop, window_ms, policy).efficiency))
    return judged


def meter_segments(windows: list[EfficiencyWindow]) -> list[tuple[str | None, int, int]]:
    """Runs of consecutive windows paired with the same meter (None: unpaired), oldest first."""
    segments: list[tuple[str | None, int, int]] = []
    for w in windows:
        if segments and segments[-1][0] == w.meter_id:
            segments[-1] = (w.meter_id, segments[-1][1], w.stop_ms)
        else:
            segments.append((w.meter_id, w.stop_ms, w.stop_ms))
    return segments


@dataclass(frozen=True)
class IngestHealth:
    runner: TaskRunnerBody
    per_minute: dict[str, list[tuple[int, int]]]  # kind -> (minute start ms, readings stored)
    accepted: dict[str, float]  # kind -> readings accepted since ingest started
    duplicates: float
    unpaired: dict[str, float]
    rejected: dict[str, float]  # reason -> readings
    ingest_metrics_found: bool
    outbox: Any | None = None  # OutboxStats in influx mode
    notifications: dict[str, int] = field(default_factory=dict)


def ingest_health(stores: EfficiencyStores, readings: ReadingStore, metrics_dir: Path,
                  window_seconds: int, offset_seconds: int, now_ms: int, outbox: Any | None = None,
                  minutes: int = 60) -> IngestHealth:
    """Readings stored per minute (by reading time) over the last ``minutes``, ingest's counters since
    it started (from its Prometheus files), the task runner, and the outbox in influx mode."""
    counters = ingest_counters(metrics_dir)
    return IngestHealth(
        runner=runner_status(stores.runner_state, window_seconds, offset_seconds, now=now_ms / 1000),
        per_minute=readings_per_minute(readings, now_ms, minutes),
        accepted=counters.get("chargewatch_readings_accepted_total", {}),
        duplicates=sum(counters.get("chargewatch_readings_duplicate_total", {}).values()),
        unpaired=counters.get("chargewatch_readings_unpaired_total", {}),
        rejected=counters.get("chargewatch_readings_rejected_total", {}),
        ingest_metrics_found=metrics_dir.is_dir() and any(metrics_dir.glob("*.db")),
        outbox=outbox.stats() if outbox is not None else None,
        notifications=stores.notifications.notification_counts(),
    )


def readings_per_minute(readings: ReadingStore, now_ms: int, minutes: int) -> dict[str, list[tuple[int, int]]]:
    """Readings in the history per minute of reading time, the last ``minutes`` whole minutes."""
    end = now_ms // 60_000 * 60_000
    start = end - minutes * 60_000
    result: dict[str, list[tuple[int, int]]] = {}
    kinds: tuple[Kind, ...] = ("meter", "vehicle")
    for kind in kinds:
        counts = readings.count_by_minute(kind, start, end)
        result[kind] = [(m, counts.get(m, 0)) for m in range(start, end, 60_000)]
    return result


def ingest_counters(metrics_dir: Path) -> dict[str, dict[str, float]]:
    """Ingest's reading counters summed over its workers' Prometheus files: metric name -> label
    value (kind or reason; ``""`` when unlabelled) -> count."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    result: dict[str, dict[str, float]] = {}
    if not metrics_dir.is_dir():
        return result
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    for metric in registry.collect():
        if not metric.name.startswith("chargewatch_readings_"):
            continue
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            label = next(iter(sample.labels.values()), "")
            by_label = result.setdefault(sample.name, {})
            by_label[label] = by_label.get(label, 0.0) + sample.value
    return result


def now_ms() -> int:
    return int(time.time() * 1000)
