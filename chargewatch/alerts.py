"""Alert rules as a pure state machine over efficiency windows, and the webhook and Alertmanager payloads.

Rules (docs/alerts.md "The rules"), evaluated per vehicle at each window stop T:

- ``low_efficiency``: the efficiency of the trailing span, or of the shorter fast span while a
  session goes on (so a fault that starts mid-session is not diluted by the good half hour before
  it), is below ``threshold`` while at least ``min_span_energy_kwh`` of AC flowed; fires after
  holding for ``pending``; resolves once the span is back at ``threshold + hysteresis`` or more
  and the fast span at ``threshold`` or more.
- ``efficiency_above_one``: above ``above_one_threshold`` (DC cannot exceed AC: the meter or the
  pairing is wrong); resolves at ``above_one_threshold - hysteresis`` or less.

How the span is measured, and why. A meter and its vehicle stamp readings with clocks up to 30 s
apart, so at any window edge one side's reading can land a window later than its partner's. Inside
a span these shifts cancel (what leaves one window enters the next); only the span's two outer
edges count, and they cancel too when both edges are in the same state (both charging at about the
same power, or both idle). They do not cancel at a session's start or end: one reading's worth of
energy then sits on one side only, 4 % of a 25-minute session, enough to push an 0.88 vehicle under
0.85. So the span's edges are placed where they cancel:

- while a session goes on, the span is the trailing ``span``, minus the session's first window if
  the session began inside it (that window is partly idle);
- once the session has ended (the newest window idle, or its energy per reading under half the
  window before), the span is the whole session, idle edge to idle edge (at most ``max_session``).

While the power changes (a battery tapering off) the edges do not cancel even there: each verdict
carries the range a shift of one reading at each edge allows, and a rule is breached only if the
whole range breaches it (``edge_shift_kwh``). A reading lost in transit takes its energy with it;
it is made up window by window at that window's DC per reading (``_ratio``), so a lost reading does
not look like lost energy, while an outage of both streams (the same readings lost on both sides)
changes nothing; a span where one side has fewer than half the other's readings (that stream is
out) gives no verdict. Efficiency is still a ratio of sums, never a mean of ratios.
A span with too little energy gives no verdict: a firing alert stays firing (the charger has not
shown it is healthy again), a pending one is cancelled.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from chargewatch.efficiency import EfficiencyWindow
from chargewatch.efficiency_ports import AlertRecord

LOW = "low_efficiency"
ABOVE_ONE = "efficiency_above_one"
RULES = (LOW, ABOVE_ONE)
ALERT_NAMES = {LOW: "ChargingEfficiencyLow", ABOVE_ONE: "ChargingEfficiencyAboveOne"}


# A span whose side has fewer than this share of the other side's readings gives no verdict.
MIN_READING_SHARE = 0.5


@dataclass(frozen=True)
class AlertPolicy:
    threshold: float = 0.85
    above_one_threshold: float = 1.0
    span_ms: int = 30 * 60_000
    pending_ms: int = 5 * 60_000
    hysteresis: float = 0.02
    min_span_energy_kwh: float = 0.5
    active_kwh: float = 0.1  # a window with this much energy on either side is charging
    max_session_ms: int = 4 * 3_600_000
    fast_span_ms: int = 10 * 60_000


@dataclass(frozen=True)
class SpanVerdict:
    vehicle_id: str
    meter_id: str | None
    efficiency: float | None  # over the span; None: not enough energy for a verdict
    ac_kwh: float
    dc_kwh: float
    fast_efficiency: float | None = None  # over the fast span (a fault that starts mid-session)
    early_efficiency: float | None = None  # the span with a new session's partly idle first window
    # What a shift of one reading at each edge of the span (the clocks apart) could make of
    # ``efficiency`` and ``fast_efficiency``: (lowest, highest); None: the value itself.
    efficiency_range: tuple[float, float] | None = None
    fast_range: tuple[float, float] | None = None


def lookback_ms(policy: AlertPolicy) -> int:
    """How far back the runner must read windows for ``span_verdict``."""
    return max(policy.span_ms, policy.max_session_ms)


def _is_active(window: EfficiencyWindow | None, policy: AlertPolicy) -> bool:
    return window is not None and (window.ac_kwh >= policy.active_kwh or window.dc_kwh >= policy.active_kwh)


def _merged(windows: Iterable[EfficiencyWindow]) -> dict[int, EfficiencyWindow]:
    """One window per stop (a vehicle re-paired inside a window has one row per meter)."""
    by_stop: dict[int, EfficiencyWindow] = {}
    for w in windows:
        seen = by_stop.get(w.stop_ms)
        by_stop[w.stop_ms] = w if seen is None else seen._replace(
            ac_kwh=seen.ac_kwh + w.ac_kwh, dc_kwh=seen.dc_kwh + w.dc_kwh,
            ac_readings=seen.ac_readings + w.ac_readings, dc_readings=seen.dc_readings + w.dc_readings,
            meter_id=w.meter_id or seen.meter_id)
    return by_stop


def _per_reading_kwh(window: EfficiencyWindow) -> float:
    return window.ac_kwh / window.ac_readings if window.ac_readings else 0.0


def measured_span(windows: Iterable[EfficiencyWindow], stop_ms: int, window_ms: int, policy: AlertPolicy,
                  trim_session_start: bool = True) -> list[EfficiencyWindow]:
    """The windows whose sums make the verdict at ``stop_ms`` (see the module docstring)."""
    return _measured_span(_merged(windows), stop_ms, window_ms, policy, trim_session_start)


def _measured_span(by_stop: dict[int, EfficiencyWindow], stop_ms: int, window_ms: int, policy: AlertPolicy,
                   trim_session_start: bool) -> list[EfficiencyWindow]:
    span_start = stop_ms - policy.span_ms
    if not any(_is_active(by_stop.get(s), policy) for s in range(span_start + window_ms, stop_ms + 1, window_ms)):
        return []
    newest, before = by_stop.get(stop_ms), by_stop.get(stop_ms - window_ms)
    ended = newest is None or not _is_active(newest, policy) or (
        before is not None and _is_active(before, policy) and _per_reading_kwh(newest) < 0.5 * _per_reading_kwh(before))
    earliest = stop_ms - policy.max_session_ms
    if ended:
        last = stop_ms if _is_active(newest, policy) else stop_ms - window_ms
        while last > span_start and not _is_active(by_stop.get(last), policy):
            last -= window_ms
        first = last
        while first - window_ms > earliest and _is_active(by_stop.get(first - window_ms), policy):
            first -= window_ms
        return [by_stop[s] for s in range(first, last + 1, window_ms) if s in by_stop]
    first = span_start + window_ms
    session_start = stop_ms
    while session_start - window_ms > earliest and _is_active(by_stop.get(session_start - window_ms), policy):
        session_start -= window_ms
    if trim_session_start and session_start >= first:  # began inside the span: its first window is partly idle
        first = session_start + window_ms
    return [by_stop[s] for s in range(first, stop_ms + 1, window_ms) if s in by_stop]


def _ratio(span: list[EfficiencyWindow], min_span_energy_kwh: float) -> tuple[float | None, float, float]:
    # Readings lost in transit are made up for window by window, on the DC side: where a window's
    # DC holds fewer readings than its AC, each missing one is worth that window's DC per reading
    # (added); where it holds more (an AC reading lost), as much is taken off. A span-wide mean
    # per reading would be diluted by the idle readings of a session's edge windows (a lost
    # full-power reading made up at half its worth: 0.85 for a 0.89 charger). A reading that a
    # clock offset moved into the next window shows as +1 in one window and -1 in the next, which
    # cancel as their powers do; a gateway outage that loses the same readings on both sides
    # cancels the same way. A window missing on one side entirely is made up at the span's ratio.
    ac = math.fsum(w.ac_kwh for w in span)
    dc = math.fsum(w.dc_kwh for w in span)
    ac_readings = sum(w.ac_readings for w in span)
    dc_readings = sum(w.dc_readings for w in span)
    if min(ac_readings, dc_readings) < MIN_READING_SHARE * max(ac_readings, dc_readings):
        # Most of one side is missing (that stream is out): nothing to make up from, no verdict.
        return None, ac, dc
    with_dc = [w for w in span if w.dc_readings]
    made_up = [(w.ac_readings - w.dc_readings) * w.dc_kwh / w.dc_readings for w in with_dc]
    without_dc_ac = math.fsum(w.ac_kwh for w in span if not w.dc_readings)
    if without_dc_ac:  # windows with no DC reading at all: at the ratio of the others
        with_dc_ac = math.fsum(w.ac_kwh for w in with_dc)
        ratio = (math.fsum(w.dc_kwh for w in with_dc) + math.fsum(made_up)) / with_dc_ac if with_dc_ac else 0.0
        made_up.append(without_dc_ac * ratio)
    dc = max(dc + math.fsum(made_up), 0.0)
    return (dc / ac if span and ac >= min_span_energy_kwh else None), ac, dc


def edge_shift_kwh(span: list[EfficiencyWindow], by_stop: dict[int, EfficiencyWindow], stop_ms: int,
                   window_ms: int, policy: AlertPolicy) -> float:
    """How much DC energy a clock offset between meter and vehicle can put on the wrong side of the
    span's sums: at most one reading crosses each edge (the clocks are less than a reading
    interval apart), so the sums are off by the difference of the two crossing readings.

    The crossing reading is estimated from the windows' DC per reading (DC, the battery's power,
    because it does not move when a charger's efficiency does; AC does, at a fault's onset): next
    to an idle window it is idle; next to a session's partly idle first window it is at the power
    of the window after (the session was already charging at that edge); between two charging
    windows it is halfway between their means (the power ramps linearly while a battery tapers);
    at the newest stop, whose next window is not there yet, the newest window's mean carried half
    a window further along the ramp. Zero while the power is steady and at idle edges; about a
    window's drop in power per reading while the power tapers."""
    def per_reading(window: EfficiencyWindow) -> float:
        return window.dc_kwh / window.dc_readings if window.dc_readings else 0.0

    def worth(window: EfficiencyWindow) -> float:  # a whole reading at most: AC per reading exceeds DC's
        return max(per_reading(window), window.ac_kwh / window.ac_readings if window.ac_readings else 0.0)

    def session_start(window: EfficiencyWindow) -> bool:
        return not _is_active(by_stop.get(window.stop_ms - window_ms), policy)

    first, last = span[0], span[-1]
    before, after = by_stop.get(first.stop_ms - window_ms), by_stop.get(last.stop_ms + window_ms)
    # Where neither side reported next to an edge, the data starts or stops there (a backfill's
    # ends, a gateway offline), not the charging: that edge's crossing reading may be worth anything
    # up to a reading of the edge window, on either side.
    unknown = (worth(first) if before is None else 0.0) + (
        worth(last) if last.stop_ms < stop_ms and after is None else 0.0)
    if before is None or not _is_active(before, policy):
        left = 0.0
    elif session_start(before):
        left = per_reading(first)
    else:
        left = (per_reading(before) + per_reading(first)) / 2
    if last.stop_ms >= stop_ms:  # the newest window: extrapolate along the ramp
        previous = by_stop.get(last.stop_ms - window_ms)
        slope = 0.0 if previous is None or not _is_active(previous, policy) or session_start(previous) \
            else per_reading(last) - per_reading(previous)
        right = max(per_reading(last) + slope / 2, 0.0)
    elif after is None or not _is_active(after, policy):
        right = 0.0
    else:
        right = (per_reading(last) + per_reading(after)) / 2
    return abs(left - right) + unknown


