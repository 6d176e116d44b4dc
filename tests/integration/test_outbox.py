"""The influx-mode store and its outbox on a real SQLite file: a reading is queued in the same
transaction that stores it, once, and a full outbox makes ingest answer 503 with Retry-After."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta

import pytest

from chargewatch.bootstrap import open_reading_store
from chargewatch.lineprotocol import parse_lines
from chargewatch.readings import to_wire
from chargewatch.settings import Settings
from chargewatch.stores import StorageUnavailable, WriteResult
from chargewatch.stores.outbox import OutboxFull, reading_line
from chargewatch.stores.sqlite import SqliteReadingStore
from ingest import create_app

WRITE = {"Authorization": "Token w"}


@pytest.fixture
def store(tmp_path):
    store = SqliteReadingStore(tmp_path / "chargewatch.db", outbox_max_rows=10)
    yield store
    store.close()


def metric_value(exposition: str, name: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def queued_lines(store: SqliteReadingStore) -> list[str]:
    assert store.outbox is not None
    return [row.line for row in store.outbox.oldest(1000)]


def test_each_new_reading_is_queued_as_the_line_influxdb_stores(store, make_meter, make_vehicle, paired):
    meter = paired(make_meter(kwh_consumed_ac=2, voltage=230), vehicle_id="VEHICLE_001", received_ms=123)
    vehicle = paired(make_vehicle(), meter_id=None)

    assert store.write([meter, vehicle]) == WriteResult(stored=2, duplicates=0)

    rows = store.outbox.oldest(10)
    assert [row.line for row in rows] == [reading_line(meter), reading_line(vehicle)]
    assert rows[0].created_ms == 123
    (point,), _ = parse_lines(rows[0].line, "ms")
    assert point.measurement == "meter"
    assert point.tags == {"meter_id": "METER_001", "vehicle_id": "VEHICLE_001"}
    assert point.fields == {"kwh_consumed_ac": 2.0, "voltage": 230.0}
    assert all(type(value) is float for value in point.fields.values())  # an int would 422 later
    assert point.timestamp_ns == meter.reading.time_ms * 1_000_000
    (unpaired,), _ = parse_lines(rows[1].line, "ms")
    assert unpaired.tags == {"vehicle_id": "VEHICLE_001"}  # no empty meter_id tag


def test_a_resent_reading_is_not_queued_again_even_with_other_values_or_another_pairing(
    store, make_meter, paired, reading_time
):
    store.write([paired(make_meter(kwh_consumed_ac=1.0), vehicle_id="VEHICLE_001")])
    resent = paired(make_meter(kwh_consumed_ac=9.0), vehicle_id="VEHICLE_002")
    later = paired(make_meter(timestamp=reading_time + timedelta(minutes=1)))

    assert store.write([resent, later, later]) == WriteResult(stored=1, duplicates=1, conflicts=1)

    lines = queued_lines(store)
    assert len(lines) == 2
    assert "VEHICLE_002" not in "".join(lines)  # InfluxDB would have made it a second series
    assert lines[1] == reading_line(later)


def test_the_outbox_row_and_the_reading_commit_together_or_not_at_all(store, make_meter, paired, reading_time):
    store.write([paired(make_meter(meter_id=f"M-{i}")) for i in range(8)])

    too_many = [paired(make_meter(meter_id=f"N-{i}", timestamp=reading_time + timedelta(minutes=1))) for i in range(3)]
    with pytest.raises(OutboxFull) as raised:
        store.write(too_many)

    assert isinstance(raised.value, StorageUnavailable)
    assert store.outbox.depth() == 8
    assert store.current("meter", "N-0") is None  # the whole group commit was rolled back
    assert store.history("meter", "N-0", 0, 2**62) == []
    assert store.write(too_many[:2]) == WriteResult(stored=2, duplicates=0)  # up to the bound is fine
    assert store.write([paired(make_meter(meter_id="M-0"))]) == WriteResult(stored=0, duplicates=1)  # queues nothing


def test_ingest_answers_503_with_retry_after_when_the_outbox_is_full(tmp_path, make_meter, paired):
    settings = Settings(data_dir=tmp_path, store="influx", auth={"write_tokens": ["w"], "read_tokens": ["r"]},
                        influx={"outbox_max_rows": 3})
    store = open_reading_store(settings)
    assert store.outbox is not None and store.outbox.max_rows == 3
    client = create_app(settings, store).test_client()
    reading = to_wire(make_meter())
    reading.pop("timestamp")  # receive time: never too old for the retention check
    try:
        readings = [{**reading, "meterId": f"MTR-{i}"} for i in range(3)]
        assert client.post("/v1/ingest", json=readings, headers=WRITE).status_code == 200

        refused = client.post("/v1/ingest", json={**reading, "meterId": "MTR-9"}, headers=WRITE)

        assert refused.status_code == 503
        assert refused.headers["Retry-After"].isdigit()
        assert refused.get_json()["error"] == "storage_unavailable"
        assert "outbox" in refused.get_json()["message"]
        assert client.get("/v1/ingest/meter/MTR-9/current", headers={"Authorization": "Token r"}).status_code == 404
        metrics = client.get("/metrics").get_data(as_text=True)
        assert "chargewatch_outbox_depth 3.0" in metrics
        assert "chargewatch_outbox_capacity 3.0" in metrics
    finally:
        store.close()


def test_metrics_report_lag_dead_letters_and_forwarder_state(tmp_path, make_meter, paired):
    settings = Settings(data_dir=tmp_path, store="influx", auth={"enabled": False})
    store = open_reading_store(settings)
    client = create_app(settings, store).test_client()
    try:
        arrived_ms = int(time.time() * 1000) - 60_000
        store.write([paired(make_meter(meter_id=f"M-{i}"), received_ms=arrived_ms) for i in range(3)])
        first, second, third = store.outbox.oldest(3)
        store.outbox.dead_letter([first], 400, ["unable to parse 'x': bad"], 2000)
        store.outbox.acknowledge([second], 3000)
        store.outbox.record_failure("connection", "refused", 4000, "retrying")

        metrics = client.get("/metrics").get_data(as_text=True)

        assert "chargewatch_outbox_depth 1.0" in metrics
        assert "chargewatch_outbox_dead_letters 1.0" in metrics
        assert "chargewatch_forwarder_shipped_lines_total 1.0" in metrics
        assert 'chargewatch_forwarder_failures_total{reason="connection"} 1.0' in metrics
        assert 'chargewatch_forwarder_state{state="retrying"} 1.0' in metrics
        assert 60 <= metric_value(metrics, "chargewatch_outbox_lag_seconds") < 90  # the third row arrived 60 s ago
    finally:
        store.close()


def test_the_embedded_store_exposes_no_outbox_metrics(tmp_path):
    settings = Settings(data_dir=tmp_path, auth={"enabled": False})
    store = open_reading_store(settings)
    try:
        metrics = create_app(settings, store).test_client().get("/metrics").get_data(as_text=True)
        assert "chargewatch_outbox" not in metrics
    finally:
        store.close()


def test_dead_letters_can_be_requeued_at_the_end_of_the_queue_or_purged(store, make_meter, paired):
    store.write([paired(make_meter(meter_id=f"M-{i}")) for i in range(4)])
    rows = store.outbox.oldest(4)
    store.outbox.dead_letter(rows[:3], 422, ["partial write: a", "partial write: b", "partial write: c"], 5000)
    letters = store.outbox.dead_letters()
    assert [(d.outbox_id, d.status, d.error) for d in letters] == [
        (rows[0].id, 422, "partial write: a"), (rows[1].id, 422, "partial write: b"),
        (rows[2].id, 422, "partial write: c")]

    assert store.outbox.requeue([letters[1].id]) == 1
    assert [row.line for row in store.outbox.oldest(10)] == [rows[3].line, rows[1].line]
    assert store.outbox.oldest(10)[1].created_ms == rows[1].created_ms  # lag still counts from arrival

    assert store.outbox.purge() == 2
    assert store.outbox.dead_letters() == []
    assert store.outbox.stats(exact=True).depth == 2


def test_depth_comes_from_the_id_range_and_matches_the_exact_count_for_a_queue_drained_in_order(
    store, make_meter, paired
):
    store.write([paired(make_meter(meter_id=f"M-{i}")) for i in range(6)])
    store.outbox.acknowledge(store.outbox.oldest(2), 1)
    assert store.outbox.depth() == store.outbox.depth(exact=True) == 4
    store.outbox.acknowledge(store.outbox.oldest(4), 2)
    assert store.outbox.depth() == 0
    assert store.outbox.stats().lag_seconds(10_000) == 0.0


def test_a_broken_outbox_table_is_reported_as_storage_unavailable(store, make_meter, paired):
    conn = sqlite3.connect(store.path)
    conn.execute("DROP TABLE outbox")
    conn.close()
    with pytest.raises(StorageUnavailable):
        store.write([paired(make_meter())])
    with pytest.raises(StorageUnavailable):
        store.outbox.oldest(1)
