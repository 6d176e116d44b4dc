"""Analytics routes through Flask's test client, on the in-memory fakes of every port (no disk, no
network): what each route answers for the windows, alerts and runner state it is given, its
parameters and their errors, auth, and readiness. The real processes are in tests/e2e."""

from __future__ import annotations

import time

import pytest

import analytics
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.efficiency_ports import AlertRecord, EfficiencyStores
from chargewatch.settings import Settings
from chargewatch.stores import StorageUnavailable
from chargewatch.stores.memory import InMemoryReadingStore
from chargewatch.stores.memory_efficiency import InMemoryWindowStore, in_memory_efficiency_stores

READ = {"Authorization": "Token r"}
WRITE = {"Authorization": "Token w"}
W = 300_000
T0 = 1_795_413_600_000  # 2026-11-23T06:00:00Z
HOUR_SPAN = "start=2026-11-23T06:00:00Z&stop=2026-11-23T07:00:00Z"


def window(vehicle: str, stop_ms: int, ac: float, dc: float, meter: str | None = "auto") -> EfficiencyWindow:
    meter_id = vehicle.replace("VEHICLE", "METER") if meter == "auto" else meter
    return EfficiencyWindow(vehicle, meter_id, stop_ms, ac, dc, 5 if ac else 0, 5 if dc else 0, 25.0 if dc else None,
                            dc / ac if ac >= 0.1 else None)


def hour_of(vehicle: str, ratio: float, ac: float = 1.0, start_ms: int = T0) -> list[EfficiencyWindow]:
    return [window(vehicle, start_ms + k * W, ac, ac * ratio) for k in range(1, 13)]


@pytest.fixture
def efficiency() -> EfficiencyStores:
    return in_memory_efficiency_stores()


def load(efficiency: EfficiencyStores, windows: list[EfficiencyWindow]) -> None:
    assert isinstance(efficiency.windows, InMemoryWindowStore)
    efficiency.windows.replace_windows(W, T0 - 24 * 3_600_000, T0 + 24 * 3_600_000, windows, T0)


def make_client(tmp_path, efficiency: EfficiencyStores, **settings):
    config = Settings(data_dir=tmp_path, auth={"write_tokens": ["w"], "read_tokens": ["r"]}, **settings)
    return analytics.create_app(config, InMemoryReadingStore(), efficiency).test_client()


@pytest.fixture
def client(tmp_path, efficiency):
    return make_client(tmp_path, efficiency)


def firing(vehicle: str, started_ms: int = T0, **changes) -> AlertRecord:
    record = AlertRecord(vehicle, "low_efficiency", started_ms, "firing", vehicle.replace("VEHICLE", "METER"), 0.7,
                         started_ms + 5 * W, None, started_ms + 5 * W)
    return AlertRecord(**{**record.__dict__, **changes})


# -- performance ---------------------------------------------------------------------------------


def test_a_performance_report_sums_the_vehicles_windows_in_the_period(client, efficiency) -> None:
    load(efficiency, hour_of("VEHICLE_001", 0.8) + hour_of("VEHICLE_002", 0.95)
         + [window("VEHICLE_001", T0 + 13 * W, 1.0, 0.8)])  # after the period: not counted
    response = client.get(f"/v1/analytics/performance/VEHICLE_001?{HOUR_SPAN}", headers=READ)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["vehicleId"], body["periodStart"], body["periodEnd"]) == (
        "VEHICLE_001", "2026-11-23T06:00:00Z", "2026-11-23T07:00:00Z")
    assert body["totalEnergyConsumedAc"] == pytest.approx(12.0)
    assert body["totalEnergyDeliveredDc"] == pytest.approx(9.6)
    assert body["efficiencyRatio"] == pytest.approx(0.8)
    assert (body["status"], body["threshold"], body["windows"], body["readings"]) == (
        "low", 0.85, 12, {"ac": 60, "dc": 60})
    assert (body["meterId"], body["metersInPeriod"]) == ("METER_001", ["METER_001"])  # the default prefix rule


def test_one_sided_windows_count_as_unmatched_energy(client, efficiency) -> None:
    load(efficiency, hour_of("VEHICLE_001", 0.9)[:6] + [window("VEHICLE_001", T0 + 7 * W, 0.0, 0.5)])
    body = client.get(f"/v1/analytics/performance/VEHICLE_001?{HOUR_SPAN}", headers=READ).get_json()
    assert body["matchedEnergy"] == {"acKwh": pytest.approx(6.0), "dcKwh": pytest.approx(5.4)}
    assert body["unmatchedEnergy"] == {"acKwh": pytest.approx(0.0), "dcKwh": pytest.approx(0.5)}