def _range(span: list[EfficiencyWindow], by_stop: dict[int, EfficiencyWindow], stop_ms: int, window_ms: int,
           policy: AlertPolicy) -> tuple[float | None, tuple[float, float] | None, float, float]:
    """``_ratio``'s efficiency, the range the span's edges allow it, and the sums."""
    efficiency, ac, dc = _ratio(span, policy.min_span_energy_kwh)
    if efficiency is None:
        return None, None, ac, dc
    shift = edge_shift_kwh(span, by_stop, stop_ms, window_ms, policy)
    return efficiency, (max(dc - shift, 0.0) / ac, (dc + shift) / ac), ac, dc


def span_verdict(vehicle_id: str, windows: list[EfficiencyWindow], stop_ms: int, window_ms: int,
                 policy: AlertPolicy) -> SpanVerdict:
    """The efficiency at ``stop_ms`` over the span, and over the fast span while a session goes on,
    each with the range a shift of one reading at its edges could make of it."""
    by_stop = _merged(windows)
    span = _measured_span(by_stop, stop_ms, window_ms, policy, True)
    meter_id = next((w.meter_id for w in reversed(windows) if w.meter_id), None)
    efficiency, efficiency_range, ac, dc = _range(span, by_stop, stop_ms, window_ms, policy)
    fast = [w for w in span if w.stop_ms > stop_ms - policy.fast_span_ms]
    fast_efficiency, fast_range = _range(fast, by_stop, stop_ms, window_ms, policy)[:2] \
        if span and span[-1].stop_ms == stop_ms else (None, None)
    early = _measured_span(by_stop, stop_ms, window_ms, policy, False)
    early_efficiency = _ratio(early, policy.active_kwh)[0]
    return SpanVerdict(vehicle_id, meter_id, efficiency, ac, dc, fast_efficiency, early_efficiency,
                       efficiency_range, fast_range)


