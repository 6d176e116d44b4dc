"""InfluxWindowSource and the analytics service in influx mode against a real InfluxDB: windows
written into the efficiency bucket the way the task's ``to()`` writes them (tags vehicle_id and
meter_id, a null field written as no field) come back equal to the embedded store's, and so do the
reports, series and fleet summary built on them. Values travel as params (``extern``), so an id
cannot inject Flux; a wrong token, a missing bucket, a stopped engine become StorageUnavailable and
503; the task runner in influx mode evaluates alerts over the windows InfluxDB holds.

(The 500 and the error table in the middle of an answer stay with the stand-in in
tests/integration/test_influx_windows.py: a real engine produces neither on demand.)
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

import analytics
from analytics import queries
from chargewatch.alerts import AlertPolicy
from chargewatch.bootstrap import open_efficiency_stores
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.lineprotocol import encode_point
from chargewatch.settings import Settings
from chargewatch.stores import StorageUnavailable
from chargewatch.stores.influx_windows import InfluxWindowSource
from chargewatch.stores.sqlite import SqliteReadingStore
from chargewatch.stores.sqlite_windows import SqliteWindowStore
from taskrunner.runner import INFLUX_TASK_GRACE_MS, TaskRunner
from tests.e2e.harness import free_port
from tests.efficiency_fixture import expected_windows

pytestmark = pytest.mark.influx

W = 300_000
HOUR = 3_600_000
T0 = 1_795_413_600_000  # 2026-11-23T06:00:00Z, where the shared fixture starts


def generated_windows() -> list[EfficiencyWindow]:
    """Three hours of a few vehicles after the fixture: awkward floats, idle and one-sided windows."""
    rng = random.Random(42)
    windows = []
    for k in range(6, 42):
        stop = T0 + (k + 1) * W
        for vehicle, ratio in (("VEHICLE_001", 0.91), ("VEHICLE_002", 0.78), ("VEHICLE_003", 1.04)):
            ac = round(rng.uniform(0.0, 1.7), 6)
            ac_readings = rng.choice((0, 4, 5, 5, 5))
            ac = ac if ac_readings else 0.0
            dc_readings = rng.choice((0, 5, 5, 5))
            dc = ac * ratio * rng.uniform(0.97, 1.03) if dc_readings else 0.0
            temp = rng.uniform(15.0, 35.0) if dc_readings else None
            efficiency = dc / ac if ac >= 0.1 else None
            windows.append(EfficiencyWindow(vehicle, "METER_" + vehicle[-3:], stop, ac, dc, ac_readings,
                                            dc_readings, temp, efficiency))
    return windows


ALL_WINDOWS = expected_windows() + generated_windows()
VEHICLES = sorted({w.vehicle_id for w in ALL_WINDOWS})


def window_lines(windows: list[EfficiencyWindow]) -> str:
    """The windows as the task's ``to()`` writes them: measurement efficiency, time = window stop (ms)."""
    return "\n".join(encode_point(
        "efficiency", {"vehicle_id": w.vehicle_id, "meter_id": w.meter_id},
        {"ac_kwh": w.ac_kwh, "dc_kwh": w.dc_kwh, "efficiency": w.efficiency, "ac_readings": w.ac_readings,
         "dc_readings": w.dc_readings, "avg_battery_temp": w.avg_battery_temp}, w.stop_ms) for w in windows)


def write_windows(server, org: str, bucket: str, windows: list[EfficiencyWindow]) -> None:
    server.write(bucket, window_lines(windows), precision="ms", org=org)


@pytest.fixture(scope="module")
def org(_session_influx):
    """An organization of this module's own with the windows in ``efficiency``."""
    name = f"cw_store_{int(time.time() * 1000)}"
    org_id = _session_influx.api("POST", "/api/v2/orgs", json={"name": name})["id"]
    _session_influx.api("POST", "/api/v2/buckets", json={"orgID": org_id, "name": "efficiency", "retentionRules": []})
    write_windows(_session_influx, name, "efficiency", ALL_WINDOWS)
    yield name
    _session_influx.api("DELETE", f"/api/v2/orgs/{org_id}")