def test_a_vehicle_without_windows_has_no_efficiency(client) -> None:
    body = client.get(f"/v1/analytics/performance/VEHICLE_404?{HOUR_SPAN}", headers=READ).get_json()
    assert (body["efficiencyRatio"], body["windows"], body["totalEnergyConsumedAc"]) == (None, 0, 0.0)


def test_without_a_period_the_last_day_up_to_the_runners_newest_window_is_reported(client, efficiency) -> None:
    last_stop = T0 + 12 * W
    efficiency.runner_state.update({"last_stop_ms": last_stop, "last_run_ms": last_stop + 30_000})
    load(efficiency, hour_of("VEHICLE_001", 0.9) + [window("VEHICLE_001", last_stop + W, 5.0, 5.0)])
    body = client.get("/v1/analytics/performance/VEHICLE_001", headers=READ).get_json()
    assert (body["periodStart"], body["periodEnd"]) == ("2026-11-22T07:00:00Z", "2026-11-23T07:00:00Z")
    assert body["totalEnergyConsumedAc"] == pytest.approx(12.0)  # the window after the runner's is not in


def test_a_period_is_whole_windows(client, efficiency) -> None:
    load(efficiency, hour_of("VEHICLE_001", 0.9))
    body = client.get("/v1/analytics/performance/VEHICLE_001?start=2026-11-23T06:02:00Z&stop=2026-11-23T06:58:00Z",
                      headers=READ).get_json()
    assert (body["periodStart"], body["periodEnd"], body["windows"]) == (
        "2026-11-23T06:00:00Z", "2026-11-23T06:55:00Z", 11)


@pytest.mark.parametrize("query, message", [
    ("start=2026-11-23T07:00:00Z&stop=2026-11-23T06:00:00Z", "start must be before stop"),
    ("start=2026-10-01T00:00:00Z&stop=2026-11-23T00:00:00Z", "at most 30 days"),
    ("start=2026-11-23T06:00:00", "RFC 3339 with an offset"),
    ("start=yesterday", "RFC 3339 with an offset"),
])
def test_a_bad_period_is_refused_with_400_saying_why(client, query, message) -> None:
    response = client.get(f"/v1/analytics/performance/VEHICLE_001?{query}", headers=READ)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_parameter" and message in body["message"]


def test_a_malformed_vehicle_id_is_refused(client) -> None:
    response = client.get(f"/v1/analytics/efficiency/{'x' * 65}?{HOUR_SPAN}", headers=READ)
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid_device_id")


# -- fleet summary, series, alerts ---------------------------------------------------------------


def test_the_fleet_summary_ranks_the_charging_vehicles_worst_first(client, efficiency) -> None:
    load(efficiency, hour_of("VEHICLE_001", 0.95) + hour_of("VEHICLE_002", 0.70) + hour_of("VEHICLE_003", 1.10)
         + [window("VEHICLE_004", T0 + W, 0.05, 0.04)])  # too little energy to be rated
    efficiency.alerts.save_alerts([firing("VEHICLE_002"), firing("VEHICLE_003", state="pending")], [], T0)
    response = client.get(f"/v1/analytics/fleet/summary?{HOUR_SPAN}&worst=2", headers=READ)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["vehicles"], body["vehiclesCharging"], body["activeAlerts"]) == (4, 3, 1)
    assert [v["vehicleId"] for v in body["worst"]] == ["VEHICLE_002", "VEHICLE_001"]
    assert (body["belowThreshold"], body["aboveOne"]) == (["VEHICLE_002"], ["VEHICLE_003"])
    assert body["totalEnergyConsumedAc"] == pytest.approx(36.05)
    assert sum(bucket["vehicles"] for bucket in body["distribution"]) == 3


