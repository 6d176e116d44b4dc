"""The Flux side of "one definition, two engines", against a real InfluxDB.

The shared fixture's readings (tests/fixtures/efficiency_windows.json) are written with the project's
line-protocol encoder into an organization of this module's own. The efficiency task, installed by
``setup_influx`` exactly as ``chargewatch influx setup`` installs it, runs inside InfluxDB (a run
started through the tasks API for the fixture's range stop, its status checked in the runs API and
in the ``_tasks`` bucket), and its windows must equal the fixture's expected windows, the ones
chargewatch/efficiency.py produces. The analytics queries and the InfluxDB efficiency store must read
them back the same. Flux sums naively (the reference uses fsum), so floats are compared with a
relative tolerance of 1e-9.
"""

from __future__ import annotations

import math
import time
from datetime import datetime

import pytest
import requests

from chargewatch.efficiency import EfficiencyWindow, span_totals
from chargewatch.influx import flux
from chargewatch.influx.setup import open_client, setup_influx
from chargewatch.lineprotocol import encode_point
from chargewatch.settings import Settings
from tests.efficiency_fixture import FIXTURE, expected_windows, time_ms

pytestmark = pytest.mark.influx

RANGE_START = datetime.fromisoformat(FIXTURE["range"]["start"].replace("Z", "+00:00"))
RANGE_STOP = datetime.fromisoformat(FIXTURE["range"]["stop"].replace("Z", "+00:00"))
REL_TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def org(_session_influx):
    name = f"cw_task_{int(time.time() * 1000)}"
    org_id = _session_influx.api("POST", "/api/v2/orgs", json={"name": name})["id"]
    yield name
    _session_influx.api("DELETE", f"/api/v2/orgs/{org_id}")