def influx_settings(tmp_path, server, org: str, **influx: Any) -> Settings:
    return Settings(data_dir=tmp_path / "influx", store="influx", sqlite={"synchronous": "normal"},
                    auth={"enabled": False},
                    influx={"url": server.url, "token": server.token, "org": org, **influx})


@pytest.fixture
def embedded(tmp_path):
    """The embedded store holding the same windows, written as the task runner writes them."""
    readings = SqliteReadingStore(tmp_path / "embedded.db", synchronous="normal")
    store = SqliteWindowStore(readings.database)
    store.replace_windows(W, T0, T0 + 4 * HOUR, ALL_WINDOWS, 0)
    yield store
    readings.close()


@pytest.fixture
def local(tmp_path):
    """The influx-mode local file: alerts and runner state, no windows at all."""
    readings = SqliteReadingStore(tmp_path / "local.db", synchronous="normal")
    yield readings
    readings.close()


@pytest.fixture
def store(tmp_path, influx, org):
    store = InfluxWindowSource.from_settings(influx_settings(tmp_path, influx, org))
    yield store
    store.close()


PERIODS = [queries.Period(T0, T0 + 4 * HOUR), queries.Period(T0 + 2 * W, T0 + 30 * W),
           queries.Period(T0 + HOUR, T0 + 2 * HOUR), queries.Period(T0 + 5 * HOUR, T0 + 6 * HOUR)]


@pytest.mark.parametrize("period", PERIODS)
def test_windows_read_from_influxdb_equal_the_embedded_stores(store, embedded, period) -> None:
    assert store.windows(W, period.start_ms, period.end_ms) == embedded.windows(W, period.start_ms, period.end_ms)
    for vehicle_id in VEHICLES:
        got = store.windows(W, period.start_ms, period.end_ms, vehicle_id)
        assert got == embedded.windows(W, period.start_ms, period.end_ms, vehicle_id)
        assert all(type(w.ac_readings) is int and type(w.dc_readings) is int for w in got)
    assert store.windows_of(W, period.start_ms, period.end_ms, ["EV-101", "CAR-9"]) == embedded.windows_of(
        W, period.start_ms, period.end_ms, ["EV-101", "CAR-9"])


def test_every_window_of_the_bucket_comes_back(store) -> None:
    assert store.windows(W, T0, T0 + 4 * HOUR) == sorted(
        ALL_WINDOWS, key=lambda w: (w.stop_ms, w.vehicle_id, w.meter_id or ""))


def test_an_unpaired_vehicles_windows_have_no_meter(store) -> None:
    windows = store.windows(W, T0, T0 + HOUR, "CAR-9")
    assert windows and all(w.meter_id is None for w in windows)


@pytest.mark.parametrize("period", PERIODS)
def test_performance_reports_and_series_equal_the_embedded_ones(store, embedded, period) -> None:
    for vehicle_id in VEHICLES:
        assert queries.performance_report(store, vehicle_id, period, W, AlertPolicy()) == \
            queries.performance_report(embedded, vehicle_id, period, W, AlertPolicy())
        assert queries.efficiency_series(store, vehicle_id, period, W) == \
            queries.efficiency_series(embedded, vehicle_id, period, W)


