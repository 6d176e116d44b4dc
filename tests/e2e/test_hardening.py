"""Adversarial input against the real services (gunicorn on 127.0.0.1, the real SQLite file): every
bad input gets a 4xx or a per-item rejection, limits hold before the expensive work, and nothing
invalid is stored. One section per class of the hardening issue."""

from __future__ import annotations

import gzip
import itertools
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import requests

from chargewatch.readings import MeterReading, VehicleReading, to_wire
from tests.e2e.harness import READ_TOKEN, WRITE_TOKEN, IngestClient, IngestServer, free_port

_ids = itertools.count(70_000)
WRITE_URL = "/api/v2/write?org=fleet&bucket=telemetry&precision=s"


@pytest.fixture(scope="module")
def analytics(server: IngestServer) -> Iterator[IngestServer]:
    analytics = IngestServer(server.data_dir, free_port(), service="analytics").start()
    yield analytics
    analytics.stop()


def recent(minutes: int = 10) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=minutes)


def meter(**overrides) -> dict:
    reading = MeterReading(meter_id=f"METER_{next(_ids)}", kwh_consumed_ac=1.0, voltage=230, timestamp=recent())
    return {**to_wire(reading), **overrides}


def vehicle(vehicle_id: str | None = None, **overrides) -> dict:
    reading = VehicleReading(vehicle_id=vehicle_id or f"VEHICLE_{next(_ids)}", soc=50, kwh_delivered_dc=1.0,
                             battery_temp=25, timestamp=recent())
    return {**to_wire(reading), **overrides}


def read(url: str, path: str, **params) -> requests.Response:
    return requests.get(url + path, params=params, headers={"Authorization": f"Token {READ_TOKEN}"}, timeout=30)


# -- 1. limits before work ----------------------------------------------------------------------

