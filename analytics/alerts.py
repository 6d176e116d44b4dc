"""Alert rules as a pure state machine over efficiency windows, and the webhook payload.

Rules (DESIGN "Alerts"), evaluated per vehicle at each window stop T over the trailing span
(T - span, T]:

- ``low_efficiency``: the span's efficiency is below ``threshold`` while at least
  ``min_span_energy_kwh`` of AC flowed; fires after holding for ``pending``; resolves once the
  efficiency is back at ``threshold + hysteresis`` or more.
- ``efficiency_above_one``: above ``above_one_threshold`` (DC cannot exceed AC: the meter or the
  pairing is wrong); resolves at ``above_one_threshold - hysteresis`` or less.

The span's efficiency compares the mean energy per reading on each side,
``(sum dc / dc readings) / (sum ac / ac readings)``: still a ratio of sums, never a mean of
ratios, but a reading lost in transit (its energy gone with it) no longer looks like lost energy.
Both sides report on the same cadence (every 60 s), so the counts cover the same time.
A span with too little energy gives no verdict: a firing alert stays firing (the charger has not
shown it is healthy again), a pending one is cancelled.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Iterable

from chargewatch.efficiency import EfficiencyWindow, span_totals
from chargewatch.stores.sqlite_efficiency import AlertRecord

LOW = "low_efficiency"
ABOVE_ONE = "efficiency_above_one"
RULES = (LOW, ABOVE_ONE)
ALERT_NAMES = {LOW: "ChargingEfficiencyLow", ABOVE_ONE: "ChargingEfficiencyAboveOne"}


@dataclass(frozen=True)
class AlertPolicy:
    threshold: float = 0.85
    above_one_threshold: float = 1.0
    span_ms: int = 30 * 60_000
    pending_ms: int = 5 * 60_000
    hysteresis: float = 0.02
    min_span_energy_kwh: float = 1.0


@dataclass(frozen=True)
class SpanVerdict:
    vehicle_id: str
    meter_id: str | None
    efficiency: float | None  # None: not enough energy for a verdict
    ac_kwh: float
    dc_kwh: float


def span_verdict(vehicle_id: str, windows: list[EfficiencyWindow], policy: AlertPolicy) -> SpanVerdict:
    totals = span_totals(windows)
    meter_id = next((w.meter_id for w in reversed(windows) if w.meter_id), None)
    efficiency = None
    if totals.ac_kwh >= policy.min_span_energy_kwh and totals.ac_readings and totals.dc_readings:
        efficiency = (totals.dc_kwh / totals.dc_readings) / (totals.ac_kwh / totals.ac_readings)
    return SpanVerdict(vehicle_id, meter_id, efficiency, totals.ac_kwh, totals.dc_kwh)


def _breached(rule: str, value: float, policy: AlertPolicy) -> bool:
    return value < policy.threshold if rule == LOW else value > policy.above_one_threshold


def _recovered(rule: str, value: float, policy: AlertPolicy) -> bool:
    if rule == LOW:
        return value >= policy.threshold + policy.hysteresis
    return value <= policy.above_one_threshold - policy.hysteresis


def step(rule: str, record: AlertRecord | None, verdict: SpanVerdict, now_ms: int, policy: AlertPolicy
         ) -> tuple[AlertRecord | None, str | None]:
    """Advance one (vehicle, rule) alert; returns the record to save (None: nothing changed) and the
    notification to send: ``"firing"``, ``"resolved"`` or None."""
    value = verdict.efficiency
    if record is None:
        if value is None or not _breached(rule, value, policy):
            return None, None
        record = AlertRecord(verdict.vehicle_id, rule, now_ms, "pending", verdict.meter_id, value, None, None, now_ms)
        if policy.pending_ms > 0:
            return record, None
    if record.state == "pending":
        if value is None or not _breached(rule, value, policy):
            return replace(record, state="cancelled", value=value, updated_ms=now_ms), None
        if now_ms - record.started_ms >= policy.pending_ms:
            return replace(record, state="firing", value=value, fired_ms=now_ms, updated_ms=now_ms), "firing"
        return replace(record, value=value, updated_ms=now_ms), None
    # firing
    if value is not None and _recovered(rule, value, policy):
        return replace(record, state="resolved", value=value, resolved_ms=now_ms, updated_ms=now_ms), "resolved"
    if value is None:
        return None, None
    return replace(record, value=value, meter_id=verdict.meter_id or record.meter_id, updated_ms=now_ms), None


def evaluate(open_alerts: Iterable[AlertRecord], verdicts: dict[str, SpanVerdict], now_ms: int,
             policy: AlertPolicy) -> tuple[list[AlertRecord], list[tuple[AlertRecord, str]]]:
    """Step every rule for every vehicle with a verdict or an open alert."""
    by_key = {(a.vehicle_id, a.rule): a for a in open_alerts}
    changed: list[AlertRecord] = []
    events: list[tuple[AlertRecord, str]] = []
    vehicles = set(verdicts) | {vehicle for vehicle, _ in by_key}
    for vehicle_id in sorted(vehicles):
        verdict = verdicts.get(vehicle_id) or SpanVerdict(vehicle_id, None, None, 0.0, 0.0)
        for rule in RULES:
            record, event = step(rule, by_key.get((vehicle_id, rule)), verdict, now_ms, policy)
            if record is not None:
                changed.append(record)
            if event is not None and record is not None:
                events.append((record, event))
    return changed, events


def _rfc3339(ms: int | None) -> str:
    if ms is None:
        return "0001-01-01T00:00:00Z"  # Alertmanager's "not set"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def webhook_payload(record: AlertRecord, status: str, policy: AlertPolicy, external_url: str) -> dict[str, Any]:
    """Alertmanager webhook (version 4) body for one alert, so Alertmanager receivers take it as is."""
    labels = {"alertname": ALERT_NAMES[record.rule], "rule": record.rule, "vehicle_id": record.vehicle_id,
              "severity": "warning" if record.rule == LOW else "info", "service": "chargewatch"}
    if record.meter_id:
        labels["meter_id"] = record.meter_id
    value = "n/a" if record.value is None else f"{record.value:.3f}"
    if record.rule == LOW:
        summary = f"{record.vehicle_id}: charging efficiency {value} below {policy.threshold}"
        description = (f"DC delivered / AC consumed over the last {policy.span_ms // 60000} min is {value}, below "
                       f"{policy.threshold}: check the charger{' ' + record.meter_id if record.meter_id else ''} "
                       "for a fault or leakage.")
    else:
        summary = f"{record.vehicle_id}: charging efficiency {value} above {policy.above_one_threshold}"
        description = ("More DC reached the battery than AC was drawn: the meter reading or the vehicle-meter "
                       "pairing is wrong.")
    annotations = {"summary": summary, "description": description, "value": value}
    fingerprint = hashlib.sha256(f"{record.vehicle_id}\x00{record.rule}".encode()).hexdigest()[:16]
    alert = {
        "status": status, "labels": labels, "annotations": annotations,
        "startsAt": _rfc3339(record.fired_ms or record.started_ms),
        "endsAt": _rfc3339(record.resolved_ms if status == "resolved" else None),
        "generatorURL": f"{external_url}/v1/analytics/performance/{record.vehicle_id}",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{labels["alertname"]}", vehicle_id="{record.vehicle_id}"}}',
        "truncatedAlerts": 0, "status": status, "receiver": "chargewatch",
        "groupLabels": {"alertname": labels["alertname"], "vehicle_id": record.vehicle_id},
        "commonLabels": labels, "commonAnnotations": annotations, "externalURL": external_url, "alerts": [alert],
    }