@pytest.mark.parametrize("period", PERIODS)
def test_the_fleet_summary_equals_the_embedded_one(store, embedded, period) -> None:
    got = queries.fleet_summary(store, period, W, AlertPolicy())
    want = queries.fleet_summary(embedded, period, W, AlertPolicy())
    # Both engines sum spans with plain float addition (Flux sum(), SQLite total()): a few ulps apart.
    assert (got.period, got.vehicles, got.vehicles_charging, got.distribution, got.below_threshold,
            got.above_one) == (want.period, want.vehicles, want.vehicles_charging, want.distribution,
                               want.below_threshold, want.above_one)
    assert (got.ac_kwh, got.dc_kwh) == pytest.approx((want.ac_kwh, want.dc_kwh), rel=1e-12)
    assert [w.vehicle_id for w in got.worst] == [w.vehicle_id for w in want.worst]
    assert [w.efficiency for w in got.worst] == pytest.approx([w.efficiency for w in want.worst], rel=1e-12)
    totals, reference = store.vehicle_totals(W, period.start_ms, period.end_ms), embedded.vehicle_totals(
        W, period.start_ms, period.end_ms)
    assert list(totals) == sorted(reference)
    for vehicle_id, want_totals in reference.items():
        got_totals = totals[vehicle_id]
        for name, value in want_totals._asdict().items():
            assert getattr(got_totals, name) == pytest.approx(value, rel=1e-12, abs=1e-12), (vehicle_id, name)
            assert type(getattr(got_totals, name)) is type(value), (vehicle_id, name)


def test_an_id_reaches_influxdb_as_a_param_and_cannot_inject_flux(store) -> None:
    # Spliced into the Flux text, this id would select every other vehicle; as an extern param it is
    # one string that no vehicle has.
    hostile = 'EV-101" or r.vehicle_id != "'
    assert store.windows(W, T0, T0 + 4 * HOUR, hostile) == []
    assert {w.vehicle_id for w in store.windows(W, T0, T0 + 4 * HOUR, "EV-101")} == {"EV-101"}


def test_the_bucket_comes_from_the_settings(tmp_path, influx, org) -> None:
    org_id = influx.api("GET", "/api/v2/orgs", params={"org": org})["orgs"][0]["id"]
    influx.api("POST", "/api/v2/buckets", json={"orgID": org_id, "name": "fleet_eff", "retentionRules": []})
    few = [w for w in ALL_WINDOWS if w.vehicle_id == "VEHICLE_002"][:5]
    write_windows(influx, org, "fleet_eff", few)
    store = InfluxWindowSource.from_settings(influx_settings(tmp_path, influx, org, efficiency_bucket="fleet_eff"))
    try:
        assert store.windows(W, T0, T0 + 4 * HOUR) == few
    finally:
        store.close()


def failing_store(tmp_path, influx, org, failure: str) -> InfluxWindowSource:
    """A store whose InfluxDB refuses: a wrong token (401), a bucket that is not there (404), or a port
    nothing listens on (connection refused, as a stopped influxd)."""
    overrides: dict[str, Any] = {"request_timeout_seconds": 5}
    if failure == "401":
        overrides["token"] = "wrong-token"
    elif failure == "404":
        overrides["efficiency_bucket"] = "no_such_bucket"
    elif failure == "refused":
        overrides["url"] = f"http://127.0.0.1:{free_port()}"
    return InfluxWindowSource.from_settings(influx_settings(tmp_path, influx, org, **overrides))


@pytest.mark.parametrize("failure, message", [("401", "answered 401"), ("404", "answered 404"),
                                              ("refused", "cannot reach")])
def test_influxdb_failures_become_storage_unavailable(tmp_path, influx, org, failure, message) -> None:
    store = failing_store(tmp_path, influx, org, failure)
    try:
        with pytest.raises(StorageUnavailable, match=message):
            store.windows(W, T0, T0 + HOUR, "EV-101")
        with pytest.raises(StorageUnavailable, match=message):
            store.vehicle_totals(W, T0, T0 + HOUR)
    finally:
        store.close()


def test_a_store_without_a_token_refuses_to_start(tmp_path, influx, org) -> None:
    with pytest.raises(StorageUnavailable, match="CHARGEWATCH_INFLUX__TOKEN"):
        InfluxWindowSource.from_settings(influx_settings(tmp_path, influx, org, token=""))