@pytest.fixture(scope="module")
def settings(_session_influx, org) -> Settings:
    window_seconds = FIXTURE["windowSeconds"]
    return Settings(
        influx={"url": _session_influx.url, "token": _session_influx.token, "org": org,
                "telemetry_retention_days": 0, "efficiency_retention_days": 0},
        efficiency={"window_seconds": window_seconds, "min_energy_kwh": FIXTURE["minEnergyKwh"],
                    "recompute_windows": int((RANGE_STOP - RANGE_START).total_seconds()) // window_seconds},
    )


@pytest.fixture(scope="module")
def client(settings):
    client = open_client(settings)
    setup_influx(settings, client)  # the buckets and the task, as `chargewatch influx setup` makes them
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def written(settings, client):
    """The fixture's readings, written as stored points (pairing tags included), ms precision."""
    from influxdb_client import WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    body = "\n".join(
        encode_point(point["measurement"], point["tags"], {k: float(v) for k, v in point["fields"].items()},
                     time_ms(point["time"]))
        for point in FIXTURE["readings"])
    client.write_api(write_options=SYNCHRONOUS).write(
        bucket=settings.influx.telemetry_bucket, org=settings.influx.org, record=body,
        write_precision=WritePrecision.MS)
    return len(FIXTURE["readings"])


def windows_from(tables) -> list[EfficiencyWindow]:
    windows = []
    for table in tables:
        for record in table.records:
            v = record.values
            windows.append(EfficiencyWindow(
                vehicle_id=v["vehicle_id"], meter_id=v.get("meter_id") or None,
                stop_ms=int(record.get_time().timestamp() * 1000),
                ac_kwh=v["ac_kwh"], dc_kwh=v["dc_kwh"], ac_readings=v["ac_readings"], dc_readings=v["dc_readings"],
                avg_battery_temp=v.get("avg_battery_temp"), efficiency=v.get("efficiency")))
    return sorted(windows, key=lambda w: (w.stop_ms, w.vehicle_id, w.meter_id or ""))


def assert_same_windows(actual: list[EfficiencyWindow], expected: list[EfficiencyWindow]) -> None:
    key = lambda w: (w.stop_ms, w.vehicle_id, w.meter_id or "")  # noqa: E731
    assert [key(w) for w in actual] == [key(w) for w in sorted(expected, key=key)]
    for got, want in zip(actual, sorted(expected, key=key), strict=True):
        for name, want_value in want._asdict().items():
            got_value = getattr(got, name)
            if isinstance(want_value, float) and got_value is not None:
                assert math.isclose(got_value, want_value, rel_tol=REL_TOLERANCE, abs_tol=1e-12), (name, got, want)
            else:
                assert got_value == want_value, (name, got, want)
        assert type(got.ac_readings) is int and type(got.dc_readings) is int


def run_task_as_query(settings, client, *, write: bool):
    source = flux.task_as_query(flux.efficiency_task(settings), RANGE_STOP, write=write)
    return client.query_api().query(source, org=settings.influx.org)


def test_the_task_pipeline_reproduces_the_fixture_windows(settings, client, written):
    assert_same_windows(windows_from(run_task_as_query(settings, client, write=False)), expected_windows())


def test_the_analytics_queries_read_back_what_the_task_writes(settings, client, written):
    run_task_as_query(settings, client, write=True)
    run_task_as_query(settings, client, write=True)  # a rerun overwrites: idempotent
    query_api = client.query_api()
    span = {"_bucket": settings.influx.efficiency_bucket, "_start": RANGE_START, "_stop": RANGE_STOP}

    fleet = flux.read_query("windows")
    fleet.check_params(span)
    assert_same_windows(windows_from(query_api.query(fleet.source, params=span)), expected_windows())

    one = flux.read_query("vehicle_windows")
    for vehicle_id in sorted({w.vehicle_id for w in expected_windows()}):
        params = {**span, "_vehicle_id": vehicle_id}
        one.check_params(params)
        assert_same_windows(windows_from(query_api.query(one.source, params=params)),
                            [w for w in expected_windows() if w.vehicle_id == vehicle_id])

    totals_query = flux.read_query("vehicle_totals")
    totals_query.check_params(span)
    rows = {r.values["vehicle_id"]: r.values for t in query_api.query(totals_query.source, params=span)
            for r in t.records}
    expected_by_vehicle: dict[str, list[EfficiencyWindow]] = {}
    for window in expected_windows():
        expected_by_vehicle.setdefault(window.vehicle_id, []).append(window)
    assert sorted(rows) == sorted(expected_by_vehicle)
    for vehicle_id, windows in expected_by_vehicle.items():
        want, got = span_totals(windows), rows[vehicle_id]
        assert math.isclose(got["ac_kwh"], want.ac_kwh, rel_tol=REL_TOLERANCE, abs_tol=1e-12)
        assert math.isclose(got["dc_kwh"], want.dc_kwh, rel_tol=REL_TOLERANCE, abs_tol=1e-12)
        assert (got["ac_readings"], got["dc_readings"], got["windows"]) == (
            want.ac_readings, want.dc_readings, want.windows)
        assert math.isclose(got.get("battery_temp_sum") or 0.0, want.battery_temp_sum, rel_tol=REL_TOLERANCE)
        assert (got.get("battery_temp_readings") or 0) == want.battery_temp_readings


def test_the_influx_window_source_reads_the_fixture_windows(settings, client, written):
    from chargewatch.stores.influx_windows import InfluxWindowSource

    run_task_as_query(settings, client, write=True)
    store = InfluxWindowSource.from_settings(settings)
    window_ms = FIXTURE["windowSeconds"] * 1000
    start_ms, stop_ms = (int(t.timestamp() * 1000) for t in (RANGE_START, RANGE_STOP))
    try:
        assert_same_windows(store.windows(window_ms, start_ms, stop_ms), expected_windows())
        by_vehicle: dict[str, list[EfficiencyWindow]] = {}
        for window in expected_windows():
            by_vehicle.setdefault(window.vehicle_id, []).append(window)
        for vehicle_id, windows in by_vehicle.items():
            assert_same_windows(store.windows(window_ms, start_ms, stop_ms, vehicle_id), windows)
        totals = store.vehicle_totals(window_ms, start_ms, stop_ms)
        assert list(totals) == sorted(by_vehicle)
        for vehicle_id, windows in by_vehicle.items():
            want, got = span_totals(windows), totals[vehicle_id]
            assert (got.ac_readings, got.dc_readings, got.windows, got.battery_temp_readings) == (
                want.ac_readings, want.dc_readings, want.windows, want.battery_temp_readings)
            for name in ("ac_kwh", "dc_kwh", "battery_temp_sum"):
                assert math.isclose(getattr(got, name), getattr(want, name), rel_tol=REL_TOLERANCE, abs_tol=1e-12)
    finally:
        store.close()


def test_the_installed_task_runs_inside_influxdb_and_writes_the_fixture_windows(settings, client, written,
                                                                           _session_influx):
    influx = _session_influx
    [task] = [t for t in influx.api("GET", "/api/v2/tasks", params={"org": settings.influx.org})["tasks"]
              if t["name"] == flux.EFFICIENCY_TASK]
    assert task["status"] == "active"
    store_query = flux.read_query("windows")
    span = {"_bucket": settings.influx.efficiency_bucket, "_start": RANGE_START, "_stop": RANGE_STOP}
    influx.api("POST", "/api/v2/delete", params={"org": settings.influx.org,
                                                 "bucket": settings.influx.efficiency_bucket},
               json={"start": "1970-01-01T00:00:00Z", "stop": "2100-01-01T00:00:00Z"})
    assert windows_from(client.query_api().query(store_query.source, params=span)) == []  # all the task's own

    scheduled = RANGE_STOP.strftime("%Y-%m-%dT%H:%M:%SZ")
    run = influx.api("POST", f"/api/v2/tasks/{task['id']}/runs", json={"scheduledFor": scheduled})
    deadline = time.monotonic() + 60
    while run["status"] not in ("success", "failed", "canceled") and time.monotonic() < deadline:
        time.sleep(0.5)
        # While InfluxDB moves a finished run from its queue to the run log, the run answers 404 for
        # a moment ("failed to find run"): not an answer yet, ask again.
        polled = requests.get(f"{influx.url}/api/v2/tasks/{task['id']}/runs/{run['id']}",
                              headers={"Authorization": f"Token {influx.token}"}, timeout=60)
        if polled.status_code != 404:
            assert polled.status_code == 200, polled.text
            run = polled.json()
    logs = influx.api("GET", f"/api/v2/tasks/{task['id']}/runs/{run['id']}/logs")["events"]
    assert run["status"] == "success", logs

    # InfluxDB's own record of the run, where the bundle's task-health panel reads it.
    recorded = influx.query(
        'from(bucket: "_tasks") |> range(start: -1h) '
        f'|> filter(fn: (r) => r.taskID == "{task["id"]}" and r._field == "runID") |> group()',
        org=settings.influx.org)
    assert any(r["_value"] == run["id"] and r["status"] == "success" for r in recorded), recorded

    written_windows = windows_from(client.query_api().query(store_query.source, params=span))
    assert_same_windows(written_windows, expected_windows())
