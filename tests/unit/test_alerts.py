"""Alert rules: measured spans, the state machine, the webhook and Alertmanager payloads, on hand-made windows."""

from __future__ import annotations

import pytest

from chargewatch.alerts import (
    ABOVE_ONE,
    LOW,
    AlertPolicy,
    SpanVerdict,
    alertmanager_alert,
    evaluate,
    measured_span,
    span_verdict,
    step,
    webhook_payload,
)
from chargewatch.efficiency import EfficiencyWindow, MeterEnergy, VehicleEnergy, windows_from_readings
from chargewatch.efficiency_ports import AlertRecord

W = 300_000
POLICY = AlertPolicy()
T0 = 1_795_392_000_000  # a window stop (2026-11-23T00:00Z)


def _step(rule: str, record: AlertRecord | None, result: SpanVerdict, now_ms: int, policy: AlertPolicy
          ) -> tuple[AlertRecord, str | None]:
    """``step`` where the case starts or holds an alert, so a record must come out."""
    stepped, event = step(rule, record, result, now_ms, policy)
    assert stepped is not None
    return stepped, event


def window(k: int, ac: float, dc: float, ac_n: int = 5, dc_n: int = 5, vehicle: str = "V1") -> EfficiencyWindow:
    return EfficiencyWindow(vehicle, "M1", T0 + k * W, ac, dc, ac_n, dc_n, 20.0 if dc_n else None,
                            dc / ac if ac >= 0.1 else None)


def verdict(value: float | None, fast: float | None = None, early: float | None = None) -> SpanVerdict:
    return SpanVerdict("V1", "M1", value, 10.0, 9.0, fast, early)


def test_a_steady_session_is_measured_over_the_trailing_span() -> None:
    windows = [window(k, 1.0, 0.9) for k in range(-20, 1)]
    span = measured_span(windows, T0, W, POLICY)
    assert [w.stop_ms for w in span] == [T0 + k * W for k in range(-5, 1)]
    assert span_verdict("V1", windows, T0, W, POLICY).efficiency == 0.9 * 6 / 6


def test_a_new_sessions_partly_idle_first_window_is_left_out() -> None:
    windows = [window(-3, 0, 0), window(-2, 0.3, 0.2), window(-1, 1.0, 0.9), window(0, 1.0, 0.9)]
    assert [w.stop_ms for w in measured_span(windows, T0, W, POLICY)] == [T0 - W, T0]
    result = span_verdict("V1", windows, T0, W, POLICY)
    assert result.efficiency == 0.9
    assert result.early_efficiency == (0.2 + 1.8) / 2.3


def test_an_ended_session_is_measured_whole_from_idle_edge_to_idle_edge() -> None:
    windows = [window(k, 1.0, 0.9) for k in range(-12, -1)] + [window(-1, 0.4, 0.3), window(0, 0, 0)]
    span = measured_span(windows, T0, W, POLICY)
    assert span[0].stop_ms == T0 - 12 * W and span[-1].stop_ms == T0 - W
    assert span_verdict("V1", windows, T0, W, POLICY).efficiency == pytest.approx((9.9 + 0.3) / 11.4, abs=1e-12)


def test_a_lost_reading_does_not_look_like_lost_energy() -> None:
    windows = [window(k, 1.0, 0.9) for k in range(-5, 0)] + [window(0, 1.0, 0.72, dc_n=4)]
    assert span_verdict("V1", windows, T0, W, POLICY).efficiency == pytest.approx(0.9, abs=1e-12)


def test_too_little_energy_gives_no_verdict() -> None:
    windows = [window(k, 0.05, 0.01) for k in range(-5, 1)]
    assert span_verdict("V1", windows, T0, W, POLICY).efficiency is None


def test_a_breach_must_hold_at_two_evaluations_a_pending_period_apart() -> None:
    record, event = _step(LOW, None, verdict(0.80), T0, POLICY)
    assert (record.state, event) == ("pending", None)
    record, event = _step(LOW, record, verdict(0.80), T0 + W, POLICY)
    assert (record.state, event, record.fired_ms) == ("firing", "firing", T0 + W)