def assert_json_close(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-12), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), path
        for key in want:
            assert_json_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_json_close(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def test_the_analytics_routes_answer_alike_in_both_modes(tmp_path, influx, org, local, embedded) -> None:
    influx_app = analytics.create_app(influx_settings(tmp_path, influx, org), local).test_client()
    embedded_app = analytics.create_app(
        Settings(data_dir=tmp_path / "embedded", sqlite={"synchronous": "normal"}, auth={"enabled": False}),
        SqliteReadingStore(embedded.database)).test_client()
    span = "start=2026-11-23T06:00:00Z&stop=2026-11-23T10:00:00Z"
    for path in ["/v1/analytics/performance/EV-101", "/v1/analytics/performance/VEHICLE_002",
                 "/v1/analytics/efficiency/CAR-9", "/v1/analytics/efficiency/VEHICLE_003"]:
        got, want = influx_app.get(f"{path}?{span}"), embedded_app.get(f"{path}?{span}")
        assert (got.status_code, got.get_json()) == (200, want.get_json()), path
    got, want = influx_app.get(f"/v1/analytics/fleet/summary?{span}"), embedded_app.get(
        f"/v1/analytics/fleet/summary?{span}")
    assert got.status_code == 200
    assert_json_close(got.get_json(), want.get_json())


def test_the_analytics_routes_answer_503_while_influxdb_is_down(tmp_path, own_influxd, local) -> None:
    own_influxd.create_bucket("efficiency")
    write_windows(own_influxd, own_influxd.org, "efficiency", ALL_WINDOWS)
    client = analytics.create_app(influx_settings(tmp_path, own_influxd, own_influxd.org,
                                                  request_timeout_seconds=5), local).test_client()
    span = "start=2026-11-23T06:00:00Z&stop=2026-11-23T07:00:00Z"
    paths = ["/v1/analytics/performance/EV-101", "/v1/analytics/fleet/summary", "/v1/analytics/efficiency/EV-101"]
    assert [client.get(f"{path}?{span}").status_code for path in paths] == [200, 200, 200]

    own_influxd.kill9()

    for path in paths:
        response = client.get(f"{path}?{span}")
        assert response.status_code == 503, path
        assert set(response.get_json()) >= {"error", "message"}
    assert client.get("/v1/analytics/alerts").status_code == 200  # alerts live in the local file
    own_influxd.restart()
    assert client.get(f"{paths[0]}?{span}").status_code == 200  # and it answers again once InfluxDB is back


def test_the_runner_in_influx_mode_evaluates_alerts_over_the_tasks_windows(tmp_path, influx, org, local) -> None:
    org_id = influx.api("GET", "/api/v2/orgs", params={"org": org})["orgs"][0]["id"]
    influx.api("POST", "/api/v2/buckets", json={"orgID": org_id, "name": "runner_eff", "retentionRules": []})
    settings = influx_settings(tmp_path, influx, org, efficiency_bucket="runner_eff")
    last_stop = T0 + 2 * HOUR
    low = [EfficiencyWindow("VEHICLE_009", "METER_009", last_stop - k * W, 2.0, 1.4, 5, 5, 25.0, 0.7)
           for k in range(24)]
    write_windows(influx, org, "runner_eff", low)
    stores = open_efficiency_stores(settings, local.database)  # windows from InfluxDB, the rest local
    try:
        runner = TaskRunner(stores, settings)
        now_ms = last_stop + settings.efficiency.offset_seconds * 1000 + INFLUX_TASK_GRACE_MS
        assert runner.latest_stop(now_ms) == last_stop and runner.latest_stop(now_ms - 1) == last_stop - W
        report = runner.run_once(now_ms)
    finally:
        stores.close()
    assert (report.latest_stop_ms, report.windows_written, report.ranges_computed) == (last_stop, 0, 0)
    [alert] = stores.alerts.open_alerts()
    assert (alert.vehicle_id, alert.rule, alert.state) == ("VEHICLE_009", "low_efficiency", "firing")
    assert SqliteWindowStore(local.database).windows(W, T0, last_stop) == []  # nothing computed or written locally
    assert stores.runner_state.load()["last_stop_ms"] == last_stop
