"""Alert replay on a real SQLite file: windows written as the runner writes them, then the rules
replayed over them (``analytics.replay``), by hand and by the runner's first run."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from chargewatch import alerts
from chargewatch.bootstrap import open_reading_store, sqlite_efficiency_stores
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.efficiency_ports import AlertRecord, EfficiencyStores
from chargewatch.settings import Settings
from chargewatch.stores.sqlite import SqliteReadingStore
from taskrunner import replay
from taskrunner.runner import TaskRunner

W = 300_000
HOUR = 3_600_000
T0 = 1_796_000_400_000 // HOUR * HOUR  # a whole hour
ONSET = T0 + 2 * HOUR
END = T0 + 4 * HOUR
FAULTY, HEALTHY = "EV-7", "EV-8"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, sqlite={"synchronous": "normal"}, auth={"enabled": False},
                    alerts={"webhook_urls": "http://127.0.0.1:9/hook"})


@pytest.fixture
def stores(settings):
    readings = open_reading_store(settings)
    yield readings, sqlite_efficiency_stores(readings.database)
    readings.close()


def charging_windows(repaired_ms: int | None = None) -> list[EfficiencyWindow]:
    """Both vehicles charge at 11 kW the whole time; the faulty one's charger drops to 0.70 at ONSET
    (and is back at 0.92 from ``repaired_ms``, when given)."""
    dc = 11.0 / 12
    windows = []
    for stop in range(T0 + W, END + 1, W):
        faulty = stop - W >= ONSET and (repaired_ms is None or stop - W < repaired_ms)
        for vehicle, ratio in ((FAULTY, 0.70 if faulty else 0.92), (HEALTHY, 0.92)):
            windows.append(EfficiencyWindow(vehicle, vehicle.replace("EV", "MTR"), stop, dc / ratio, dc, 5, 5, 25.0,
                                            ratio))
    return sorted(windows, key=lambda w: (w.stop_ms, w.vehicle_id))


def written(efficiency: EfficiencyStores, repaired_ms: int | None = None) -> EfficiencyStores:
    assert efficiency.window_writer is not None
    windows = charging_windows(repaired_ms)
    for hour in range(T0, END, HOUR):
        efficiency.window_writer.replace_windows(W, hour, hour + HOUR,
                                                 [w for w in windows if hour < w.stop_ms <= hour + HOUR], hour)
    return efficiency


def stored_alerts(readings: SqliteReadingStore) -> list[tuple]:
    return readings.read("SELECT vehicle_id, rule, started_ms, state, fired_ms, resolved_ms, replayed FROM alerts "
                         "ORDER BY vehicle_id, started_ms")


def test_a_replay_finds_the_fault_at_its_onset_and_nothing_for_the_healthy_vehicle(stores, settings) -> None:
    readings, efficiency = stores
    runner = TaskRunner(written(efficiency), settings)
    report = replay.replay(runner, T0, END, END + 60_000)
    assert report.stops == (END - T0) // W
    (alert,) = report.alerts
    assert alert.vehicle_id == FAULTY and alert.rule == "low_efficiency" and alert.replayed
    # the first fully faulty window stops at ONSET + W; fired after the 5 min pending time
    assert ONSET + W <= alert.started_ms <= ONSET + 3 * W
    assert alert.fired_ms == alert.started_ms + 5 * 60_000 and alert.state == "firing"
    assert [a[0] for a in stored_alerts(readings) if a[3] != "cancelled"] == [FAULTY]
    (queued,), = readings.read("SELECT count(*) FROM notifications")
    assert queued == 0  # not asked to notify


def test_replaying_twice_stores_the_same_alerts(stores, settings) -> None:
    readings, efficiency = stores
    runner = TaskRunner(written(efficiency), settings)
    replay.replay(runner, T0, END, END + 60_000)
    first = stored_alerts(readings)
    second_report = replay.replay(runner, T0, END, END + 120_000)
    assert stored_alerts(readings) == first
    assert second_report.removed == len(first)


def test_a_replay_asked_to_notify_queues_the_webhooks(stores, settings) -> None:
    readings, efficiency = stores
    runner = TaskRunner(written(efficiency), settings)
    report = replay.replay(runner, T0, END, END + 60_000, notify=True)
    assert report.notifications == 1
    (payload,), = readings.read("SELECT payload FROM notifications")
    assert '"replayed": "true"' in payload and FAULTY in payload


def test_a_new_runner_replays_the_history_before_its_first_span(stores, settings) -> None:
    readings, efficiency = stores
    # windows as given (no readings to recompute them from): the runner as in influx mode
    runner = TaskRunner(replace(written(efficiency), window_writer=None), settings)
    runner.run_once(END + runner.offset_ms)
    firing = [a for a in efficiency.alerts.open_alerts() if a.state == "firing"]
    assert [(a.vehicle_id, a.replayed) for a in firing] == [(FAULTY, True)]
    assert firing[0].started_ms <= ONSET + 3 * W  # hours before the runner's first live span
    # still firing at the end of the replayed range: announced once, as a live runner would have
    (queued,), = readings.read("SELECT count(*) FROM notifications")
    assert queued == 1


def test_a_new_runner_does_not_announce_an_alert_that_fired_and_resolved_in_the_replayed_history(
        stores, settings) -> None:
    readings, efficiency = stores
    runner = TaskRunner(replace(written(efficiency, repaired_ms=ONSET + HOUR), window_writer=None), settings)
    runner.run_once(END + runner.offset_ms)
    (alert,) = [a for a in efficiency.alerts.recent_alerts(0) if a.state != "cancelled"]
    assert (alert.vehicle_id, alert.state, alert.replayed) == (FAULTY, "resolved", True)
    assert ONSET + HOUR < alert.resolved_ms <= ONSET + HOUR + 45 * 60_000
    (queued,), = readings.read("SELECT count(*) FROM notifications")
    assert queued == 0  # a past condition, over before the runner started: nothing to announce


def test_an_alerts_table_from_before_replay_gets_the_column(tmp_path, settings) -> None:
    readings = open_reading_store(settings)
    readings.close()
    conn = sqlite3.connect(settings.sqlite_path)
    conn.execute("""CREATE TABLE alerts (
        vehicle_id TEXT NOT NULL, rule TEXT NOT NULL, started_ms INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'resolved', 'cancelled')),
        meter_id TEXT, value REAL, fired_ms INTEGER, resolved_ms INTEGER, updated_ms INTEGER NOT NULL,
        PRIMARY KEY (vehicle_id, rule, started_ms)) WITHOUT ROWID""")
    conn.execute("INSERT INTO alerts VALUES ('EV-1', 'low_efficiency', 1, 'firing', 'MTR-1', 0.7, 2, NULL, 2)")
    conn.commit()
    conn.close()
    readings = open_reading_store(settings)
    try:
        (alert,) = sqlite_efficiency_stores(readings.database).alerts.open_alerts()
        assert alert.vehicle_id == "EV-1" and alert.replayed is False
    finally:
        readings.close()


def test_a_replay_of_some_vehicles_finds_for_them_what_a_whole_fleet_replay_finds_and_keeps_the_others(
        stores, settings) -> None:
    readings, efficiency = stores
    runner = TaskRunner(written(efficiency, repaired_ms=ONSET + HOUR), settings)
    replay.replay(runner, T0, END, END + 60_000)
    whole_fleet = [a for a in stored_alerts(readings) if a[0] == FAULTY]
    assert whole_fleet
    # As a live run judged it (the healthy vehicle's windows did not change): not the replay's to change.
    live = AlertRecord(HEALTHY, "low_efficiency", ONSET, "pending", "MTR-8", 0.84, None, None, ONSET)
    efficiency.alerts.save_alerts([live], [], END)
    report = replay.replay(runner, T0, END, END + 120_000, vehicle_ids=[FAULTY])
    assert [a for a in stored_alerts(readings) if a[0] == FAULTY] == whole_fleet
    assert report.removed == len(whole_fleet)
    assert efficiency.alerts.alert(HEALTHY, live.rule, live.started_ms) == live


def test_verdicts_from_a_replays_history_are_those_read_stop_by_stop(stores, settings) -> None:
    _, efficiency = stores
    runner = TaskRunner(written(efficiency, repaired_ms=ONSET + HOUR), settings)
    history = runner.history(T0 - 5 * HOUR, END, [FAULTY, HEALTHY])
    verdicts = [runner.verdicts_at(stop) for stop in range(T0 + W, END + 1, W)]
    assert any((low := verdict[FAULTY].efficiency) is not None and low < 0.85 for verdict in verdicts)
    assert [runner.verdicts_at(stop, history) for stop in range(T0 + W, END + 1, W)] == verdicts


def test_a_vehicle_idle_through_the_span_gets_no_verdict_and_its_alert_steps_as_on_its_own(stores, settings) -> None:
    _, efficiency = stores
    runner = TaskRunner(written(efficiency), settings)
    assert efficiency.window_writer is not None
    idle = [EfficiencyWindow(vehicle, vehicle.replace("EV", "MTR"), stop, 0.01, 0.008, 5, 5, 25.0, None)
            for stop in range(END + W, END + HOUR + 1, W) for vehicle in (FAULTY, HEALTHY)]
    efficiency.window_writer.replace_windows(W, END, END + HOUR, idle, END)
    stop = END + HOUR
    verdicts = runner.verdicts_at(stop)
    assert verdicts == {}
    firing = AlertRecord(FAULTY, "low_efficiency", END - HOUR, "firing", "MTR-7", 0.7, END - 50 * 60_000, None, END)
    pending = replace(firing, vehicle_id=HEALTHY, state="pending", fired_ms=None)
    own = {vehicle: alerts.span_verdict(vehicle, efficiency.windows.windows(W, stop - HOUR, stop, vehicle), stop, W,
                                        runner.policy) for vehicle in (FAULTY, HEALTHY)}
    assert alerts.evaluate([firing, pending], verdicts, stop, runner.policy) == \
        alerts.evaluate([firing, pending], own, stop, runner.policy)


@pytest.mark.parametrize("vehicle_ids", [None, [FAULTY]], ids=["fleet", "marked vehicle"])
def test_an_alert_pending_at_the_replays_start_carries_on_and_is_not_found_twice(stores, settings,
                                                                                 vehicle_ids) -> None:
    readings, efficiency = stores
    runner = TaskRunner(written(efficiency), settings)
    for stop in range(T0 + W, END + 1, W):  # judged live first, stop by stop
        runner.evaluate_alerts(stop, stop)
    (live,) = [a for a in efficiency.alerts.recent_alerts(0) if a.state == "firing"]
    assert live.vehicle_id == FAULTY and live.fired_ms > live.started_ms
    # a replay that starts while that alert was pending (late readings marked that window)
    replay.replay(runner, live.started_ms, END, END + 60_000, vehicle_ids=vehicle_ids)
    firing = [a for a in efficiency.alerts.recent_alerts(0) if a.state == "firing"]
    assert [(a.vehicle_id, a.started_ms, a.fired_ms) for a in firing] == [(FAULTY, live.started_ms, live.fired_ms)]
    assert [a[0] for a in stored_alerts(readings) if a[3] != "cancelled"] == [FAULTY]
