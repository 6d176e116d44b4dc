"""Replay a simulated fleet through ingest and the task runner in simulated time, and score alerts.

Deliveries are ingested in send order with their send time as the receive time, and the task
runner runs at every window stop + offset of the simulated clock, exactly as it would live; only
HTTP is left out (``ingest.service.ingest_readings`` is the function the routes call). The result
says what analytics reported against what really happened: per-vehicle 24 h totals against the
sums of the readings delivered, and every alert against each pair's true efficiency over time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from analytics import queries
from chargewatch import bootstrap
from chargewatch.alerts import LOW
from chargewatch.efficiency_ports import AlertRecord, EfficiencyStores
from chargewatch.pairing import PairingRule, Pairings
from chargewatch.settings import Settings
from ingest.service import ingest_readings
from simulator.devices import Courier, DeliveryFaults, Fate, Fleet, FleetConfig, GroundTruth, stream_deliveries
from taskrunner.runner import TaskRunner


@dataclass(frozen=True)
class Onset:
    """When a pair's low efficiency first shows in its data: the first charging interval at or
    below the "must alert" efficiency."""

    vehicle_id: str
    at: datetime
    efficiency: float


@dataclass
class ReplayResult:
    truth: GroundTruth
    totals: dict[str, tuple[float, float]]  # vehicle -> (reported AC, reported DC) over the period
    expected_totals: dict[str, tuple[float, float]]  # vehicle -> exact sums of the readings delivered
    alerts: list[AlertRecord]
    onsets: dict[str, Onset]
    detection_minutes: dict[str, float | None] = field(default_factory=dict)
    false_alerts: list[AlertRecord] = field(default_factory=list)

    @property
    def recall(self) -> float:
        detected = [m for m in self.detection_minutes.values() if m is not None]
        return len(detected) / len(self.detection_minutes) if self.detection_minutes else 1.0

    @property
    def precision(self) -> float:
        fired = [a for a in self.alerts if a.rule == LOW and a.fired_ms is not None]
        return 1 - len(self.false_alerts) / len(fired) if fired else 1.0


def replay(config: FleetConfig, faults: DeliveryFaults, start: datetime, hours: float, data_dir: Path,
           settings: Settings | None = None) -> tuple[GroundTruth, bootstrap.Stores, Settings]:
    """Ingest ``hours`` of the fleet into a fresh store in ``data_dir``, running the task runner on time.

    With ``settings.store == "influx"`` the store also queues every new reading in its outbox, as
    ingest does in influx mode, ready for ``chargewatch forward``; the local windows and alerts are
    computed all the same (the embedded engine on the same readings).
    """
    settings = settings or Settings(data_dir=data_dir, sqlite={"synchronous": "normal"})
    end = start + timedelta(hours=hours)
    database = bootstrap.open_database(settings)
    readings = bootstrap.open_reading_store(settings, database)
    stores = bootstrap.Stores(database, readings, bootstrap.sqlite_efficiency_stores(database))
    runner = TaskRunner(stores.efficiency, settings)
    pairings = Pairings(rule=PairingRule.from_strings(settings.pairing.prefixes))
    fleet = Fleet(config, start)
    truth = GroundTruth(fleet, keep_readings=True)
    window_ms = runner.window_ms
    next_run_ms = runner.next_run_ms(int(start.timestamp() * 1000))
    batch: list[Any] = []
    batch_received_ms = 0
    for delivery in stream_deliveries(fleet, Courier(faults, config.seed), end, truth):
        truth.record_sent(delivery)
        due_ms = int(delivery.due.timestamp() * 1000)
        while due_ms >= next_run_ms:  # the runner's turn comes before this delivery
            if batch:
                ingest_readings(batch, readings, pairings, batch_received_ms)
                batch = []
            runner.run_once(next_run_ms)
            next_run_ms += window_ms
        batch.append(delivery.reading)
        batch_received_ms = due_ms  # a batch is a few seconds of deliveries: received at its last
        if len(batch) >= 500:
            ingest_readings(batch, readings, pairings, batch_received_ms)
            batch = []
    if batch:
        ingest_readings(batch, readings, pairings, batch_received_ms)
    final_ms = int((end + timedelta(minutes=15)).timestamp() * 1000)  # let the last late readings land
    while next_run_ms <= final_ms:
        runner.run_once(next_run_ms)
        next_run_ms += window_ms
    return truth, stores, settings


def backfill(config: FleetConfig, faults: DeliveryFaults, start: datetime, hours: float, data_dir: Path,
             settings: Settings | None = None) -> tuple[GroundTruth, bootstrap.Stores, Settings]:
    """Ingest ``hours`` of the fleet at once, as ``chargewatch simulate backfill`` posts it, then run the
    task runner once, after the end: its first run computes the windows and replays the alert rules
    over the backfilled history (``taskrunner.replay``), which is what a user of the demo sees."""
    settings = settings or Settings(data_dir=data_dir, sqlite={"synchronous": "normal"})
    end = start + timedelta(hours=hours)
    database = bootstrap.open_database(settings)
    readings = bootstrap.open_reading_store(settings, database)
    stores = bootstrap.Stores(database, readings, bootstrap.sqlite_efficiency_stores(database))
    pairings = Pairings(rule=PairingRule.from_strings(settings.pairing.prefixes))
    truth = GroundTruth(Fleet(config, start), keep_readings=True)
    batch = []
    end_ms = int(end.timestamp() * 1000)
    for delivery in stream_deliveries(truth.fleet, Courier(faults, config.seed), end, truth):
        truth.record_sent(delivery)
        batch.append(delivery.reading)
        if len(batch) >= 500:
            ingest_readings(batch, readings, pairings, end_ms)
            batch = []
    if batch:
        ingest_readings(batch, readings, pairings, end_ms)
    runner = TaskRunner(stores.efficiency, settings)
    runner.run_once(runner.next_run_ms(end_ms))
    return truth, stores, settings


def score(truth: GroundTruth, efficiency: EfficiencyStores, settings: Settings, start: datetime,
          hours: float, must_alert_at_or_below: float = 0.82, must_not_alert_at_or_above: float = 0.88,
          detect_within: timedelta = timedelta(minutes=15)) -> ReplayResult:
    """Compare analytics with the truth: totals per vehicle, and alerts against true efficiencies."""
    window_ms = settings.efficiency.window_seconds * 1000
    # Whole windows: a report sums windows, so the oracle sums the readings of the same windows.
    start_ms, end_ms = int(start.timestamp() * 1000), int((start + timedelta(hours=hours)).timestamp() * 1000)
    period = queries.Period(start_ms // window_ms * window_ms, -(-end_ms // window_ms) * window_ms)
    policy = bootstrap.alert_policy(settings)
    totals = {}
    for profile in truth.fleet.profiles:
        report = queries.performance_report(efficiency.windows, profile.vehicle_id, period, window_ms, policy)
        totals[profile.vehicle_id] = (report.ac_kwh, report.dc_kwh)
    # The oracle: every distinct reading that was delivered and is timed inside the period.
    delivered: dict[str, list[float]] = {}
    for generated in truth.readings:
        reading = generated.reading
        if truth.fates[generated.key] is not Fate.LOST and period.start_ms <= reading.time_ms < period.end_ms:
            energy = reading.kwh_consumed_ac if reading.kind == "meter" else reading.kwh_delivered_dc
            delivered.setdefault(reading.device_id, []).append(energy)
    expected = {p.vehicle_id: (math.fsum(delivered.get(p.meter_id, [])), math.fsum(delivered.get(p.vehicle_id, [])))
                for p in truth.fleet.profiles}

    onsets: dict[str, Onset] = {}
    for generated in truth.readings:
        vehicle_id = truth.fleet.profiles[generated.pair - truth.fleet.config.first_pair].vehicle_id
        if (generated.is_charging and generated.efficiency <= must_alert_at_or_below
                and vehicle_id not in onsets):
            interval_start = generated.step_time - truth.fleet.config.interval
            onsets[vehicle_id] = Onset(vehicle_id, interval_start, generated.efficiency)

    alerts = efficiency.alerts.recent_alerts(0, limit=100_000)
    result = ReplayResult(truth, totals, expected, alerts, onsets)
    profiles = {p.vehicle_id: p for p in truth.fleet.profiles}
    for vehicle_id, onset in onsets.items():
        onset_ms = onset.at.timestamp() * 1000
        low = [a for a in alerts if a.vehicle_id == vehicle_id and a.rule == LOW and a.fired_ms]
        firings = [(a.fired_ms, a.resolved_ms) for a in low if a.fired_ms is not None]
        if any(fired_ms <= onset_ms and (resolved_ms is None or resolved_ms > onset_ms)
               for fired_ms, resolved_ms in firings):
            minutes: float | None = 0.0  # already firing (an earlier, milder low efficiency)
        else:
            fired = [fired_ms for fired_ms, _ in firings if fired_ms >= onset_ms]
            minutes = (min(fired) / 1000 - onset.at.timestamp()) / 60 if fired else None
        result.detection_minutes[vehicle_id] = minutes
    for alert in alerts:
        if alert.rule != LOW or alert.fired_ms is None:
            continue
        fired_at = datetime.fromtimestamp(alert.fired_ms / 1000, tz=start.tzinfo)
        # The span looks back: the charger was good for the whole span before the alert fired.
        span = timedelta(minutes=settings.alerts.span_minutes)
        if profiles[alert.vehicle_id].efficiency_at(fired_at - span) >= must_not_alert_at_or_above and \
                profiles[alert.vehicle_id].efficiency_at(fired_at) >= must_not_alert_at_or_above:
            result.false_alerts.append(alert)
    return result


def within_ulps(value: float, expected: float, ulps: int = 4) -> bool:
    """Equal to the last digits a float allows: at most ``ulps`` units in the last place apart."""
    return abs(value - expected) <= ulps * math.ulp(max(abs(value), abs(expected)))