def test_a_pending_alert_is_cancelled_when_the_breach_does_not_hold() -> None:
    record, _ = _step(LOW, None, verdict(0.80), T0, POLICY)
    record, event = _step(LOW, record, verdict(0.90), T0 + W, POLICY)
    assert (record.state, event) == ("cancelled", None)


def test_the_session_start_alone_may_start_pending_but_never_fires() -> None:
    record, _ = _step(LOW, None, verdict(None, early=0.6), T0, POLICY)
    assert record.state == "pending"
    record, event = _step(LOW, record, verdict(None, early=0.6), T0 + W, POLICY)
    assert (record.state, event) == ("pending", None)
    record, event = _step(LOW, record, verdict(0.8), T0 + 2 * W, POLICY)
    assert event == "firing"


def test_the_session_start_never_starts_an_above_one_alert() -> None:
    # the partly idle first window alone above 1.0: the clock offset, not a wrong meter
    assert step(ABOVE_ONE, None, verdict(0.94, early=1.13), T0, POLICY) == (None, None)


def test_a_firing_alert_resolves_only_past_the_hysteresis() -> None:
    record, _ = _step(LOW, None, verdict(0.80), T0, POLICY)
    record, _ = _step(LOW, record, verdict(0.80), T0 + W, POLICY)
    unchanged, event = _step(LOW, record, verdict(0.86), T0 + 2 * W, POLICY)
    assert event is None and unchanged.state == "firing"
    resolved, event = _step(LOW, record, verdict(0.875), T0 + 3 * W, POLICY)
    assert (resolved.state, event, resolved.resolved_ms) == ("resolved", "resolved", T0 + 3 * W)


def test_a_firing_alert_stays_firing_while_the_vehicle_is_idle() -> None:
    record, _ = _step(LOW, None, verdict(0.80), T0, POLICY)
    record, _ = _step(LOW, record, verdict(0.80), T0 + W, POLICY)
    assert step(LOW, record, verdict(None), T0 + 2 * W, POLICY) == (None, None)


def test_efficiency_above_one_is_a_data_quality_alert() -> None:
    changed, events = evaluate([], {"V1": verdict(1.2)}, T0, POLICY)
    assert [(r.rule, r.state) for r in changed] == [(ABOVE_ONE, "pending")]
    changed, events = evaluate(changed, {"V1": verdict(1.2)}, T0 + W, POLICY)
    assert [(r.rule, e) for r, e in events] == [(ABOVE_ONE, "firing")]


def test_the_webhook_payload_is_alertmanager_shaped() -> None:
    record, _ = _step(LOW, None, verdict(0.80), T0, POLICY)
    record, _ = _step(LOW, record, verdict(0.80), T0 + W, POLICY)
    payload = webhook_payload(record, "firing", POLICY, "http://127.0.0.1:8081")
    assert payload["version"] == "4" and payload["status"] == "firing"
    (alert,) = payload["alerts"]
    assert alert["labels"] == {"alertname": "ChargingEfficiencyLow", "rule": LOW, "vehicle_id": "V1",
                               "severity": "warning", "service": "chargewatch", "meter_id": "M1"}
    assert alert["startsAt"] == "2026-11-23T00:05:00Z" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["generatorURL"] == "http://127.0.0.1:8081/v1/analytics/performance/V1"
    assert "0.800" in alert["annotations"]["summary"]


def fired_record(vehicle: str = "V1"):
    record, _ = _step(LOW, None, SpanVerdict(vehicle, "M1", 0.80, 10.0, 8.0), T0, POLICY)
    record, _ = _step(LOW, record, SpanVerdict(vehicle, "M1", 0.80, 10.0, 8.0), T0 + W, POLICY)
    return record


