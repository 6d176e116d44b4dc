"""The forwarder, step by step, against a real influxd, with the outbox in a real SQLite file: what it
deletes, what it keeps, what it dead-letters and how long it waits, with InfluxDB's own answers and
InfluxDB's own contents as the judge.

Delays are asserted, not slept: ``Forwarder.step()`` returns the wait before the next step.
A stopped influxd refuses connections; a SIGSTOPped one accepts them and answers nothing (a hang in
the middle of a request); points older than a bucket's retention come back as a 422 partial write;
a field written as an integer first makes a float write a real type conflict; a token with read
rights only gets a real 403.

What a real engine does not produce stays with the stand-in in tests/integration/test_forwarder.py:
a 500, 503 or 429 with Retry-After (InfluxDB Cloud's throttling), a 400 whose lines cannot be matched
to the ones sent, a 413, and the bytes on the wire (gzip, precision, the token header).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest

from chargewatch.influx.forwarder import Forwarder, InfluxWriteClient
from chargewatch.stores.sqlite import SqliteReadingStore
from tests.conftest import READING_TIME, build_meter, build_paired, build_vehicle
from tests.integration.test_forwarder import Clock, build_forwarder, drain, queue  # shared with the stand-in's tests

pytestmark = pytest.mark.influx

SeriesTime = tuple[str, tuple[tuple[str, str], ...], int]  # measurement, sorted tags, time (ns)


@contextmanager
def suspended(influxd) -> Iterator[None]:
    """The test's own influxd (its process group) SIGSTOPped inside the block: its port accepts
    connections, nothing answers; SIGCONT on the way out, whatever happens."""
    group = influxd.engine.process.pid
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


@pytest.fixture
def store(tmp_path) -> Iterator[SqliteReadingStore]:
    store = SqliteReadingStore(tmp_path / "chargewatch.db", outbox_max_rows=1_000_000)
    yield store
    store.close()


@pytest.fixture
def target(influx, scratch_org):
    """(server, org): the session influxd, an organization of this test's own with a ``telemetry`` bucket."""
    org_id = influx.api("GET", "/api/v2/orgs", params={"org": scratch_org})["orgs"][0]["id"]
    influx.api("POST", "/api/v2/buckets", json={"orgID": org_id, "name": "telemetry", "retentionRules": []})
    return influx, scratch_org


@pytest.fixture
def own_target(own_influxd):
    """(server, org): this test's own influxd (it may stop or SIGSTOP it), with a ``telemetry`` bucket."""
    own_influxd.create_bucket("telemetry")
    return own_influxd, own_influxd.org


@pytest.fixture
def make_forwarder(store):
    clients: list[InfluxWriteClient] = []

    def make(target, token: str | None = None, timeout_seconds: float = 5.0, **options) -> Forwarder:
        server, org = target
        client = InfluxWriteClient(server.url, org, "telemetry", token or server.token, timeout_seconds=timeout_seconds)
        clients.append(client)
        return build_forwarder(store.outbox, client, **options)

    yield make
    for client in clients:
        client.close()


def points(target) -> dict[SeriesTime, dict[str, object]]:
    """What the bucket holds: one entry per series and time, its fields."""
    server, org = target
    rows = server.query('from(bucket: "telemetry") |> range(start: 0) '
                        '|> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")', org=org)
    stored = {}
    for row in rows:
        tags = tuple(sorted((k, v) for k, v in row.items() if k.endswith("_id") and v is not None))
        time_ns = int(row["_time"].timestamp()) * 1_000_000_000 + row["_time"].microsecond * 1000
        fields = {k: v for k, v in row.items() if v is not None and not k.startswith("_") and k not in dict(tags)
                  and k not in ("result", "table")}
        assert (row["_measurement"], tags, time_ns) not in stored
        stored[(row["_measurement"], tags, time_ns)] = fields
    return stored


def meter_ids(target) -> set[str]:
    return {dict(tags)["meter_id"] for measurement, tags, _ in points(target) if measurement == "meter"}


