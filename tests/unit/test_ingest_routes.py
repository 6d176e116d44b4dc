"""Ingest routes through Flask's test client, on the in-memory store."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone

import pytest
from openapi_spec_validator import validate as validate_openapi

from chargewatch.readings import MeterReading, VehicleReading, to_wire
from chargewatch.settings import Settings
from chargewatch.stores.memory import InMemoryReadingStore
from ingest import create_app

WRITE = {"Authorization": "Token w"}
READ = {"Authorization": "Token r"}


@pytest.fixture
def store() -> InMemoryReadingStore:
    return InMemoryReadingStore()


@pytest.fixture
def app(store, tmp_path):
    settings = Settings(data_dir=tmp_path, auth={"write_tokens": ["w"], "read_tokens": ["r"]},
                        ingest={"max_body_bytes": 64 * 1024, "max_decompressed_bytes": 256 * 1024})
    return create_app(settings, store)


@pytest.fixture
def client(app):
    return app.test_client()


def recent(minutes: int = 5) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=minutes)


def meter(meter_id: str = "METER_001", minutes_ago: int = 5, **overrides) -> dict:
    return {**to_wire(MeterReading(meter_id=meter_id, kwh_consumed_ac=1.0, voltage=230, timestamp=recent(minutes_ago))),
            **overrides}


def vehicle(vehicle_id: str = "VEHICLE_001", minutes_ago: int = 5, **overrides) -> dict:
    return {**to_wire(VehicleReading(vehicle_id=vehicle_id, soc=40, kwh_delivered_dc=0.9, battery_temp=22,
                                     timestamp=recent(minutes_ago))), **overrides}


def test_a_reading_is_paired_and_stored(client, store) -> None:
    response = client.post("/v1/ingest", json=vehicle(), headers=WRITE)
    assert response.status_code == 200
    state = store.current("vehicle", "VEHICLE_001")
    assert (state.vehicle_id, state.meter_id) == ("VEHICLE_001", "METER_001")


def test_every_error_has_the_one_json_shape(client) -> None:
    for response in (
        client.post("/v1/ingest", json=meter(voltage=-1), headers=WRITE),
        client.post("/v1/ingest", data="x", headers={**WRITE, "Content-Type": "application/json"}),
        client.post("/v1/ingest", json=meter()),
        client.get("/v1/nowhere", headers=READ),
        client.delete("/v1/ingest", headers=WRITE),
        client.get("/v1/ingest/meter/NOPE/current", headers=READ),
        client.get("/v1/ingest/meter/bad%20id/current", headers=READ),
    ):
        body = response.get_json()
        assert response.status_code >= 400
        assert set(body) == {"error", "message", "details"}, body
        assert body["message"]


def test_an_unknown_route_is_404_and_a_wrong_method_405(client) -> None:
    assert client.get("/v1/nowhere").status_code == 404
    response = client.delete("/v1/ingest", headers=WRITE)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


def test_a_body_over_the_wire_limit_is_413(client, store) -> None:
    body = json.dumps([meter(f"M{i}") for i in range(1000)])
    assert len(body) > 64 * 1024
    response = client.post("/v1/ingest", data=body, headers={**WRITE, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert store.list_current() == []


def test_a_gzip_body_over_the_inflated_limit_is_413(client, store) -> None:
    body = gzip.compress(json.dumps([meter(f"M{i}") for i in range(3000)]).encode())
    assert len(body) < 64 * 1024
    response = client.post("/v1/ingest", data=body,
                           headers={**WRITE, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert store.list_current() == []


def test_a_truncated_gzip_body_is_400(client) -> None:
    body = gzip.compress(json.dumps(meter()).encode())[:-8]
    response = client.post("/v1/ingest", data=body,
                           headers={**WRITE, "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_gzip"


def test_an_unsupported_encoding_is_415(client) -> None:
    response = client.post("/v1/ingest", data=b"{}",
                           headers={**WRITE, "Content-Type": "application/json", "Content-Encoding": "br"})
    assert response.status_code == 415


def test_storage_failure_is_a_503_with_retry_after(client, store, monkeypatch) -> None:
    from chargewatch.stores import StorageUnavailable

    def fail(readings):
        raise StorageUnavailable("disk full")

    monkeypatch.setattr(store, "write", fail)  # the store is the process edge here
    response = client.post("/v1/ingest", json=meter(), headers=WRITE)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["error"] == "storage_unavailable"


def test_auth_can_be_switched_off(store, tmp_path) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth={"enabled": False}), store)
    assert app.test_client().post("/v1/ingest", json=meter()).status_code == 200


def test_pairings_can_be_set_listed_and_deleted(client) -> None:
    assert client.put("/v1/pairings/VEHICLE_001", json={"meterId": "GRID-1"}, headers=WRITE).status_code == 200
    listing = client.get("/v1/pairings", headers=READ).get_json()
    assert listing["pairings"] == [{"vehicleId": "VEHICLE_001", "meterId": "GRID-1", "source": "registry"}]
    assert listing["rulePrefixes"] == ["VEHICLE_:METER_", "EV-:MTR-"]
    assert client.put("/v1/pairings/VEHICLE_001", json={"meterId": "GRID 1"}, headers=WRITE).status_code == 422
    assert client.delete("/v1/pairings/VEHICLE_001", headers=WRITE).status_code == 204
    assert client.delete("/v1/pairings/VEHICLE_001", headers=WRITE).status_code == 404
    assert client.get("/v1/pairings/VEHICLE_001", headers=READ).get_json()["source"] == "rule"
    assert client.get("/v1/pairings/CAR-9", headers=READ).status_code == 404


def test_the_device_listing_validates_its_parameters(client) -> None:
    for query in ("kind=bus", "limit=0", "limit=1001", "limit=x", "cursor=%%%", "cursor=Zm9v"):
        response = client.get(f"/v1/ingest/devices?{query}", headers=READ)
        assert response.status_code == 400, query


def test_the_openapi_document_is_valid_and_covers_every_route(app, client) -> None:
    spec = client.get("/openapi.json").get_json()
    validate_openapi(spec)
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<device_id>", "{deviceId}").replace("<vehicle_id>", "{vehicleId}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if "<any(meter, vehicle):kind>" in path:
                for kind in ("meter", "vehicle"):
                    assert (method, path.replace("<any(meter, vehicle):kind>", kind)) in documented
            else:
                assert (method, path) in documented, (method, path)