def test_the_series_lists_a_vehicles_windows_by_stop_with_idle_ones_null(client, efficiency) -> None:
    load(efficiency, [window("VEHICLE_001", T0 + 2 * W, 0.0, 0.0), window("VEHICLE_001", T0 + W, 1.0, 0.9),
                      window("VEHICLE_002", T0 + W, 1.0, 0.9)])
    body = client.get(f"/v1/analytics/efficiency/VEHICLE_001?{HOUR_SPAN}", headers=READ).get_json()
    assert (body["vehicleId"], body["windowSeconds"]) == ("VEHICLE_001", 300)
    assert [(w["stop"], w["efficiency"]) for w in body["windows"]] == [
        ("2026-11-23T06:05:00Z", pytest.approx(0.9)), ("2026-11-23T06:10:00Z", None)]


def test_active_alerts_are_the_firing_ones_and_recent_adds_the_lately_resolved(client, efficiency) -> None:
    now_ms = int(time.time() * 1000)
    efficiency.alerts.save_alerts([
        firing("VEHICLE_001", now_ms - 3_600_000),
        firing("VEHICLE_002", now_ms - 7_200_000, state="resolved", resolved_ms=now_ms - 600_000, replayed=True),
        firing("VEHICLE_003", now_ms - 90 * 3_600_000, state="resolved", resolved_ms=now_ms - 80 * 3_600_000),
        firing("VEHICLE_004", now_ms, state="pending", fired_ms=None),
    ], [], now_ms)
    active = client.get("/v1/analytics/alerts", headers=READ).get_json()["alerts"]
    assert [(a["vehicleId"], a["state"]) for a in active] == [("VEHICLE_001", "firing")]
    recent = client.get("/v1/analytics/alerts?state=recent&hours=24", headers=READ).get_json()["alerts"]
    assert [(a["vehicleId"], a["state"], a["replayed"]) for a in recent] == [
        ("VEHICLE_001", "firing", False), ("VEHICLE_002", "resolved", True)]
    assert client.get("/v1/analytics/alerts?state=all", headers=READ).status_code == 400
    assert client.get("/v1/analytics/alerts?state=recent&hours=0", headers=READ).status_code == 400


# -- auth, health, readiness ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/analytics/performance/VEHICLE_001", "/v1/analytics/fleet/summary",
                                  "/v1/analytics/efficiency/VEHICLE_001", "/v1/analytics/alerts"])
def test_every_route_needs_the_read_token(client, path) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers=WRITE).status_code == 403
    assert client.get(path, headers=READ).status_code == 200


def test_health_shows_the_task_runner_as_its_state_says(client, efficiency) -> None:
    assert client.get("/health").get_json()["details"]["taskRunner"]["status"] == "never_ran"
    now_ms = int(time.time() * 1000)
    efficiency.runner_state.update({"last_stop_ms": now_ms // W * W, "last_run_ms": now_ms, "last_duration_s": 0.5})
    runner = client.get("/health").get_json()["details"]["taskRunner"]
    assert (runner["status"], runner["lastDurationSeconds"]) == ("ok", 0.5)


class UnreachableWindows(InMemoryWindowStore):
    """InfluxDB's windows while it is down: every read and the ping fail as the adapter fails."""

    def ping(self) -> None:
        raise StorageUnavailable("cannot reach InfluxDB at http://127.0.0.1:9 (ping): refused")

    def windows(self, *args, **kwargs):
        raise StorageUnavailable("cannot reach InfluxDB at http://127.0.0.1:9 (query windows): refused")

    vehicle_window_sums = vehicle_totals = windows


def test_in_influx_mode_readiness_and_the_window_routes_fail_while_influxdb_is_down(tmp_path) -> None:
    efficiency = in_memory_efficiency_stores()
    efficiency.windows = UnreachableWindows()
    client = make_client(tmp_path, efficiency, store="influx")
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.get_json()["checks"]["store"] == "ok"
    assert "cannot reach InfluxDB" in ready.get_json()["checks"]["influxdb"]
    for path in ["/v1/analytics/performance/VEHICLE_001", "/v1/analytics/fleet/summary",
                 "/v1/analytics/efficiency/VEHICLE_001"]:
        response = client.get(f"{path}?{HOUR_SPAN}", headers=READ)
        assert response.status_code == 503, path
        assert "Retry-After" in response.headers
    assert client.get("/v1/analytics/alerts", headers=READ).status_code == 200  # alerts are local


def test_on_the_embedded_store_readiness_checks_only_the_store(client) -> None:
    ready = client.get("/ready")
    assert (ready.status_code, ready.get_json()["checks"]) == (200, {"store": "ok"})