def retention_keeping_reading_time() -> int:
    """Seconds of retention that keep READING_TIME's points (a day to spare) and drop points two days older."""
    age = datetime.now(timezone.utc) - READING_TIME
    if age < timedelta(0):
        pytest.skip("the clock is before the test readings' time")
    return int((age + timedelta(days=1)).total_seconds())


# -- shipping --------------------------------------------------------------------------------------

def test_the_reading_arrives_as_influxdb_stores_it(store, target, make_forwarder):
    meter = build_paired(build_meter(meter_id="MTR-101", kwh_consumed_ac=1, voltage=400), vehicle_id="EV-101")
    vehicle = build_paired(build_vehicle(vehicle_id="EV-101", soc=50), meter_id="MTR-101")
    store.write([meter, vehicle])

    assert drain(make_forwarder(target)) == [0.0]

    time_ns = int(READING_TIME.timestamp()) * 1_000_000_000
    tags = (("meter_id", "MTR-101"), ("vehicle_id", "EV-101"))
    stored = points(target)
    assert stored == {
        ("meter", tags, time_ns): {"kwh_consumed_ac": 1.0, "voltage": 400.0},
        ("vehicle", tags, time_ns): {"soc": 50.0, "kwh_delivered_dc": 1.1, "battery_temp": 28.5},
    }
    assert type(stored[("meter", tags, time_ns)]["voltage"]) is float  # written as a float field, not 400i
    assert store.outbox.depth(exact=True) == 0
    stats = store.outbox.stats()
    assert (stats.shipped_total, stats.forwarder_state, stats.failures) == (2, "shipping", {})


def test_batches_are_bounded_by_lines_and_ship_oldest_first(store, target, make_forwarder):
    queue(store, 250)
    forwarder = make_forwarder(target, batch_max_lines=100)

    shipped = []
    for _ in range(3):
        forwarder.step()
        shipped.append(meter_ids(target))

    assert [len(ids) for ids in shipped] == [100, 200, 250]
    assert shipped[0] == {f"MTR-{i}" for i in range(100)}  # the oldest first
    assert store.outbox.depth(exact=True) == 0


def test_a_partial_batch_waits_until_its_oldest_line_has_waited_the_maximum(store, target, make_forwarder):
    clock = Clock()
    readings = [build_paired(build_meter(meter_id=f"MTR-{i}"), received_ms=int(clock.now * 1000)) for i in range(5)]
    store.write(readings)
    forwarder = make_forwarder(target, batch_max_lines=100, batch_max_wait_seconds=1.0, poll_seconds=0.2, clock=clock)

    assert forwarder.step() == pytest.approx(0.2)
    clock.now += 0.9
    assert forwarder.step() == pytest.approx(0.1)
    assert points(target) == {}
    clock.now += 0.1
    assert forwarder.step() == 0.0
    assert len(points(target)) == 5


# -- an engine that is down or hangs ---------------------------------------------------------------

def test_while_influxd_is_stopped_rows_are_kept_and_retries_back_off_exponentially(store, own_target, own_influxd,
                                                                                    make_forwarder):
    queue(store, 10)
    forwarder = make_forwarder(own_target, backoff_base_seconds=1.0, backoff_max_seconds=8.0)
    own_influxd.stop()

    delays = [forwarder.step() for _ in range(6)]

    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # jitter pinned to its top; capped at the maximum
    assert store.outbox.depth(exact=True) == 10
    stats = store.outbox.stats()
    assert stats.failures == {"connection": 6}
    assert stats.forwarder_state == "retrying"
    assert "Connection refused" in stats.last_error

    own_influxd.restart()
    assert forwarder.step() == 0.0
    assert len(points(own_target)) == 10 and forwarder.failures == 0
    assert store.outbox.stats().forwarder_state == "shipping"


