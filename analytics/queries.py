"""Analytics use cases: reports over efficiency windows and current state. No HTTP here, and never
a scan of raw reading history."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from chargewatch.alerts import AlertPolicy
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.efficiency_ports import AlertRecord, AlertStore, WindowSource

# Efficiency distribution buckets (upper bounds, exclusive); the last bucket is "above 1.0".
DISTRIBUTION_EDGES = (0.75, 0.80, 0.85, 0.90, 0.95, 1.0)


@dataclass(frozen=True)
class Period:
    """Whole windows: readings timed in [start_ms, end_ms), i.e. windows with stop in (start, end]."""

    start_ms: int
    end_ms: int

    @classmethod
    def aligned(cls, start_ms: int, end_ms: int, window_ms: int) -> Period:
        """Widen ``start`` down and narrow ``end`` down to window bounds (only closed windows count)."""
        return cls(start_ms // window_ms * window_ms, end_ms // window_ms * window_ms)


@dataclass(frozen=True)
class PerformanceReport:
    vehicle_id: str
    period: Period
    ac_kwh: float
    dc_kwh: float
    efficiency: float | None
    avg_battery_temp: float | None
    matched_ac_kwh: float
    matched_dc_kwh: float
    unmatched_ac_kwh: float
    unmatched_dc_kwh: float
    windows: int
    ac_readings: int
    dc_readings: int
    meters: list[str]
    status: str


def classify(efficiency: float | None, ac_kwh: float, policy: AlertPolicy) -> str:
    """ok | low | above_one | no_data (too little AC energy for a verdict)."""
    if efficiency is None or ac_kwh < policy.min_span_energy_kwh:
        return "no_data"
    if efficiency < policy.threshold:
        return "low"
    if efficiency > policy.above_one_threshold:
        return "above_one"
    return "ok"


def performance_report(store: WindowSource, vehicle_id: str, period: Period, window_ms: int,
                       policy: AlertPolicy) -> PerformanceReport:
    """AC and DC totals of one vehicle over the period (exact sums of its windows)."""
    sums = store.vehicle_window_sums(window_ms, vehicle_id, period.start_ms, period.end_ms)
    ac, dc = sums["ac_kwh"], sums["dc_kwh"]
    efficiency = dc / ac if ac > 0 else None
    return PerformanceReport(
        vehicle_id=vehicle_id, period=period, ac_kwh=ac, dc_kwh=dc, efficiency=efficiency,
        avg_battery_temp=sums["battery_temp_sum"] / sums["battery_temp_readings"]
        if sums["battery_temp_readings"] else None,
        matched_ac_kwh=sums["matched_ac_kwh"], matched_dc_kwh=sums["matched_dc_kwh"],
        unmatched_ac_kwh=ac - sums["matched_ac_kwh"], unmatched_dc_kwh=dc - sums["matched_dc_kwh"],
        windows=sums["windows"], ac_readings=sums["ac_readings"], dc_readings=sums["dc_readings"],
        meters=sums["meters"], status=classify(efficiency, ac, policy),
    )


@dataclass(frozen=True)
class VehicleEfficiency:
    vehicle_id: str
    efficiency: float
    ac_kwh: float
    dc_kwh: float


@dataclass(frozen=True)
class FleetSummary:
    period: Period
    vehicles: int
    vehicles_charging: int
    ac_kwh: float
    dc_kwh: float
    efficiency: float | None
    distribution: list[tuple[str, int]]
    below_threshold: list[str]
    above_one: list[str]
    worst: list[VehicleEfficiency]


def fleet_summary(store: WindowSource, period: Period, window_ms: int, policy: AlertPolicy,
                  worst_n: int = 10) -> FleetSummary:
    """Fleet totals and the per-vehicle efficiency distribution; vehicles with less than the alert
    span's minimum AC energy in the period count as not charging and are left out of the ranking."""
    totals = store.vehicle_totals(window_ms, period.start_ms, period.end_ms)
    # (efficiency, vehicle id) pairs sort as the ranking does; records only for the worst few.
    rated = sorted((t.dc_kwh / t.ac_kwh, v) for v, t in totals.items() if t.ac_kwh >= policy.min_span_energy_kwh)
    efficiencies = [efficiency for efficiency, _ in rated]
    edges = [bisect.bisect_left(efficiencies, edge) for edge in DISTRIBUTION_EDGES]  # how many rate below each
    counts = [high - low for low, high in zip([0, *edges], [*edges, len(rated)], strict=True)]
    labels = [f"<{DISTRIBUTION_EDGES[0]:.2f}"] + [
        f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(DISTRIBUTION_EDGES, DISTRIBUTION_EDGES[1:], strict=False)] + [
        f">={DISTRIBUTION_EDGES[-1]:.2f}"]
    ac = sum(t.ac_kwh for t in totals.values())
    dc = sum(t.dc_kwh for t in totals.values())
    below = bisect.bisect_left(efficiencies, policy.threshold)
    above = bisect.bisect_right(efficiencies, policy.above_one_threshold)
    return FleetSummary(
        period=period, vehicles=len(totals), vehicles_charging=len(rated), ac_kwh=ac, dc_kwh=dc,
        efficiency=dc / ac if ac > 0 else None, distribution=list(zip(labels, counts, strict=True)),
        below_threshold=[v for _, v in rated[:below]],
        above_one=[v for _, v in rated[above:]],
        worst=[VehicleEfficiency(v, efficiency, totals[v].ac_kwh, totals[v].dc_kwh)
               for efficiency, v in rated[:worst_n]],
    )


def efficiency_series(store: WindowSource, vehicle_id: str, period: Period, window_ms: int
                      ) -> list[EfficiencyWindow]:
    return store.windows(window_ms, period.start_ms, period.end_ms, vehicle_id)


def list_alerts(store: AlertStore, since_ms: int, active_only: bool) -> list[AlertRecord]:
    if active_only:
        return [a for a in store.open_alerts() if a.state == "firing"]
    return store.recent_alerts(since_ms)
