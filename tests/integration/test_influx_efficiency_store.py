"""InfluxEfficiencyStore against a stand-in of InfluxDB's query API: the Flux files go out as written,
values only as params (``extern``), and the answers map to the same reports, series and fleet
summary the embedded store gives for the same windows; InfluxDB failures become 503."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

import pytest

import analytics
from analytics import queries
from analytics.alerts import AlertPolicy
from analytics.runner import INFLUX_TASK_GRACE_MS, TaskRunner
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.influx import flux
from chargewatch.settings import Settings
from chargewatch.stores import StorageUnavailable
from chargewatch.stores.influx_efficiency import InfluxEfficiencyStore
from chargewatch.stores.sqlite import SqliteReadingStore
from chargewatch.stores.sqlite_efficiency import SqliteEfficiencyStore
from tests.efficiency_fixture import expected_windows
from tests.influx_query_standin import InfluxQueryApi, QueryRequest, Table, error_csv
from tests.influx_standin import InfluxStandin, StandinResponse

pytest.importorskip("influxdb_client")

W = 300_000
HOUR = 3_600_000
T0 = 1_795_413_600_000  # 2026-11-23T06:00:00Z, where the shared fixture starts
QUERY_NAMES = ("windows", "vehicle_windows", "vehicle_totals")


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


class EfficiencyBucket:
    """Answers the three analytics queries over a list of windows, as InfluxDB would over the bucket:
    windows one table per series (a null-only field or an absent tag is no column at all), totals
    summed naively in time order as Flux ``sum()`` does."""

    def __init__(self, windows: list[EfficiencyWindow], bucket: str = "efficiency") -> None:
        self.windows = windows
        self.bucket = bucket
        self.sources = {flux.read_query(name).source: name for name in QUERY_NAMES}

    def answer(self, request: QueryRequest) -> list[Table] | StandinResponse:
        name = self.sources.get(request.query)
        if name is None:
            return StandinResponse.error(400, "invalid", "compilation failed: not one of the analytics queries")
        if request.params["_bucket"] != self.bucket:
            return StandinResponse.error(404, "not found", f'failed to initialize execute state: could not find '
                                         f'bucket "{request.params["_bucket"]}"')
        start_ms, stop_ms = (int(request.params[p].timestamp() * 1000) for p in ("_start", "_stop"))
        chosen = [w for w in self.windows if start_ms < w.stop_ms <= stop_ms
                  and request.params.get("_vehicle_id", w.vehicle_id) == w.vehicle_id]
        return self.totals(chosen) if name == "vehicle_totals" else self.series_tables(chosen)

    @staticmethod
    def series_tables(windows: list[EfficiencyWindow]) -> list[Table]:
        series: dict[tuple[str, str | None], list[EfficiencyWindow]] = defaultdict(list)
        for window in windows:
            series[(window.vehicle_id, window.meter_id)].append(window)
        tables = []
        for (vehicle_id, meter_id), rows in sorted(series.items(), key=lambda item: (item[0][0], item[0][1] or "")):
            columns = [("_time", "dateTime:RFC3339")] + ([("meter_id", "string")] if meter_id else []) + [
                ("vehicle_id", "string"), ("ac_kwh", "double"), ("ac_readings", "long")]
            if any(w.avg_battery_temp is not None for w in rows):
                columns.append(("avg_battery_temp", "double"))
            columns += [("dc_kwh", "double"), ("dc_readings", "long")]
            if any(w.efficiency is not None for w in rows):
                columns.append(("efficiency", "double"))
            tables.append(Table(columns, [
                {**vars(w), "_time": datetime.fromtimestamp(w.stop_ms / 1000, timezone.utc)}
                for w in sorted(rows, key=lambda w: w.stop_ms)]))
        return tables

    @staticmethod
    def totals(windows: list[EfficiencyWindow]) -> list[Table]:
        rows: dict[str, dict[str, Any]] = {}
        for w in sorted(windows, key=lambda w: w.stop_ms):
            row = rows.setdefault(w.vehicle_id, {"vehicle_id": w.vehicle_id, "ac_kwh": 0.0, "dc_kwh": 0.0,
                                                 "ac_readings": 0, "dc_readings": 0, "windows": 0})
            row["ac_kwh"] += w.ac_kwh
            row["dc_kwh"] += w.dc_kwh
            row["ac_readings"] += w.ac_readings
            row["dc_readings"] += w.dc_readings
            row["windows"] += 1
            if w.avg_battery_temp is not None and w.dc_readings > 0:
                row["battery_temp_sum"] = row.get("battery_temp_sum", 0.0) + w.avg_battery_temp * w.dc_readings
                row["battery_temp_readings"] = row.get("battery_temp_readings", 0) + w.dc_readings
        columns = [("ac_kwh", "double"), ("ac_readings", "long"), ("battery_temp_readings", "long"),
                   ("battery_temp_sum", "double"), ("dc_kwh", "double"), ("dc_readings", "long"),
                   ("vehicle_id", "string"), ("windows", "long")]
        return [Table(columns, [rows[v] for v in sorted(rows)])]


@pytest.fixture
def standin():
    with InfluxStandin() as server:
        yield server


@pytest.fixture
def bucket():
    return EfficiencyBucket(ALL_WINDOWS)


@pytest.fixture
def query_api(standin, bucket):
    return InfluxQueryApi(standin, bucket.answer)


def influx_settings(tmp_path, standin: InfluxStandin, **influx: Any) -> Settings:
    return Settings(data_dir=tmp_path / "influx", store="influx", sqlite={"synchronous": "normal"},
                    auth={"enabled": False},
                    influx={"url": standin.url, "token": standin.token, "org": standin.org, **influx})


@pytest.fixture
def embedded(tmp_path):
    """The embedded store holding the same windows, written as the task runner writes them."""
    readings = SqliteReadingStore(tmp_path / "embedded.db", synchronous="normal")
    store = SqliteEfficiencyStore(readings)
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
def influx(tmp_path, standin, query_api, local):
    store = InfluxEfficiencyStore.from_settings(influx_settings(tmp_path, standin), SqliteEfficiencyStore(local))
    yield store
    store.close()


PERIODS = [queries.Period(T0, T0 + 4 * HOUR), queries.Period(T0 + 2 * W, T0 + 30 * W),
           queries.Period(T0 + HOUR, T0 + 2 * HOUR), queries.Period(T0 + 5 * HOUR, T0 + 6 * HOUR)]


@pytest.mark.parametrize("period", PERIODS)
def test_windows_read_from_influxdb_equal_the_embedded_stores(influx, embedded, period) -> None:
    assert influx.windows(W, period.start_ms, period.end_ms) == embedded.windows(W, period.start_ms, period.end_ms)
    for vehicle_id in VEHICLES:
        got = influx.windows(W, period.start_ms, period.end_ms, vehicle_id)
        assert got == embedded.windows(W, period.start_ms, period.end_ms, vehicle_id)
        assert all(type(w.ac_readings) is int and type(w.dc_readings) is int for w in got)
    assert influx.windows_of(W, period.start_ms, period.end_ms, ["EV-101", "CAR-9"]) == embedded.windows_of(
        W, period.start_ms, period.end_ms, ["EV-101", "CAR-9"])


def test_every_window_of_the_bucket_comes_back(influx) -> None:
    assert influx.windows(W, T0, T0 + 4 * HOUR) == sorted(
        ALL_WINDOWS, key=lambda w: (w.stop_ms, w.vehicle_id, w.meter_id or ""))


def test_an_unpaired_vehicles_windows_have_no_meter(influx) -> None:
    windows = influx.windows(W, T0, T0 + HOUR, "CAR-9")
    assert windows and all(w.meter_id is None for w in windows)


@pytest.mark.parametrize("period", PERIODS)
def test_performance_reports_and_series_equal_the_embedded_ones(influx, embedded, period) -> None:
    for vehicle_id in VEHICLES:
        assert queries.performance_report(influx, vehicle_id, period, W, AlertPolicy()) == \
            queries.performance_report(embedded, vehicle_id, period, W, AlertPolicy())
        assert queries.efficiency_series(influx, vehicle_id, period, W) == \
            queries.efficiency_series(embedded, vehicle_id, period, W)


@pytest.mark.parametrize("period", PERIODS)
def test_the_fleet_summary_equals_the_embedded_one(influx, embedded, period) -> None:
    got = queries.fleet_summary(influx, period, W, AlertPolicy())
    want = queries.fleet_summary(embedded, period, W, AlertPolicy())
    # Both engines sum spans with plain float addition (Flux sum(), SQLite total()): a few ulps apart.
    assert (got.period, got.vehicles, got.vehicles_charging, got.distribution, got.below_threshold,
            got.above_one) == (want.period, want.vehicles, want.vehicles_charging, want.distribution,
                               want.below_threshold, want.above_one)
    assert (got.ac_kwh, got.dc_kwh) == pytest.approx((want.ac_kwh, want.dc_kwh), rel=1e-12)
    assert [w.vehicle_id for w in got.worst] == [w.vehicle_id for w in want.worst]
    assert [w.efficiency for w in got.worst] == pytest.approx([w.efficiency for w in want.worst], rel=1e-12)
    totals, reference = influx.vehicle_totals(W, period.start_ms, period.end_ms), embedded.vehicle_totals(
        W, period.start_ms, period.end_ms)
    assert list(totals) == sorted(reference)
    for vehicle_id, want_totals in reference.items():
        got_totals = totals[vehicle_id]
        for name, value in vars(want_totals).items():
            assert getattr(got_totals, name) == pytest.approx(value, rel=1e-12, abs=1e-12), (vehicle_id, name)
            assert type(getattr(got_totals, name)) is type(value), (vehicle_id, name)


def test_the_client_sends_the_files_flux_and_the_values_as_params(influx, query_api) -> None:
    hostile = 'EV-1" or r.vehicle_id != "'  # never reaches the Flux text, whatever it holds
    influx.windows(W, T0, T0 + HOUR, hostile)
    influx.windows(W, T0, T0 + HOUR)
    influx.vehicle_totals(W, T0, T0 + HOUR)
    one, fleet, totals = query_api.requests
    start, stop = datetime(2026, 11, 23, 6, tzinfo=timezone.utc), datetime(2026, 11, 23, 7, tzinfo=timezone.utc)
    assert one.query == flux.read_query("vehicle_windows").source
    assert one.params == {"_bucket": "efficiency", "_start": start, "_stop": stop, "_vehicle_id": hostile}
    assert hostile not in one.query and "2026" not in one.query
    assert [s["type"] for s in one.extern["body"]] == ["OptionStatement"] * 4
    assert fleet.query == flux.read_query("windows").source
    assert fleet.params == {"_bucket": "efficiency", "_start": start, "_stop": stop}
    assert totals.query == flux.read_query("vehicle_totals").source
    assert totals.params == fleet.params
    assert one.org == "chargewatch"
    assert one.dialect["annotations"] == ["datatype", "group", "default"] and one.dialect["header"] is True


def test_the_bucket_comes_from_the_settings(tmp_path, standin, local) -> None:
    InfluxQueryApi(standin, EfficiencyBucket(ALL_WINDOWS, bucket="fleet_eff").answer)
    store = InfluxEfficiencyStore.from_settings(influx_settings(tmp_path, standin, efficiency_bucket="fleet_eff"),
                                                SqliteEfficiencyStore(local))
    assert len(store.windows(W, T0, T0 + HOUR)) > 0


FAILURES = {
    "401": lambda standin, api: None,  # the store gets a wrong token
    "500": lambda standin, api: standin.outage("500"),
    "refused": lambda standin, api: standin.outage("refuse"),
    "error table": lambda standin, api: setattr(api, "answer", lambda request: error_csv(
        "runtime error @12:8-12:67: pivot: schema collision detected")),
}


@pytest.mark.parametrize("failure", FAILURES)
def test_influxdb_failures_become_storage_unavailable(tmp_path, standin, query_api, local, failure) -> None:
    token = "wrong-token" if failure == "401" else standin.token
    store = InfluxEfficiencyStore.from_settings(influx_settings(tmp_path, standin, token=token,
                                                                request_timeout_seconds=2),
                                                SqliteEfficiencyStore(local))
    FAILURES[failure](standin, query_api)
    with pytest.raises(StorageUnavailable) as raised:
        store.windows(W, T0, T0 + HOUR, "EV-101")
    assert {"401": "401", "500": "500", "refused": "cannot reach", "error table": "schema collision"}[failure] \
        in str(raised.value)
    with pytest.raises(StorageUnavailable):
        store.vehicle_totals(W, T0, T0 + HOUR)


def test_a_store_without_a_token_refuses_to_start(tmp_path, standin, local) -> None:
    with pytest.raises(StorageUnavailable, match="CHARGEWATCH_INFLUX__TOKEN"):
        InfluxEfficiencyStore.from_settings(influx_settings(tmp_path, standin, token=""), SqliteEfficiencyStore(local))


def assert_json_close(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-12), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), path
        for key in want:
            assert_json_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_json_close(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def test_the_analytics_routes_answer_alike_in_both_modes(tmp_path, standin, query_api, local, embedded) -> None:
    influx_app = analytics.create_app(influx_settings(tmp_path, standin), local).test_client()
    embedded_app = analytics.create_app(
        Settings(data_dir=tmp_path / "embedded", sqlite={"synchronous": "normal"}, auth={"enabled": False}),
        embedded.readings).test_client()
    span = "start=2026-11-23T06:00:00Z&stop=2026-11-23T10:00:00Z"
    for path in ["/v1/analytics/performance/EV-101", "/v1/analytics/performance/VEHICLE_002",
                 "/v1/analytics/efficiency/CAR-9", "/v1/analytics/efficiency/VEHICLE_003"]:
        got, want = influx_app.get(f"{path}?{span}"), embedded_app.get(f"{path}?{span}")
        assert (got.status_code, got.get_json()) == (200, want.get_json()), path
    got, want = influx_app.get(f"/v1/analytics/fleet/summary?{span}"), embedded_app.get(
        f"/v1/analytics/fleet/summary?{span}")
    assert got.status_code == 200
    assert_json_close(got.get_json(), want.get_json())


@pytest.mark.parametrize("failure", ["500", "refused"])
def test_the_analytics_routes_answer_503_while_influxdb_fails(tmp_path, standin, query_api, local, failure) -> None:
    client = analytics.create_app(influx_settings(tmp_path, standin, request_timeout_seconds=2), local).test_client()
    FAILURES[failure](standin, query_api)
    for path in ["/v1/analytics/performance/EV-101", "/v1/analytics/fleet/summary", "/v1/analytics/efficiency/EV-101"]:
        response = client.get(f"{path}?start=2026-11-23T06:00:00Z&stop=2026-11-23T07:00:00Z")
        assert response.status_code == 503, path
        assert set(response.get_json()) >= {"error", "message"}
    assert client.get("/v1/analytics/alerts").status_code == 200  # alerts live in the local file


def test_the_runner_in_influx_mode_evaluates_alerts_over_the_tasks_windows(tmp_path, standin, local) -> None:
    settings = influx_settings(tmp_path, standin)
    last_stop = T0 + 2 * HOUR
    low = [EfficiencyWindow("VEHICLE_009", "METER_009", last_stop - k * W, 2.0, 1.4, 5, 5, 25.0, 0.7)
           for k in range(24)]
    api = InfluxQueryApi(standin, EfficiencyBucket(low).answer)
    local_efficiency = SqliteEfficiencyStore(local)
    runner = TaskRunner(InfluxEfficiencyStore.from_settings(settings, local_efficiency), settings,
                        compute_windows=False)
    now_ms = last_stop + settings.efficiency.offset_seconds * 1000 + INFLUX_TASK_GRACE_MS
    assert runner.latest_stop(now_ms) == last_stop and runner.latest_stop(now_ms - 1) == last_stop - W
    report = runner.run_once(now_ms)
    assert (report.latest_stop_ms, report.windows_written, report.ranges_computed) == (last_stop, 0, 0)
    [alert] = local_efficiency.open_alerts()
    assert (alert.vehicle_id, alert.rule, alert.state) == ("VEHICLE_009", "low_efficiency", "firing")
    assert local_efficiency.windows(W, T0, last_stop) == []  # nothing computed or written locally
    assert {r.query for r in api.requests} <= {flux.read_query(n).source for n in QUERY_NAMES}
    assert local_efficiency.runner_state()["last_stop_ms"] == last_stop