def test_a_hanging_influxd_times_out_and_the_resend_after_the_late_write_stores_each_point_once(
    store, own_target, own_influxd, make_forwarder
):
    queue(store, 3)
    forwarder = make_forwarder(own_target, timeout_seconds=2.0)
    with suspended(own_influxd):  # on the way out the held request is read, its client long gone
        assert forwarder.step() == 1.0
        assert store.outbox.stats().failures == {"timeout": 1}
        assert store.outbox.depth(exact=True) == 3
    own_influxd.engine.wait_ready(30)  # resumed: answering /health again
    assert forwarder.step() == 0.0, store.outbox.stats()

    stored = points(own_target)
    assert len(stored) == 3 and all(fields["kwh_consumed_ac"] == 1.25 for fields in stored.values())


# -- 400: the whole request refused ------------------------------------------------------------------

def test_lines_a_400_names_are_dead_lettered_and_the_rest_ships_behind_them(store, target, make_forwarder, tmp_path):
    lines = queue(store, 50)
    # chargewatch's encoder writes only valid lines; two rows written into the outbox by hand stand
    # for a corrupted queue, so that the 400 and its message are InfluxDB's own.
    bad = ["meter,meter_id=MTR-X kwh_consumed_ac= 1795413600000", "not line protocol"]
    with sqlite3.connect(tmp_path / "chargewatch.db") as conn:
        conn.executemany("INSERT INTO outbox (line, created_ms) VALUES (?, 0)", [(line,) for line in bad])

    assert drain(make_forwarder(target)) == [0.0]

    assert meter_ids(target) == {f"MTR-{i}" for i in range(50)}
    letters = store.outbox.dead_letters()
    assert [(d.status, d.line) for d in letters] == [(400, bad[0]), (400, bad[1])]
    assert letters[0].error == f"unable to parse '{bad[0]}': missing field value"
    assert letters[1].error == f"unable to parse '{bad[1]}': invalid field format"
    assert store.outbox.stats().failures == {"rejected": 1}  # named lines: no bisecting needed
    assert len(lines) == 50


def test_a_400_about_the_request_not_a_line_stops_shipping_and_keeps_every_row(store, target, make_forwarder):
    queue(store, 5)
    forwarder = make_forwarder(target, config_error_retry_seconds=45)
    forwarder.client.params["precision"] = "minutes"  # InfluxDB: invalid precision

    assert forwarder.step() == 45
    assert store.outbox.depth(exact=True) == 5 and store.outbox.dead_letters() == []
    stats = store.outbox.stats()
    assert (stats.forwarder_state, stats.failures) == ("config_error", {"bad_request": 1})
    assert "invalid precision" in stats.last_error


# -- 422: a partial write --------------------------------------------------------------------------

def retention_target(target) -> tuple:
    """The target's org with ``telemetry`` recreated to drop points two days older than READING_TIME."""
    server, org = target
    [bucket] = server.api("GET", "/api/v2/buckets", params={"org": org, "name": "telemetry"})["buckets"]
    server.api("PATCH", f"/api/v2/buckets/{bucket['id']}",
               json={"retentionRules": [{"type": "expire", "everySeconds": retention_keeping_reading_time()}]})
    return target


def test_a_422_is_bisected_so_only_the_dropped_line_is_dead_and_the_rest_is_written(store, target, make_forwarder):
    retention_target(target)
    readings = [build_paired(build_meter(meter_id=f"MTR-{i}", **(
        {"timestamp": READING_TIME - timedelta(days=2)} if i == 21 else {})), received_ms=0) for i in range(32)]
    store.write(readings)

    assert drain(make_forwarder(target)) == [0.0]

    assert meter_ids(target) == {f"MTR-{i}" for i in range(32)} - {"MTR-21"}
    (letter,) = store.outbox.dead_letters()
    assert "MTR-21 " in letter.line and letter.status == 422
    assert "partial write: dropped 1 points outside retention policy" in letter.error and "dropped=1" in letter.error
    assert store.outbox.depth(exact=True) == 0
    assert store.outbox.stats().failures["partial_write"] == 1 + 5  # the batch, then one per level of 32


