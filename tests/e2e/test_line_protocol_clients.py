"""InfluxDB clients pointed at chargewatch work unchanged (POST /api/v2/write)."""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.e2e.harness import READ_TOKEN, WRITE_TOKEN, IngestClient, IngestServer

influxdb_client = pytest.importorskip("influxdb_client")
from influxdb_client import InfluxDBClient, Point, WritePrecision  # noqa: E402
from influxdb_client.client.write_api import SYNCHRONOUS  # noqa: E402
from influxdb_client.rest import ApiException  # noqa: E402


def _recent(minutes: int) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=minutes)


@pytest.fixture
def influx(server: IngestServer):
    with InfluxDBClient(url=server.url, token=WRITE_TOKEN, org="fleet", enable_gzip=True) as client:
        yield client


def test_the_official_client_writes_points_with_the_synchronous_api(influx, server: IngestServer,
                                                                     client: IngestClient) -> None:
    at = _recent(5)
    points = [
        Point("meter").tag("meter_id", "METER_00700").field("kwh_consumed_ac", 1.5).field("voltage", 229.5)
        .time(at, WritePrecision.MS),
        Point("vehicle").tag("vehicle_id", "VEHICLE_00700").field("soc", 61.0).field("kwh_delivered_dc", 1.3)
        .field("battery_temp", 31.0).time(at, WritePrecision.MS),
    ]
    influx.write_api(write_options=SYNCHRONOUS).write(
        bucket="telemetry", record=points, write_precision=WritePrecision.MS)
    meter = server.rows("meter", "meter_id = ?", ("METER_00700",))
    assert [(r[1], r[2], r[3], r[4]) for r in meter] == [(int(at.timestamp() * 1000), "VEHICLE_00700", 1.5, 229.5)]
    state = client.get("/v1/ingest/vehicle/VEHICLE_00700/current").json()
    assert state["values"] == {"soc": 61.0, "kwhDeliveredDc": 1.3, "batteryTemp": 31.0}
    assert state["meterId"] == "METER_00700"


def test_integer_fields_from_the_client_are_stored_as_floats(influx, server: IngestServer) -> None:
    point = Point("meter").tag("meter_id", "METER_00701").field("kwh_consumed_ac", 2).field("voltage", 230) \
        .time(_recent(6), WritePrecision.S)
    influx.write_api(write_options=SYNCHRONOUS).write(
        bucket="telemetry", record=point, write_precision=WritePrecision.S)
    assert server.rows("meter", "meter_id = ?", ("METER_00701",))[0][3:5] == (2.0, 230.0)


def test_a_partial_write_raises_422_in_the_client_and_keeps_the_good_line(influx, server: IngestServer) -> None:
    ts = int(_recent(7).timestamp())
    body = (f"meter,meter_id=METER_00702 kwh_consumed_ac=1.0,voltage=230 {ts}\n"
            f"meter,meter_id=METER_00703 kwh_consumed_ac=-4,voltage=230 {ts}")
    with pytest.raises(ApiException) as raised:
        influx.write_api(write_options=SYNCHRONOUS).write(bucket="telemetry", record=body, write_precision="s")
    assert raised.value.status == 422
    assert "partial write" in raised.value.body and "kwh_consumed_ac" in raised.value.body
    assert len(server.rows("meter", "meter_id = ?", ("METER_00702",))) == 1
    assert server.rows("meter", "meter_id = ?", ("METER_00703",)) == []


def test_an_unknown_bucket_is_a_404_like_influxdb(influx) -> None:
    with pytest.raises(ApiException) as raised:
        influx.write_api(write_options=SYNCHRONOUS).write(
            bucket="nope", record="meter,meter_id=M1 kwh_consumed_ac=1,voltage=230")
    assert raised.value.status == 404


def test_a_read_token_cannot_write_line_protocol(server: IngestServer) -> None:
    with (
        InfluxDBClient(url=server.url, token=READ_TOKEN, org="fleet") as reader,
        pytest.raises(ApiException) as raised,
    ):
        reader.write_api(write_options=SYNCHRONOUS).write(
            bucket="telemetry", record="meter,meter_id=M1 kwh_consumed_ac=1,voltage=230")
    assert raised.value.status == 403


def _write(server: IngestServer, body: bytes, precision: str = "s", **headers: str) -> requests.Response:
    return requests.post(server.url + "/api/v2/write",
                         params={"org": "o", "bucket": "telemetry", "precision": precision}, data=body,
                         headers={"Authorization": f"Token {WRITE_TOKEN}", **headers}, timeout=10)


def test_every_line_bad_is_a_400_that_stores_nothing(server: IngestServer) -> None:
    before = server.total_rows()
    response = _write(server, b"meter,meter_id=M1 kwh_consumed_ac=NaN,voltage=230\nnot line protocol\ncpu value=1")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and body["error"] == "invalid_line_protocol"
    assert [d["line"] for d in body["details"]] == [1, 2, 3]
    assert server.total_rows() == before


def test_an_invalid_precision_is_a_400(server: IngestServer) -> None:
    assert _write(server, b"meter,meter_id=M1 kwh_consumed_ac=1,voltage=230", precision="h").status_code == 400


def test_telegraf_style_gzip_with_extra_tags_and_comments_is_accepted(server: IngestServer) -> None:
    ts = int(_recent(8).timestamp() * 1e9)
    body = ("# from a gateway\n"
            f"vehicle,host=gw1,vehicle_id=EV-4242 soc=12,kwh_delivered_dc=0.8,battery_temp=19.5 {ts}\n"
            f"\nmeter,meter_id=MTR-4242,site=depot kwh_consumed_ac=0.9,voltage=231 {ts}\n").encode()
    response = _write(server, gzip.compress(body), precision="ns", **{"Content-Encoding": "gzip"})
    assert response.status_code == 204, response.text
    assert server.rows("vehicle", "vehicle_id = ?", ("EV-4242",))[0][2] == "MTR-4242"
