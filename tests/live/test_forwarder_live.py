"""Influx mode end to end against a real influxd: real gunicorn ingest, the real ``chargewatch forward``
process, a steady bounded load of devices, and InfluxDB itself as the judge of what arrived.

kill -9 of influxd mid-stream and of the forwarder mid-stream: every acknowledged reading is in
InfluxDB exactly once with its pairing tags and millisecond time, the backlog drains, and the
forwarder goes idle. A real field type conflict ends in a dead letter with InfluxDB's own message.
(The real 400 for unparsable lines, which chargewatch's encoder never produces, is provoked by rows
written into the outbox by hand in tests/live/test_forwarder_engine_live.py.)
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.harness import IngestClient, IngestServer, free_port
from tests.e2e.influx_mode import ForwarderProcess, SteadyLoad, chargewatch_cli, influx_env, outbox_depth, wait_until

pytestmark = [pytest.mark.influx, pytest.mark.slow]


def stored_points(influx, bucket: str = "telemetry") -> list[tuple[str, str, str | None, int]]:
    """Every energy point in the bucket: (kind, own id, partner id, time ms), duplicates kept."""
    rows = influx.query(
        f'from(bucket: "{bucket}") |> range(start: 0) '
        '|> filter(fn: (r) => r._field == "kwh_consumed_ac" or r._field == "kwh_delivered_dc") |> group()')
    points = []
    for r in rows:
        kind = r["_measurement"]
        partner = r.get("vehicle_id" if kind == "meter" else "meter_id")
        assert r["_time"].microsecond % 1000 == 0, r["_time"]
        points.append((kind, r[f"{kind}_id"], partner, int(r["_time"].timestamp() * 1000)))
    return points


def partner_of(kind: str, device_id: str) -> str:
    """The default pairing rule SteadyLoad's devices follow: EV-<n> <-> MTR-<n>."""
    number = device_id.split("-", 1)[1]
    return f"EV-{number}" if kind == "meter" else f"MTR-{number}"


def assert_exactly_the_acknowledged(influx, acked: list[tuple[str, str, int]]) -> None:
    points = stored_points(influx)
    assert len(points) == len(set(points)), "a reading reached InfluxDB twice (as a second series)"
    expected = {(kind, device, partner_of(kind, device), ms) for kind, device, ms in set(acked)}
    missing = expected - set(points)
    assert not missing, f"{len(missing)} acknowledged readings are missing, e.g. {sorted(missing)[:3]}"
    assert set(points) == expected  # nothing else either: the load's readings only


@pytest.fixture
def running(tmp_path, own_influxd):
    """(ingest, forwarder) in influx mode against this test's own influxd, set up by the real CLI."""
    processes: list = []

    def start(**env: str) -> tuple[IngestServer, ForwarderProcess]:
        server = IngestServer(tmp_path / "chargewatch", free_port(), extra_env=influx_env(own_influxd, **env))
        server.data_dir.mkdir(exist_ok=True)
        setup = chargewatch_cli(server, "influx", "setup")
        assert setup.returncode == 0, setup.stderr
        forwarder = ForwarderProcess(server)
        processes.extend([server, forwarder])
        server.start()
        forwarder.start()
        return server, forwarder

    yield start
    for process in reversed(processes):
        process.stop()


def test_kill_9_of_influxd_mid_stream_loses_no_acknowledged_reading(running, own_influxd):
    server, forwarder = running()
    load = SteadyLoad(server.url, threads=4, pairs=5, rate_per_thread=10).start()  # 400 readings/s
    try:
        wait_until(lambda: len(load.acked) >= 1500, 20, "load under way")
        own_influxd.kill9()
        killed_at = time.monotonic()
        time.sleep(4)
        backlog = outbox_depth(server)
        own_influxd.restart()
        restarted_at = time.monotonic()
        time.sleep(3)
    finally:
        load.stop()
    drain_seconds = wait_until(lambda: outbox_depth(server) == 0, 60, "draining the outbox")
    idle = wait_until(lambda: server.query("SELECT value FROM forwarder_state WHERE key = 'state'")
                      == [("shipping",)], 10, "the forwarder back to normal")

    assert load.errors == []
    assert backlog >= 400, "readings waited in the outbox while influxd was down"
    during = load.latency(killed_at, restarted_at)
    assert during["requests"] >= 100  # ingest kept acknowledging while InfluxDB was dead
    assert_exactly_the_acknowledged(own_influxd, load.acked)
    status = json.loads(chargewatch_cli(server, "outbox", "status", "--json").stdout)
    assert (status["depth"], status["dead_letters"]) == (0, 0)
    assert status["failures"].get("connection", 0) >= 1
    print(f"\nbacklog {backlog} lines, drained in {drain_seconds:.1f} s after the restart, idle after {idle:.1f} s")


def test_kill_9_of_the_forwarder_mid_stream_loses_and_duplicates_nothing(running, own_influxd):
    server, forwarder = running(CHARGEWATCH_INFLUX__BATCH_MAX_LINES="200")
    load = SteadyLoad(server.url, threads=4, pairs=5, rate_per_thread=10).start()
    try:
        wait_until(lambda: len(load.acked) >= 1500, 20, "load under way")
        forwarder.crash()
        time.sleep(3)
        backlog = outbox_depth(server)
        forwarder.start()
        acked = len(load.acked)
        wait_until(lambda: len(load.acked) >= acked + 1000, 20, "load after the restart")
    finally:
        load.stop()
    wait_until(lambda: outbox_depth(server) == 0, 60, "draining the outbox")

    assert load.errors == []
    assert backlog >= 400
    assert_exactly_the_acknowledged(own_influxd, load.acked)
    assert server.query("PRAGMA integrity_check") == [("ok",)]


def test_a_real_field_type_conflict_ends_in_a_dead_letter_and_the_rest_is_shipped(running, own_influxd):
    server, forwarder = running()
    # Someone wrote voltage as an integer first: InfluxDB fixes a field's type by its first write.
    own_influxd.write("telemetry", f"meter,meter_id=MTR-0,vehicle_id=EV-0 voltage=230i {int(time.time())}",
                      precision="s")
    client = IngestClient(server.url)
    good = [{"meterId": f"MTR-{n}", "kwhConsumedAc": 1.0, "voltage": 230.0} for n in range(500, 510)]
    good += [{"vehicleId": f"EV-{n}", "soc": 60.0, "kwhDeliveredDc": 0.9, "batteryTemp": 20.0} for n in range(500, 510)]
    assert client.post_readings(good).status_code == 200

    wait_until(lambda: outbox_depth(server) == 0, 20, "shipping")

    letters = json.loads(chargewatch_cli(server, "outbox", "dead-letters", "--json").stdout)
    assert {letter["status"] for letter in letters} == {422}
    assert all("field type conflict" in letter["error"] for letter in letters), letters
    vehicles = [p for p in stored_points(own_influxd) if p[0] == "vehicle"]
    assert len(vehicles) == 10  # the vehicles' lines were written; only the conflicting points refused