def test_a_gzip_body_of_tiny_items_is_refused_by_its_value_count_before_any_parsing(
        client: IngestClient, server: IngestServer) -> None:
    before = server.total_rows()
    inflated = b"[" + b"{}," * 400_000 + b"{}]"  # 1.2 MB inflated, 400,001 items, 2 KB on the wire
    response = client.post("/v1/ingest", data=gzip.compress(inflated),
                           headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    # Refused by the JSON value count, which is taken before the parser builds any item.
    assert "more than 320000 JSON values" in response.json()["message"]
    assert server.total_rows() == before


def test_a_list_over_the_item_limit_is_refused_whatever_its_items(client: IngestClient, server: IngestServer) -> None:
    before = server.total_rows()
    body = "[" + ",".join(["1"] * 10_001) + "]"
    response = client.post("/v1/ingest", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "more than 10000 readings" in response.json()["message"]
    assert server.total_rows() == before


def test_line_protocol_over_the_line_limit_is_refused_and_stores_nothing(
        client: IngestClient, server: IngestServer) -> None:
    before = server.total_rows()
    at = int(recent().timestamp())
    lines = [f"meter,meter_id=METER_LP{n} kwh_consumed_ac=1,voltage=230 {at}" for n in range(10_001)]
    response = client.post(WRITE_URL, data="\n".join(lines))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "more than 10000 lines" in response.json()["message"]
    assert server.total_rows() == before


def test_blank_lines_and_comments_do_not_count_against_the_line_limit(
        client: IngestClient, server: IngestServer) -> None:
    at = int(recent().timestamp())
    lines = [f"meter,meter_id=METER_BL{n} kwh_consumed_ac=1,voltage=230 {at}\n\n# note" for n in range(5_000)]
    response = client.post(WRITE_URL, data="\n".join(lines))
    assert response.status_code == 204, response.text
    assert len(server.rows("meter", "meter_id GLOB 'METER_BL*'")) == 5_000


# -- 2. no 500 from valid-looking input ---------------------------------------------------------

@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_timestamps_off_the_calendar_reject_one_item_and_keep_the_rest(
        client: IngestClient, server: IngestServer, timestamp: str) -> None:
    good = vehicle()
    response = client.post_readings([good, vehicle(timestamp=timestamp)])
    assert response.status_code == 207, response.text
    assert response.json()["rejected"][0]["index"] == 1
    assert response.json()["rejected"][0]["errors"][0]["field"] == "timestamp"
    assert len(server.rows("vehicle", "vehicle_id = ?", (good["vehicleId"],))) == 1


@pytest.mark.parametrize("params", [
    {"start": "0001-01-01T00:00:00+01:00"},
    {"stop": "0001-01-01T00:30:00Z"},
    {"start": "9999-12-31T23:00:00Z", "stop": "9999-12-31T23:59:59-01:00"},
])
def test_analytics_periods_off_the_calendar_are_a_400(analytics: IngestServer, params: dict) -> None:
    response = read(analytics.url, "/v1/analytics/performance/VEHICLE_001", **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_parameter"


# -- 3. ids in URL paths ------------------------------------------------------------------------

def test_a_path_id_with_a_trailing_newline_stores_no_phantom_pairing(
    client: IngestClient, server: IngestServer
) -> None:
    assert client.session.put(client.base_url + "/v1/pairings/VEHICLE_606", json={"meterId": "METER_606"},
                              timeout=30).status_code == 200
    response = client.session.put(client.base_url + "/v1/pairings/VEHICLE_606%0A", json={"meterId": "METER_606"},
                                  timeout=30)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_device_id"
    pairings = client.get("/v1/pairings").json()["pairings"]
    assert [p for p in pairings if p["vehicleId"].startswith("VEHICLE_606")] == [
        {"vehicleId": "VEHICLE_606", "meterId": "METER_606", "source": "registry"}]
    assert client.session.delete(client.base_url + "/v1/pairings/VEHICLE_606%0A", timeout=30).status_code == 400


def test_the_pairing_api_answers_a_change_at_once_whichever_worker_made_it(client: IngestClient) -> None:
    # Two workers: a PUT and the GET after it land on either; the GET must not answer from a stale cache.
    for n in range(20):
        vehicle, meter = f"VEHICLE_{700 + n}", f"METER_{800 + n}"
        assert client.session.put(client.base_url + f"/v1/pairings/{vehicle}", json={"meterId": meter},
                                  timeout=30).status_code == 200
        assert client.get(f"/v1/pairings/{vehicle}").json()["meterId"] == meter
        listed = {p["vehicleId"]: p["meterId"] for p in client.get("/v1/pairings").json()["pairings"]}
        assert listed.get(vehicle) == meter


@pytest.mark.parametrize("path", ["/v1/ingest/vehicle/VEHICLE_001%0A/current", "/v1/pairings/VEHICLE_001%0A"])
def test_ingest_path_ids_are_matched_in_full(client: IngestClient, path: str) -> None:
    assert client.get(path).status_code == 400


@pytest.mark.parametrize(
    "path", ["/v1/analytics/performance/VEHICLE_001%0A", "/v1/analytics/efficiency/VEHICLE_001%0A"])
def test_analytics_path_ids_are_matched_in_full(analytics: IngestServer, path: str) -> None:
    response = read(analytics.url, path)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_device_id"


# -- 5. timestamps the contract refuses ---------------------------------------------------------

@pytest.mark.parametrize("timestamp", [
    lambda at: str(int(at.timestamp())),
    lambda at: str(int(at.timestamp() * 1000)),
    lambda at: at.strftime("%Y-%m-%dT%H:%M:%S+0000"),
])
def test_timestamps_that_are_not_rfc_3339_with_an_offset_are_rejected(
        client: IngestClient, server: IngestServer, timestamp) -> None:
    reading = vehicle(timestamp=timestamp(recent()))
    response = client.post_readings(reading)
    assert response.status_code == 422, response.text
    assert response.json()["details"][0]["errors"][0]["field"] == "timestamp"
    assert server.rows("vehicle", "vehicle_id = ?", (reading["vehicleId"],)) == []


@pytest.mark.parametrize("value", ["1796148133", "2026-11-23T00:00:00+0000", "2026-11-23"])
def test_analytics_time_parameters_follow_the_same_contract(analytics: IngestServer, value: str) -> None:
    response = read(analytics.url, "/v1/analytics/performance/VEHICLE_001", start=value)
    assert response.status_code == 400
    assert "RFC 3339" in response.json()["message"]


# -- 9. InfluxDB compatibility at the route -----------------------------------------------------

def test_line_protocol_with_curls_default_content_type_is_written(client: IngestClient, server: IngestServer) -> None:
    line = f"meter,meter_id=METER_CURL kwh_consumed_ac=1.3,voltage=230.2 {int(recent().timestamp())}"
    response = client.post(WRITE_URL, data=line, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 204, response.text
    assert len(server.rows("meter", "meter_id = 'METER_CURL'")) == 1


@pytest.mark.parametrize("headers,query,body,status,code", [
    ({}, WRITE_URL, "meter,meter_id=M1 kwh_consumed_ac=1,voltage=230", 401, "unauthorized"),
    ({"Authorization": f"Token {READ_TOKEN}"}, WRITE_URL, "meter,meter_id=M1 voltage=230", 403, "forbidden"),
    ({"Authorization": f"Token {WRITE_TOKEN}"}, "/api/v2/write?org=fleet&bucket=other", "m f=1", 404, "not found"),
    ({"Authorization": f"Token {WRITE_TOKEN}"}, WRITE_URL, "not line protocol\nneither=this", 400, "invalid"),
    ({"Authorization": f"Token {WRITE_TOKEN}"}, WRITE_URL, "meter,meter_id=M1 kwh_consumed_ac=", 400, "invalid"),
    ({"Authorization": f"Token {WRITE_TOKEN}", "Content-Encoding": "br"}, WRITE_URL, "m f=1", 415, "invalid"),
])
def test_write_errors_carry_influxdbs_code(server: IngestServer, headers: dict, query: str, body: str,
                                           status: int, code: str) -> None:
    before = server.total_rows()
    response = requests.post(server.url + query, data=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.headers["X-Platform-Error-Code"] == code
    assert response.json()["error"] and response.json()["message"]
    assert server.total_rows() == before


# -- 10. smaller ---------------------------------------------------------------------------------

def test_the_analytics_range_limit_is_the_one_its_message_names(analytics: IngestServer) -> None:
    stop = datetime(2026, 11, 1, tzinfo=timezone.utc)
    for days, status in ((30, 200), (31, 400)):
        response = read(analytics.url, "/v1/analytics/performance/VEHICLE_001",
                        start=(stop - timedelta(days=days)).isoformat(), stop=stop.isoformat())
        assert response.status_code == status, (days, response.text)
    assert "at most 30 days" in response.json()["message"]


def test_the_database_is_readable_by_its_owner_only(server: IngestServer) -> None:
    for path in server.data_dir.glob("chargewatch.db*"):
        if path.suffix != ".lock":
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert server.db_path.exists()
