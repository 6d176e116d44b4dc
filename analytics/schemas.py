"""Response bodies of the analytics service."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from analytics.queries import FleetSummary, PerformanceReport
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.efficiency_ports import AlertRecord
from webapi.schemas import ApiModel, from_ms

Status = Literal["ok", "low", "above_one", "no_data"]


class EnergySplit(ApiModel):
    ac_kwh: float
    dc_kwh: float


class ReadingCounts(ApiModel):
    ac: int
    dc: int


class PerformanceBody(ApiModel):
    """A vehicle's charging over a period. The first eight fields keep the names existing clients read."""

    vehicle_id: str
    period_start: datetime = Field(description="start of the first window, UTC (the period is whole windows)")
    period_end: datetime = Field(description="stop of the last closed window, UTC")
    total_energy_consumed_ac: float = Field(description="kWh drawn from the grid by the paired meter(s)")
    total_energy_delivered_dc: float = Field(description="kWh that reached the battery")
    efficiency_ratio: float | None = Field(description="DC / AC as a ratio from 0 to 1 (not %); null without AC")
    efficiency_percent: float | None = Field(description="the same as a percentage")
    avg_battery_temp: float | None = Field(description="mean battery temperature of the period's readings, deg C")
    status: Status = Field(description="ok; low (below the alert threshold); above_one (data quality); "
                                       "no_data (less AC energy than the alert minimum)")
    threshold: float
    meter_id: str | None = Field(description="the meter the vehicle is paired with now")
    meters_in_period: list[str] = Field(description="meters its windows were paired with during the period")
    matched_energy: EnergySplit = Field(description="energy in windows where both sides reported")
    unmatched_energy: EnergySplit = Field(description="energy in windows where only one side reported")
    windows: int = Field(description="windows with readings in the period")
    window_seconds: int
    readings: ReadingCounts

    @classmethod
    def of(cls, report: PerformanceReport, meter_id: str | None, threshold: float, window_seconds: int
           ) -> PerformanceBody:
        return cls(
            vehicle_id=report.vehicle_id, period_start=from_ms(report.period.start_ms),
            period_end=from_ms(report.period.end_ms), total_energy_consumed_ac=report.ac_kwh,
            total_energy_delivered_dc=report.dc_kwh, efficiency_ratio=report.efficiency,
            efficiency_percent=None if report.efficiency is None else report.efficiency * 100,
            avg_battery_temp=report.avg_battery_temp, status=report.status, threshold=threshold, meter_id=meter_id,
            meters_in_period=report.meters,
            matched_energy=EnergySplit(ac_kwh=report.matched_ac_kwh, dc_kwh=report.matched_dc_kwh),
            unmatched_energy=EnergySplit(ac_kwh=report.unmatched_ac_kwh, dc_kwh=report.unmatched_dc_kwh),
            windows=report.windows, window_seconds=window_seconds,
            readings=ReadingCounts(ac=report.ac_readings, dc=report.dc_readings),
        )


class RankedVehicle(ApiModel):
    vehicle_id: str
    efficiency_ratio: float
    total_energy_consumed_ac: float
    total_energy_delivered_dc: float


class DistributionBucket(ApiModel):
    range: str = Field(description="efficiency ratio range, lower bound inclusive")
    vehicles: int


class FleetSummaryBody(ApiModel):
    period_start: datetime
    period_end: datetime
    vehicles: int = Field(description="vehicles with any window in the period")
    vehicles_charging: int = Field(description="vehicles with enough AC energy to be rated")
    total_energy_consumed_ac: float
    total_energy_delivered_dc: float
    efficiency_ratio: float | None = Field(description="fleet DC / AC, 0-1")
    threshold: float
    distribution: list[DistributionBucket]
    below_threshold: list[str] = Field(description="vehicles whose period efficiency is below the threshold")
    above_one: list[str] = Field(description="vehicles whose period efficiency is above 1 (data quality)")
    worst: list[RankedVehicle] = Field(description="lowest efficiency first")
    active_alerts: int

    @classmethod
    def of(cls, summary: FleetSummary, threshold: float, active_alerts: int) -> FleetSummaryBody:
        return cls(
            period_start=from_ms(summary.period.start_ms), period_end=from_ms(summary.period.end_ms),
            vehicles=summary.vehicles, vehicles_charging=summary.vehicles_charging,
            total_energy_consumed_ac=summary.ac_kwh, total_energy_delivered_dc=summary.dc_kwh,
            efficiency_ratio=summary.efficiency, threshold=threshold,
            distribution=[DistributionBucket(range=r, vehicles=n) for r, n in summary.distribution],
            below_threshold=summary.below_threshold, above_one=summary.above_one,
            worst=[RankedVehicle(vehicle_id=w.vehicle_id, efficiency_ratio=w.efficiency,
                                 total_energy_consumed_ac=w.ac_kwh, total_energy_delivered_dc=w.dc_kwh)
                   for w in summary.worst],
            active_alerts=active_alerts,
        )


class WindowBody(ApiModel):
    stop: datetime = Field(description="window stop (its label), UTC")
    meter_id: str | None
    ac_kwh: float
    dc_kwh: float
    ac_readings: int
    dc_readings: int
    avg_battery_temp: float | None
    efficiency: float | None = Field(description="DC / AC (0-1); null when idle")

    @classmethod
    def of(cls, w: EfficiencyWindow) -> WindowBody:
        return cls(stop=from_ms(w.stop_ms), meter_id=w.meter_id, ac_kwh=w.ac_kwh, dc_kwh=w.dc_kwh,
                   ac_readings=w.ac_readings, dc_readings=w.dc_readings, avg_battery_temp=w.avg_battery_temp,
                   efficiency=w.efficiency)


class SeriesBody(ApiModel):
    vehicle_id: str
    period_start: datetime
    period_end: datetime
    window_seconds: int
    windows: list[WindowBody]


class AlertBody(ApiModel):
    vehicle_id: str
    meter_id: str | None
    rule: Literal["low_efficiency", "efficiency_above_one"]
    state: Literal["pending", "firing", "resolved", "cancelled"]
    value: float | None = Field(description="the span efficiency at the last evaluation")
    started_at: datetime = Field(description="when the condition first held")
    fired_at: datetime | None
    resolved_at: datetime | None
    replayed: bool = Field(description="found by replaying history that arrived late (a backfill), with its real "
                                       "times; false when the runner saw it live")

    @classmethod
    def of(cls, a: AlertRecord) -> AlertBody:
        return cls(vehicle_id=a.vehicle_id, meter_id=a.meter_id, rule=a.rule, state=a.state,
                   value=a.value, started_at=from_ms(a.started_ms),
                   fired_at=from_ms(a.fired_ms) if a.fired_ms else None,
                   resolved_at=from_ms(a.resolved_ms) if a.resolved_ms else None, replayed=a.replayed)


class AlertList(ApiModel):
    alerts: list[AlertBody]


class TaskRunnerBody(ApiModel):
    status: Literal["ok", "stale", "never_ran"]
    last_run_at: datetime | None
    last_window_stop: datetime | None
    lag_seconds: float | None = Field(description="now minus the newest computed window stop")
    last_duration_seconds: float | None