def test_a_firing_alert_for_alertmanager_ends_a_validity_ahead_and_carries_the_webhook_labels() -> None:
    record = fired_record()
    now_ms = T0 + 2 * W + 1234
    alert = alertmanager_alert(record, POLICY, "http://127.0.0.1:8081", now_ms, 240_000)
    assert alert["labels"] == webhook_payload(record, "firing", POLICY, "")["alerts"][0]["labels"]
    assert alert["startsAt"] == "2026-11-23T00:05:00Z"  # when it fired
    assert alert["endsAt"] == "2026-11-23T00:14:01.234000Z"  # now + 4 min
    assert alert["generatorURL"] == "http://127.0.0.1:8081/v1/analytics/performance/V1"
    assert set(alert) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}


def test_a_resolved_alert_for_alertmanager_carries_its_real_end() -> None:
    record = fired_record()
    record, event = _step(LOW, record, SpanVerdict("V1", "M1", 0.95, 10.0, 9.5), T0 + 3 * W, POLICY)
    assert event == "resolved"
    alert = alertmanager_alert(record, POLICY, "", T0 + 9 * W, 240_000)
    assert (alert["startsAt"], alert["endsAt"]) == ("2026-11-23T00:05:00Z", "2026-11-23T00:15:00Z")


def test_an_alert_that_never_fired_is_not_sent_to_alertmanager() -> None:
    pending, _ = _step(LOW, None, verdict(0.80), T0, POLICY)
    with pytest.raises(ValueError, match="never fired"):
        alertmanager_alert(pending, POLICY, "", T0, 240_000)


# -- gaps in delivery (a gateway outage) never fire an alert by themselves ----------------------

def simulated_windows(lost_meter: tuple[int, int] | None, lost_vehicle: tuple[int, int] | None,
                      meter_offset_s: int = 25, vehicle_offset_s: int = -25, efficiency: float = 0.92,
                      session: tuple[int, int] = (3600, 3 * 3600), taper_minutes: int = 0) -> list[EfficiencyWindow]:
    """A vehicle charging at 11 kW with ``efficiency``, both devices sending every 60 s (send time
    + their clock offset = timestamp); readings sent within a lost range (seconds) never arrive,
    and their energy with them. With ``taper_minutes`` the power falls linearly to a tenth over
    the session's last minutes (a battery near full)."""
    start_ms = T0 - 4 * 3600_000
    meters, vehicles = [], []
    for second in range(60, 4 * 3600 + 1, 60):
        charging = session[0] < second <= session[1]
        left_s = session[1] - second
        power = 0.1 + 0.9 * left_s / (taper_minutes * 60) if 0 <= left_s < taper_minutes * 60 else 1.0
        dc = 11.0 / 60 * power if charging else 0.0
        if not (lost_meter and lost_meter[0] <= second < lost_meter[1]):
            meters.append(MeterEnergy("V1", "M1", start_ms + (second + meter_offset_s) * 1000, dc / efficiency))
        if not (lost_vehicle and lost_vehicle[0] <= second < lost_vehicle[1]):
            vehicles.append(VehicleEnergy("V1", "M1", start_ms + (second + vehicle_offset_s) * 1000, dc, 25.0))
    return windows_from_readings(meters, vehicles, W)


def fired(windows: list[EfficiencyWindow]) -> list[tuple[str, int]]:
    """Every firing the evaluator would send, stepping each window stop as the runner does."""
    records: dict[str, AlertRecord] = {}
    firings = []
    for stop in range(T0 - 4 * 3600_000 + W, T0 + 1, W):
        known = [w for w in windows if w.stop_ms <= stop]
        result = span_verdict("V1", known, stop, W, POLICY)
        for rule in (LOW, ABOVE_ONE):
            record, event = step(rule, records.get(rule), result, stop, POLICY)
            if record is not None:
                records[rule] = record
            if event == "firing":
                firings.append((rule, stop))
    return firings


OUTAGES = [(start, start + length) for start in range(5400, 5700, 30) for length in (180, 420, 900)]


@pytest.mark.parametrize("outage", OUTAGES)
def test_an_outage_of_both_streams_mid_session_fires_nothing(outage: tuple[int, int]) -> None:
    assert fired(simulated_windows(outage, outage)) == []