def _breached(rule: str, verdict: SpanVerdict, policy: AlertPolicy, early: bool = False) -> bool:
    """Whether the verdict breaches the rule; ``early`` also counts the untrimmed session start for
    ``low_efficiency``, which may start the pending period but never fire. ``efficiency_above_one``
    ignores it: the partly idle first window is where the clock offset between meter and vehicle
    puts energy on one side only, in either direction, and a data-quality alert has no onset to
    catch early."""
    # A span breaches only if every value its edges allow does (``SpanVerdict.efficiency_range``).
    if rule == LOW:
        highest = [_bound(verdict.efficiency, verdict.efficiency_range, 1),
                   _bound(verdict.fast_efficiency, verdict.fast_range, 1)]
        if early:
            highest.append(verdict.early_efficiency)
        return any(v is not None and v < policy.threshold for v in highest)
    lowest = _bound(verdict.efficiency, verdict.efficiency_range, 0)
    return lowest is not None and lowest > policy.above_one_threshold


def _bound(value: float | None, bounds: tuple[float, float] | None, which: int) -> float | None:
    return value if value is None or bounds is None else bounds[which]


def _recovered(rule: str, verdict: SpanVerdict, policy: AlertPolicy) -> bool:
    value, fast = verdict.efficiency, verdict.fast_efficiency
    if value is None:
        return False
    if rule == LOW:
        return value >= policy.threshold + policy.hysteresis and (fast is None or fast >= policy.threshold)
    return value <= policy.above_one_threshold - policy.hysteresis