def test_when_a_422_dropped_every_line_they_are_dead_lettered_without_bisecting(store, target, make_forwarder):
    server, org = target
    # voltage first written as an integer: InfluxDB fixes the field's type in the shard.
    server.write("telemetry", f"meter,meter_id=OTHER voltage=230i {int(READING_TIME.timestamp())}", precision="s",
                 org=org)
    queue(store, 20)

    drain(make_forwarder(target))

    letters = store.outbox.dead_letters()
    assert len(letters) == 20
    assert 'input field "voltage" on measurement "meter" is type float, already exists as type integer' in \
        letters[0].error and letters[0].error.endswith("dropped=20")
    assert store.outbox.stats().failures == {"partial_write": 1}  # one request: no bisecting
    assert meter_ids(target) == {"OTHER"}


def test_dead_letters_do_not_block_the_queue(store, target, make_forwarder):
    retention_target(target)
    queue(store, 1, prefix="A-OLD-", timestamp=READING_TIME - timedelta(days=2))
    queue(store, 9, prefix="A-")
    forwarder = make_forwarder(target, batch_max_lines=5)
    forwarder.step()
    queue(store, 10, prefix="B-")
    drain(forwarder)
    assert len(points(target)) == 19
    assert [letter.status for letter in store.outbox.dead_letters()] == [422]


# -- configuration errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("problem, reason", [("token", "unauthorized"), ("bucket", "not_found"), ("org", "not_found")])
def test_a_configuration_error_keeps_every_row_and_retries_slowly(store, target, make_forwarder, problem, reason):
    queue(store, 5)
    if problem == "token":
        forwarder = make_forwarder(target, token="wrong", config_error_retry_seconds=60)
    else:
        forwarder = make_forwarder(target, config_error_retry_seconds=60)
        forwarder.client.params[problem] = "missing"

    assert [forwarder.step() for _ in range(2)] == [60, 60]

    assert store.outbox.depth(exact=True) == 5 and store.outbox.dead_letters() == []
    stats = store.outbox.stats()
    assert stats.forwarder_state == "config_error"
    assert stats.failures == {reason: 2}
    assert points(target) == {}


def test_a_token_that_may_only_read_gets_403_a_configuration_error_too(store, target, make_forwarder):
    server, org = target
    org_id = server.api("GET", "/api/v2/orgs", params={"org": org})["orgs"][0]["id"]
    read_only = server.api("POST", "/api/v2/authorizations", json={
        "orgID": org_id,
        "permissions": [{"action": "read", "resource": {"type": "buckets", "orgID": org_id}}]})["token"]
    queue(store, 1)

    assert make_forwarder(target, token=read_only, config_error_retry_seconds=20).step() == 20

    stats = store.outbox.stats()
    assert stats.failures == {"forbidden": 1}
    assert "insufficient permissions for write" in stats.last_error
    assert store.outbox.depth(exact=True) == 1


def test_shipping_resumes_once_the_configuration_is_fixed(store, target, make_forwarder):
    queue(store, 3)
    forwarder = make_forwarder(target, token="wrong")
    forwarder.step()
    forwarder.client.session.headers["Authorization"] = f"Token {target[0].token}"
    assert forwarder.step() == 0.0
    assert len(points(target)) == 3
    assert store.outbox.stats().forwarder_state == "shipping"


# -- the process ----------------------------------------------------------------------------------

def test_run_ships_until_stopped_and_records_the_stop(store, target, make_forwarder):
    queue(store, 30)
    stopping = threading.Event()
    forwarder = make_forwarder(target, poll_seconds=0.01)
    thread = threading.Thread(target=forwarder.run, args=(stopping.wait,))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while store.outbox.depth(exact=True) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stopping.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(points(target)) == 30
    assert store.outbox.stats().forwarder_state == "stopped"