@pytest.mark.parametrize("outage", OUTAGES)
@pytest.mark.parametrize("stream", ["meter", "vehicle"])
def test_an_outage_of_one_stream_mid_session_fires_nothing(outage: tuple[int, int], stream: str) -> None:
    windows = simulated_windows(outage if stream == "meter" else None, outage if stream == "vehicle" else None)
    assert fired(windows) == []


@pytest.mark.parametrize("outage", [(3300, 3900), (3540, 3720), (10500, 11100), (10740, 10920)],
                         ids=["over-the-start", "just-after-the-start", "over-the-end", "just-before-the-end"])
def test_an_outage_of_both_streams_at_a_session_edge_fires_nothing(outage: tuple[int, int]) -> None:
    assert fired(simulated_windows(outage, outage)) == []


def test_a_faulty_charger_still_fires_across_an_outage() -> None:
    assert tuple({rule for rule, _ in fired(simulated_windows((5400, 5820), (5400, 5820), efficiency=0.78))}) == (LOW, )


# -- clock offsets while the power changes, and lost readings at full power --------------------

TAPERS = [(meter, vehicle, end) for meter, vehicle in ((27, 0), (0, 27), (25, -25), (-25, 25), (29, -29))
          for end in range(3 * 3600, 3 * 3600 + 300, 60)]


@pytest.mark.parametrize(("meter_offset", "vehicle_offset", "end"), TAPERS)
def test_a_healthy_charger_tapering_off_with_the_clocks_apart_fires_nothing(meter_offset, vehicle_offset, end) -> None:
    # Each window puts one reading of the falling power on one side only: 0.89 looked like 0.84.
    windows = simulated_windows(None, None, meter_offset, vehicle_offset, efficiency=0.89, session=(3600, end),
                                taper_minutes=30)
    assert fired(windows) == []


@pytest.mark.parametrize(("meter_offset", "vehicle_offset", "end"), TAPERS[::7])
def test_a_faulty_charger_tapering_off_still_fires(meter_offset, vehicle_offset, end) -> None:
    windows = simulated_windows(None, None, meter_offset, vehicle_offset, efficiency=0.78, session=(3600, end),
                                taper_minutes=30)
    assert {rule for rule, _ in fired(windows)} == {LOW}


def test_readings_lost_at_full_power_are_made_up_at_their_worth_not_at_the_sessions_mean() -> None:
    # A 25-minute session whose idle edge windows hold 5 idle readings each; two vehicle readings
    # at full power lost. Made up at the span's mean per reading (idle ones included) this read
    # 0.85 for a 0.89 charger.
    session = (3600 + 90, 3600 + 90 + 25 * 60)
    windows = simulated_windows(None, (4500, 4620), 27, 0, efficiency=0.89, session=session)
    ended_stop = T0 - 4 * 3600_000 + 3600_000 + 40 * 60_000  # the session has ended by then
    result = span_verdict("V1", [w for w in windows if w.stop_ms <= ended_stop], ended_stop, W, POLICY)
    assert result.efficiency == pytest.approx(0.89, abs=0.005)
    assert result.efficiency_range == pytest.approx((0.89, 0.89), abs=0.005)  # idle edges: no shift


@pytest.mark.parametrize("stop_s", range(3600 + 900, 3600 + 1200, 60))
@pytest.mark.parametrize(("meter_offset", "vehicle_offset"), [(27, 0), (0, 27), (25, -25), (-25, 25)])
@pytest.mark.parametrize("efficiency", [0.89, 0.97])
def test_data_that_stops_mid_session_fires_nothing(stop_s, meter_offset, vehicle_offset, efficiency) -> None:
    # Both streams end at once 15-20 min into a session (a gateway gone, a backfill's end): not a
    # session end, and one side's last reading alone in a window is 6 % of the session.
    gone = (stop_s, 4 * 3600 + 1)
    assert fired(simulated_windows(gone, gone, meter_offset, vehicle_offset, efficiency=efficiency)) == []