def step(rule: str, record: AlertRecord | None, verdict: SpanVerdict, now_ms: int, policy: AlertPolicy
         ) -> tuple[AlertRecord | None, str | None]:
    """Advance one (vehicle, rule) alert at window stop ``now_ms``; returns the record to save (None:
    nothing changed) and the notification to send: ``"firing"``, ``"resolved"`` or None.

    Firing takes two breaching evaluations at least ``pending`` apart, so the newest window, which
    may still miss late readings or end a session part-way, always gets a second look. The first
    may come from the session's partly idle first window (``early``): that saves a window of
    waiting at the start of a session without ever firing on that window alone."""
    value = next((v for v in (verdict.efficiency, verdict.fast_efficiency, verdict.early_efficiency)
                  if v is not None), None)
    if record is None:
        if not _breached(rule, verdict, policy, early=True):
            return None, None
        record = AlertRecord(verdict.vehicle_id, rule, now_ms, "pending", verdict.meter_id, value, None, None, now_ms)
        if policy.pending_ms > 0 or not _breached(rule, verdict, policy):
            return record, None
    if record.state == "pending":
        if _breached(rule, verdict, policy) and now_ms - record.started_ms >= policy.pending_ms:
            return replace(record, state="firing", value=value, fired_ms=now_ms, updated_ms=now_ms), "firing"
        if _breached(rule, verdict, policy, early=True):
            return replace(record, value=value, updated_ms=now_ms), None
        return replace(record, state="cancelled", value=value, updated_ms=now_ms), None
    # firing
    if _recovered(rule, verdict, policy):
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


