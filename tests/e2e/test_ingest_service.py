"""The ingest service over real HTTP: gunicorn on 127.0.0.1, the real SQLite file underneath."""

from __future__ import annotations

import gzip
import itertools
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from chargewatch.readings import MeterReading, VehicleReading, to_wire
from tests.e2e.harness import READ_TOKEN, WRITE_TOKEN, IngestClient, IngestServer

_ids = itertools.count(10_000)  # explicit ids in tests stay below this


def now_minute() -> datetime:
    return datetime.now(timezone.utc).replace(second=0, microsecond=0)


def meter_payload(meter_id: str | None = None, at: datetime | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid meter reading built through the model, then (for bad-input tests) overridden."""
    reading = MeterReading(
        meter_id=meter_id or f"METER_{next(_ids):05d}", kwh_consumed_ac=1.25, voltage=230.0,
        timestamp=at or now_minute() - timedelta(minutes=10),
    )
    return {**to_wire(reading), **overrides}


def vehicle_payload(vehicle_id: str | None = None, at: datetime | None = None, **overrides: Any) -> dict[str, Any]:
    reading = VehicleReading(
        vehicle_id=vehicle_id or f"VEHICLE_{next(_ids):05d}", soc=55.0, kwh_delivered_dc=1.1,
        battery_temp=28.5, timestamp=at or now_minute() - timedelta(minutes=10),
    )
    return {**to_wire(reading), **overrides}


def test_a_single_meter_reading_is_stored_with_its_paired_vehicle(client: IngestClient, server: IngestServer) -> None:
    payload = meter_payload("METER_00042")
    response = client.post_readings(payload)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 1, "stored": 1, "duplicates": 0, "conflicts": 0, "unpaired": 0,
                               "rejected": []}
    rows = server.rows("meter", "meter_id = ?", ("METER_00042",))
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [("METER_00042", "VEHICLE_00042", 1.25, 230.0)]


def test_a_single_vehicle_reading_on_the_typed_route_updates_current_state(client: IngestClient) -> None:
    payload = vehicle_payload("EV-777")
    assert client.post_readings(payload, "/v1/ingest/vehicle").status_code == 200
    state = client.get("/v1/ingest/vehicle/EV-777/current").json()
    assert state["deviceId"] == "EV-777"
    assert state["meterId"] == "MTR-777"
    assert state["values"] == {"soc": 55.0, "kwhDeliveredDc": 1.1, "batteryTemp": 28.5}
    assert state["timestamp"].startswith(payload["timestamp"][:16])


def test_a_typed_route_rejects_the_other_kind(client: IngestClient, server: IngestServer) -> None:
    before = server.total_rows()
    response = client.post_readings(vehicle_payload(), "/v1/ingest/meter")
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["details"][0]["errors"]} >= {"meterId", "kwhConsumedAc"}
    assert server.total_rows() == before


def test_a_mixed_list_is_stored_whole(client: IngestClient, server: IngestServer) -> None:
    payload = [meter_payload(), vehicle_payload(), meter_payload(), vehicle_payload()]
    response = client.post_readings(payload)
    assert response.status_code == 200
    assert response.json()["stored"] == 4
    for item in payload:
        kind, key = ("meter", "meterId") if "meterId" in item else ("vehicle", "vehicleId")
        assert len(server.rows(kind, f"{kind}_id = ?", (item[key],))) == 1


def test_a_resent_reading_is_stored_once(client: IngestClient, server: IngestServer) -> None:
    payload = meter_payload()
    first, second = client.post_readings(payload), client.post_readings(payload)
    assert first.json()["stored"] == 1
    assert second.status_code == 200
    assert second.json() == {"accepted": 1, "stored": 0, "duplicates": 1, "conflicts": 0, "unpaired": 0,
                             "rejected": []}
    assert len(server.rows("meter", "meter_id = ?", (payload["meterId"],))) == 1


def _counter(metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + " "))


def test_a_copy_with_other_values_is_reported_as_a_conflict_and_the_first_copy_is_kept(
    client: IngestClient, server: IngestServer
) -> None:
    first = meter_payload(kwhConsumedAc=1.25)
    before = client.get("/metrics").text
    assert client.post_readings(first).status_code == 200
    other_values = {**first, "kwhConsumedAc": 2.5}

    response = client.post_readings([other_values, first])

    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "stored": 0, "duplicates": 1, "conflicts": 1, "unpaired": 0,
                               "rejected": []}
    assert [r[3] for r in server.rows("meter", "meter_id = ?", (first["meterId"],))] == [1.25]
    after = client.get("/metrics").text
    assert _counter(after, "chargewatch_readings_conflicting_total") == (
        _counter(before, "chargewatch_readings_conflicting_total") + 1)
    assert _counter(after, "chargewatch_readings_duplicate_total") == (
        _counter(before, "chargewatch_readings_duplicate_total") + 1)


def test_a_late_older_reading_does_not_regress_current_state(client: IngestClient, server: IngestServer) -> None:
    newer = vehicle_payload("VEHICLE_90001", at=now_minute() - timedelta(minutes=1), soc=80.0)
    older = vehicle_payload("VEHICLE_90001", at=now_minute() - timedelta(minutes=30), soc=20.0)
    assert client.post_readings(newer).status_code == 200
    assert client.post_readings(older).status_code == 200
    state = client.get("/v1/ingest/vehicle/VEHICLE_90001/current").json()
    assert state["values"]["soc"] == 80.0
    assert len(server.rows("vehicle", "vehicle_id = ?", ("VEHICLE_90001",))) == 2  # history keeps both


def test_a_list_of_100_with_3_bad_items_stores_97_and_reports_3(client: IngestClient, server: IngestServer) -> None:
    payload = [meter_payload() for _ in range(100)]
    payload[7]["kwhConsumedAc"] = -1
    payload[42]["meterId"] = "METER 42"
    payload[99]["timestamp"] = "2026-01-01T00:00:00"
    response = client.post_readings(payload)
    assert response.status_code == 207
    body = response.json()
    assert (body["accepted"], body["stored"]) == (97, 97)
    assert [(r["index"], r["errors"][0]["field"]) for r in body["rejected"]] == [
        (7, "kwhConsumedAc"), (42, "meterId"), (99, "timestamp")]
    stored_ids = {row[0] for row in server.rows("meter") if row[0] in {p["meterId"] for p in payload}}
    assert len(stored_ids) == 97
    assert payload[7]["meterId"] not in stored_ids and payload[99]["meterId"] not in stored_ids


def test_a_gzipped_list_is_accepted(client: IngestClient) -> None:
    body = gzip.compress(json.dumps([meter_payload(), vehicle_payload()]).encode())
    response = client.post("/v1/ingest", data=body,
                           headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.json()["stored"] == 2


def test_unpaired_readings_are_kept_and_reported(client: IngestClient, server: IngestServer) -> None:
    response = client.post_readings(meter_payload("GRID-X"))
    assert response.json()["unpaired"] == 1
    assert server.rows("meter", "meter_id = ?", ("GRID-X",))[0][2] is None
    listing = client.get("/v1/ingest/devices", params={"unpaired": "true", "kind": "meter"}).json()
    assert "GRID-X" in [d["deviceId"] for d in listing["devices"]]


def test_the_fleet_listing_pages_through_every_device(client: IngestClient) -> None:
    payload = [meter_payload(f"PAGE-M{i:03d}") for i in range(25)]
    assert client.post_readings(payload).status_code == 200
    seen: list[str] = []
    cursor = None
    while True:
        params = {"kind": "meter", "limit": "7", **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/ingest/devices", params=params).json()
        seen.extend(d["deviceId"] for d in page["devices"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert [d for d in seen if d.startswith("PAGE-M")] == [p["meterId"] for p in payload]
    assert len(seen) == len(set(seen))


def test_a_registry_pairing_overrides_the_default_rule(client: IngestClient, server: IngestServer) -> None:
    response = client.session.put(client.base_url + "/v1/pairings/VEHICLE_55555", json={"meterId": "GRID-55"})
    assert response.status_code == 200, response.text
    time.sleep(1.1)  # the other worker rechecks the registry within a second
    before_the_change = now_minute() - timedelta(minutes=10)
    client.post_readings([vehicle_payload("VEHICLE_55555", at=before_the_change),
                          vehicle_payload("VEHICLE_55555", at=datetime.now(timezone.utc))])
    # Each reading is paired by the pairing of its own time: a late one from before the change
    # keeps the rule's meter.
    rows = server.rows("vehicle", "vehicle_id = ?", ("VEHICLE_55555",))
    assert [row[2] for row in rows] == ["METER_55555", "GRID-55"]
    assert client.get("/v1/pairings/VEHICLE_55555").json()["source"] == "registry"
    conflict = client.session.put(client.base_url + "/v1/pairings/VEHICLE_55556", json={"meterId": "GRID-55"})
    assert conflict.status_code == 409


def test_operational_endpoints_answer(client: IngestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/ready").json()["checks"] == {"store": "ok"}
    client.post_readings(meter_payload())
    metrics = client.get("/metrics").text
    assert 'chargewatch_readings_accepted_total{kind="meter"}' in metrics
    assert "chargewatch_http_request_duration_seconds_bucket" in metrics
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert {"/v1/ingest", "/api/v2/write", "/v1/ingest/devices"} <= set(spec["paths"])
    assert "MeterReading" in spec["components"]["schemas"]


# -- every class of bad input: a clear 4xx and nothing stored ---------------------------------------

BAD_READINGS = {
    "nan_number": ("kwhConsumedAc", "NaN-literal"),
    "nan_string": ("kwhConsumedAc", "NaN"),
    "infinity_number": ("voltage", "Infinity-literal"),
    "infinity_string": ("voltage", "Infinity"),
    "negative_energy": ("kwhConsumedAc", -0.5),
    "implausible_energy": ("kwhConsumedAc", 5000.0),
    "boolean_energy": ("kwhConsumedAc", True),
    "naive_timestamp": ("timestamp", "2026-11-23T06:00:00"),
    "far_future_timestamp": ("timestamp", "2099-01-01T00:00:00Z"),
    "epoch_number_timestamp": ("timestamp", 1795413600),
    "id_with_space": ("meterId", "METER 1"),
    "id_with_comma": ("meterId", "METER,1"),
    "id_with_quote": ("meterId", 'METER"1'),
    "id_with_equals": ("meterId", "METER=1"),
    "id_with_newline": ("meterId", "METER_1\nvehicle,vehicle_id=x soc=1"),
    "id_over_64_chars": ("meterId", "M" * 65),
    "empty_id": ("meterId", ""),
}


@pytest.mark.parametrize("case", sorted(BAD_READINGS))
def test_bad_meter_readings_get_a_422_naming_the_field_and_store_nothing(
    case: str, client: IngestClient, server: IngestServer
) -> None:
    field, value = BAD_READINGS[case]
    payload = meter_payload()
    before = server.total_rows()
    if isinstance(value, str) and value.endswith("-literal"):
        literal = value.removesuffix("-literal")
        text = json.dumps({**payload, field: 0.0}).replace(f'"{field}": 0.0', f'"{field}": {literal}')
        response = client.post("/v1/ingest", data=text, headers={"Content-Type": "application/json"})
    else:
        response = client.post_readings({**payload, field: value})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_readings"
    assert body["details"][0]["errors"][0]["field"] == field
    assert body["details"][0]["errors"][0]["message"]
    assert server.total_rows() == before


def test_soc_over_100_is_rejected(client: IngestClient, server: IngestServer) -> None:
    before = server.total_rows()
    response = client.post_readings(vehicle_payload(soc=150))
    assert response.status_code == 422
    assert response.json()["details"][0]["errors"] == [
        {"field": "soc", "message": "Input should be less than or equal to 100", "type": "less_than_equal"}]
    assert server.total_rows() == before


@pytest.mark.parametrize("body,content_type,status,error", [
    (b"{not json", "application/json", 400, "invalid_body"),
    (b"[]", "application/json", 400, "invalid_body"),
    (b'"a string"', "application/json", 400, "invalid_body"),
    (b'{"meterId": "M1"}', "text/plain", 415, "unsupported_media_type"),
    (b'{"meterId": "M1"}', "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
])
def test_malformed_bodies_get_a_clear_error(client: IngestClient, server: IngestServer, body: bytes,
                                            content_type: str, status: int, error: str) -> None:
    before = server.total_rows()
    response = client.post("/v1/ingest", data=body, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["message"]
    assert server.total_rows() == before


def test_an_oversize_body_is_refused_with_413(client: IngestClient, server: IngestServer) -> None:
    before = server.total_rows()
    body = b"[" + b",".join([b'{"meterId":"M1","kwhConsumedAc":1,"voltage":230}'] * 100_000) + b"]"
    response = client.post("/v1/ingest", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert server.total_rows() == before


def test_a_gzip_bomb_is_cut_off_with_413(client: IngestClient, server: IngestServer) -> None:
    before = server.total_rows()
    bomb = gzip.compress(b"[" + b" " * (256 * 1024 * 1024) + b"]", compresslevel=9)  # 256 MiB inflated
    assert len(bomb) < 1024 * 1024  # far under the 4 MiB wire limit: only the inflate limit can stop it
    response = client.post("/v1/ingest", data=bomb,
                           headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompresses" in response.json()["message"]
    assert server.total_rows() == before


def test_corrupt_gzip_is_a_400(client: IngestClient) -> None:
    response = client.post("/v1/ingest", data=b"\x1f\x8bnot really gzip",
                           headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_gzip"


@pytest.mark.parametrize("headers,status", [
    ({}, 401),
    ({"Authorization": "Token wrong"}, 401),
    ({"Authorization": f"Basic {WRITE_TOKEN}"}, 401),
    ({"Authorization": f"Token {READ_TOKEN}"}, 403),
])
def test_writes_need_a_write_token(server: IngestServer, headers: dict[str, str], status: int) -> None:
    before = server.total_rows()
    response = requests.post(server.url + "/v1/ingest", json=meter_payload(), headers=headers, timeout=10)
    assert response.status_code == status
    assert response.json()["error"] in ("unauthorized", "forbidden")
    assert server.total_rows() == before


def test_reads_need_a_read_token(client: IngestClient) -> None:
    assert client.get("/v1/ingest/devices", token="nope").status_code == 401
    assert client.get("/v1/ingest/devices", token=WRITE_TOKEN).status_code == 403
    assert client.get("/v1/ingest/devices", token=READ_TOKEN).status_code == 200


def test_bearer_tokens_are_accepted_too(server: IngestServer) -> None:
    response = requests.post(server.url + "/v1/ingest", json=meter_payload(),
                             headers={"Authorization": f"Bearer {WRITE_TOKEN}"}, timeout=10)
    assert response.status_code == 200
