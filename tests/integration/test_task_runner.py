"""The embedded task runner on a real SQLite file: parity with the shared fixture, idempotence,
late data, catch-up, one runner per data directory, and what analytics reports about it."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

import analytics
from chargewatch.bootstrap import open_reading_store, sqlite_efficiency_stores
from chargewatch.readings import READING, ReadingRules
from chargewatch.settings import Settings
from chargewatch.stores import PairedReading
from taskrunner.runner import RunnerBusy, TaskRunner, hold_runner_lock
from tests.efficiency_fixture import FIXTURE, expected_windows, time_ms

FIXTURE_START = time_ms(FIXTURE["range"]["start"])
FIXTURE_END = time_ms(FIXTURE["range"]["stop"])
W = 300_000


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, sqlite={"synchronous": "normal"}, auth={"enabled": False})


@pytest.fixture
def stores(settings):
    readings = open_reading_store(settings)
    yield readings, sqlite_efficiency_stores(readings.database)
    readings.close()


def fixture_readings(received_ms: int) -> list[PairedReading]:
    rules = ReadingRules(now=datetime.fromtimestamp(FIXTURE_END / 1000, timezone.utc), retention=timedelta(days=3650))
    paired = []
    for point in FIXTURE["readings"]:
        tags, fields = point["tags"], point["fields"]
        if point["measurement"] == "meter":
            payload = {"meterId": tags["meter_id"], "kwhConsumedAc": fields["kwh_consumed_ac"],
                       "voltage": fields["voltage"]}
        else:
            payload = {"vehicleId": tags["vehicle_id"], "soc": fields["soc"],
                       "kwhDeliveredDc": fields["kwh_delivered_dc"], "batteryTemp": fields["battery_temp"]}
        reading = READING.validate_python({**payload, "timestamp": point["time"]}, context=rules.context())
        paired.append(PairedReading(reading, tags.get("vehicle_id"), tags.get("meter_id"), received_ms))
    return paired


def test_the_embedded_engine_reproduces_the_shared_fixture(stores, settings) -> None:
    readings, efficiency = stores
    readings.write(fixture_readings(FIXTURE_END))
    runner = TaskRunner(efficiency, settings)
    runner.compute(FIXTURE_START, FIXTURE_END, FIXTURE_END)
    assert efficiency.windows.windows(W, FIXTURE_START, FIXTURE_END) == expected_windows()


def test_recomputing_a_range_rewrites_the_same_windows(stores, settings) -> None:
    readings, efficiency = stores
    readings.write(fixture_readings(FIXTURE_END))
    runner = TaskRunner(efficiency, settings)
    for _ in range(3):
        runner.compute(FIXTURE_START, FIXTURE_END, FIXTURE_END)
    assert efficiency.windows.windows(W, FIXTURE_START, FIXTURE_END) == expected_windows()
    (count,), = readings.read("SELECT count(*) FROM efficiency")
    assert count == len(expected_windows())


def test_a_run_computes_the_trailing_windows_then_each_new_one(stores, settings) -> None:
    readings, efficiency = stores
    readings.write(fixture_readings(FIXTURE_END))
    runner = TaskRunner(efficiency, settings)
    report = runner.run_once(FIXTURE_END + 30_000)
    assert report.latest_stop_ms == FIXTURE_END
    assert efficiency.windows.windows(W, FIXTURE_START, FIXTURE_END) == expected_windows()
    assert efficiency.runner_state.load()["last_stop_ms"] == FIXTURE_END


def test_a_reading_hours_late_is_counted_at_the_next_run(stores, settings, make_meter, paired) -> None:
    readings, efficiency = stores
    runner = TaskRunner(efficiency, settings)
    day = FIXTURE_START - 86_400_000
    early = make_meter(meter_id="METER_001", timestamp=datetime.fromtimestamp((day + 60_000) / 1000, timezone.utc))
    readings.write([paired(early, vehicle_id="VEHICLE_001", received_ms=day + 60_000)])
    runner.run_once(day + 2 * 3_600_000)
    late = make_meter(meter_id="METER_001", kwh_consumed_ac=2.0,
                      timestamp=datetime.fromtimestamp((day + 120_000) / 1000, timezone.utc))
    readings.write([paired(late, vehicle_id="VEHICLE_001", received_ms=day + 5 * 3_600_000)])
    # marked by ingest: computed without it
    assert efficiency.window_writer.stale_windows(W) == [(day + W, "VEHICLE_001", 1)]
    runner.run_once(day + 5 * 3_600_000)
    (window,) = efficiency.windows.windows(W, day, day + W, "VEHICLE_001")
    assert (window.ac_kwh, window.ac_readings) == (1.25 + 2.0, 2)
    assert efficiency.window_writer.stale_windows(W) == []


def test_a_regular_run_recomputes_only_the_newest_window_and_the_vehicles_late_readings_marked(
    stores, settings, make_meter, paired
) -> None:
    readings, efficiency = stores
    runner = TaskRunner(efficiency, settings)
    base = FIXTURE_START - 86_400_000

    def at(offset_ms: int):
        return datetime.fromtimestamp((base + offset_ms) / 1000, timezone.utc)

    readings.write([paired(make_meter(meter_id=f"METER_00{n}", timestamp=at(m * 60_000)), vehicle_id=f"VEHICLE_00{n}",
                           received_ms=base + m * 60_000) for n in (1, 2) for m in range(30)])
    first_run = base + 6 * W + 30_000
    runner.run_once(first_run)
    late = make_meter(meter_id="METER_001", kwh_consumed_ac=2.0, timestamp=at(2 * W + 1_000))
    readings.write([paired(late, vehicle_id="VEHICLE_001", received_ms=first_run + 10_000)])
    readings.write([paired(make_meter(meter_id="METER_002", timestamp=at(6 * W + 1_000)), vehicle_id="VEHICLE_002",
                           received_ms=first_run + 20_000)])

    second_run = first_run + W
    report = runner.run_once(second_run)

    recomputed = {(w.vehicle_id, w.stop_ms) for w in efficiency.windows.windows(W, base, base + 7 * W)
                  if readings.read("SELECT computed_ms FROM efficiency WHERE window_ms = ? AND stop_ms = ? AND "
                                   "vehicle_id = ?", (W, w.stop_ms, w.vehicle_id))[0][0] == second_run}
    assert recomputed == {("VEHICLE_001", base + 3 * W), ("VEHICLE_002", base + 7 * W)}
    assert report.ranges_computed == 2  # the newest window, and one marked window
    [late_window] = efficiency.windows.windows(W, base + 2 * W, base + 3 * W, "VEHICLE_001")
    assert (late_window.ac_kwh, late_window.ac_readings) == (5 * 1.25 + 2.0, 6)
    assert efficiency.windows.vehicle_totals(W, base, base + 7 * W)["VEHICLE_001"].ac_kwh == 30 * 1.25 + 2.0


def test_after_downtime_one_run_catches_up(stores, settings, make_vehicle, paired) -> None:
    readings, efficiency = stores
    runner = TaskRunner(efficiency, settings)
    base = FIXTURE_START - 86_400_000
    runner.run_once(base + 30_000)
    batch = [paired(make_vehicle(vehicle_id="VEHICLE_007",
                                 timestamp=datetime.fromtimestamp((base + m * 60_000) / 1000, timezone.utc)),
                    meter_id="METER_007", received_ms=base + m * 60_000)
             for m in range(0, 180)]
    readings.write(batch)
    runner.run_once(base + 3 * 3_600_000 + 30_000)  # three hours later
    windows = efficiency.windows.windows(W, base, base + 3 * 3_600_000, "VEHICLE_007")
    assert len(windows) == 36
    assert sum(w.dc_readings for w in windows) == 180


def test_only_one_runner_may_hold_a_data_directory(tmp_path) -> None:
    fd = hold_runner_lock(tmp_path)
    try:
        with pytest.raises(RunnerBusy, match="another task runner"):
            hold_runner_lock(tmp_path)
    finally:
        os.close(fd)
    os.close(hold_runner_lock(tmp_path))  # free again once released


def test_analytics_reports_the_runners_last_run_and_lag(stores, settings) -> None:
    readings, efficiency = stores
    app = analytics.create_app(settings, readings)
    client = app.test_client()
    assert client.get("/health").get_json()["details"]["taskRunner"]["status"] == "never_ran"
    TaskRunner(efficiency, settings).run_once(int(datetime.now(timezone.utc).timestamp() * 1000))
    runner = client.get("/health").get_json()["details"]["taskRunner"]
    assert runner["status"] == "ok" and 30 <= runner["lagSeconds"] <= 330
    metrics = client.get("/metrics").data.decode()
    assert "chargewatch_task_lag_seconds" in metrics and "chargewatch_task_last_run_timestamp_seconds" in metrics