def alert_labels(record: AlertRecord) -> dict[str, str]:
    """The labels that identify an alert (Alertmanager fingerprints them): the same in the webhook body
    and in the Alertmanager API, for every notification of one alert while its meter stays the same."""
    labels = {"alertname": ALERT_NAMES[record.rule], "rule": record.rule, "vehicle_id": record.vehicle_id,
              "severity": "warning" if record.rule == LOW else "info", "service": "chargewatch"}
    if record.meter_id:
        labels["meter_id"] = record.meter_id
    if record.replayed:  # found in history that arrived late; startsAt is in the past
        labels["replayed"] = "true"
    return labels


def alert_annotations(record: AlertRecord, policy: AlertPolicy) -> dict[str, str]:
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
    return {"summary": summary, "description": description, "value": value}


def _generator_url(record: AlertRecord, external_url: str) -> str:
    return f"{external_url}/v1/analytics/performance/{record.vehicle_id}"


def webhook_payload(record: AlertRecord, status: str, policy: AlertPolicy, external_url: str) -> dict[str, Any]:
    """Alertmanager webhook (version 4) body for one alert, so Alertmanager receivers take it as is."""
    labels = alert_labels(record)
    annotations = alert_annotations(record, policy)
    fingerprint = hashlib.sha256(f"{record.vehicle_id}\x00{record.rule}".encode()).hexdigest()[:16]
    alert = {
        "status": status, "labels": labels, "annotations": annotations,
        "startsAt": _rfc3339(record.fired_ms or record.started_ms),
        "endsAt": _rfc3339(record.resolved_ms if status == "resolved" else None),
        "generatorURL": _generator_url(record, external_url),
        "fingerprint": fingerprint,
    }
    return {
        "version": "4", "groupKey": f'{{}}:{{alertname="{labels["alertname"]}", vehicle_id="{record.vehicle_id}"}}',
        "truncatedAlerts": 0, "status": status, "receiver": "chargewatch",
        "groupLabels": {"alertname": labels["alertname"], "vehicle_id": record.vehicle_id},
        "commonLabels": labels, "commonAnnotations": annotations, "externalURL": external_url, "alerts": [alert],
    }


def alertmanager_alert(record: AlertRecord, policy: AlertPolicy, external_url: str, now_ms: int,
                       valid_for_ms: int) -> dict[str, Any]:
    """One alert of Alertmanager's API v2 (``POST /api/v2/alerts`` takes a list of them), from the
    alert's current state at ``now_ms``.

    A firing alert is sent with ``endsAt`` ``valid_for_ms`` ahead: Alertmanager resolves an alert
    whose endsAt has passed, so the sender must re-send it before then for as long as it fires (as
    Prometheus does). A resolved alert carries its real end; ``startsAt`` is when it fired."""
    if record.state not in ("firing", "resolved") or record.fired_ms is None:
        raise ValueError(f"alert {record.rule} of {record.vehicle_id} never fired (state {record.state})")
    ends_ms = record.resolved_ms if record.state == "resolved" and record.resolved_ms is not None \
        else now_ms + valid_for_ms
    return {
        "labels": alert_labels(record), "annotations": alert_annotations(record, policy),
        "startsAt": _rfc3339(record.fired_ms), "endsAt": _rfc3339(ends_ms),
        "generatorURL": _generator_url(record, external_url),
    }
