"""Influx mode end to end: real gunicorn ingest, the real ``chargewatch forward`` process and a
stand-in InfluxDB on 127.0.0.1. An outage under steady ingest, a kill -9 of both processes, and
refused lines: every acknowledged reading reaches InfluxDB, once (a resend is an identical rewrite),
and refused lines wait in dead letters that the CLI and /metrics show."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.e2e.harness import READ_TOKEN, IngestClient, IngestServer, free_port
from tests.e2e.influx_mode import (
    ForwarderProcess, SteadyLoad, chargewatch_cli, influx_env, outbox_depth, stored_identities, wait_until,
)
from tests.influx_standin import InfluxStandin

pytestmark = pytest.mark.slow


@pytest.fixture
def standin():
    with InfluxStandin() as server:
        yield server


@pytest.fixture
def running(tmp_path, standin):
    """(ingest, forwarder) in influx mode against the stand-in; stopped after the test."""
    processes: list = []

    def start(**env: str) -> tuple[IngestServer, ForwarderProcess]:
        server = IngestServer(tmp_path, free_port(), extra_env=influx_env(standin, **env))
        forwarder = ForwarderProcess(server)
        processes.extend([server, forwarder])  # before starting: a failed start is stopped too
        server.start()
        forwarder.start()
        return server, forwarder

    yield start
    for process in reversed(processes):
        process.stop()


def metrics_of(server: IngestServer) -> str:
    return requests.get(server.url + "/metrics", timeout=10).text


def test_an_influxdb_outage_under_steady_ingest_loses_no_acknowledged_reading(running, standin):
    server, forwarder = running()
    load = SteadyLoad(server.url, threads=4, pairs=5, rate_per_thread=10).start()  # 400 readings/s
    try:
        wait_until(lambda: len(standin.points) >= 400, 10, "shipping before the outage")
        outage_started = time.monotonic()
        standin.outage("refuse")  # InfluxDB restarting: connections refused
        time.sleep(6)
        standin.outage("hang")  # then accepting but not answering: the forwarder times out
        time.sleep(4)
        queued_at_worst = outbox_depth(server)
        standin.recover()
        outage_ended = time.monotonic()
        time.sleep(2)
    finally:
        load.stop()
    drain_seconds = wait_until(lambda: outbox_depth(server) == 0, 30, "draining the outbox")

    assert load.errors == []
    during = load.latency(outage_started, outage_ended)
    assert during["requests"] >= 300  # ingest kept acknowledging through the outage
    assert during["p99"] < 1.0, during
    assert queued_at_worst >= 0.5 * load.readings_per_second * 10  # the outage's readings waited durably
    acked = set(load.acked)
    assert len(acked) == len(load.acked)
    assert acked - stored_identities(standin) == set(), "acknowledged readings are missing in InfluxDB"
    assert len(standin.points) == len(acked)
    assert standin.changed_rewrites == 0
    metrics = metrics_of(server)
    assert 'chargewatch_forwarder_failures_total{reason="connection"}' in metrics
    assert 'chargewatch_forwarder_failures_total{reason="timeout"}' in metrics
    assert "chargewatch_outbox_depth 0.0" in metrics
    assert 'chargewatch_forwarder_state{state="shipping"} 1.0' in metrics
    assert drain_seconds < 20


def test_kill_9_of_ingest_and_forwarder_mid_stream_loses_nothing_and_duplicates_nothing(running, standin):
    server, forwarder = running(CHARGEWATCH_INFLUX__BATCH_MAX_LINES="200")
    load = SteadyLoad(server.url, threads=4, pairs=5, rate_per_thread=10).start()
    try:
        wait_until(lambda: len(load.acked) >= 1000 and len(standin.points) >= 400, 15, "load under way")
        standin.outage("hang")  # hold the forwarder's next write inside "InfluxDB"
        wait_until(lambda: standin.held_requests >= 1, 5, "a write in flight")
        server.crash()
        forwarder.crash()
        standin.recover()  # the held write lands: written, but its forwarder died before the 204
        wait_until(lambda: standin.held_requests == 0, 5, "the held write")
        acked_before_restart = len(load.acked)
        server.start()
        forwarder.start()
        wait_until(lambda: len(load.acked) >= acked_before_restart + 1000, 20, "load after the restart")
    finally:
        load.stop()
    wait_until(lambda: outbox_depth(server) == 0, 30, "draining the outbox")

    assert load.errors == []
    acked = set(load.acked)
    stored = stored_identities(standin)
    assert acked - stored == set(), f"{len(acked - stored)} acknowledged readings were lost"
    assert len(standin.points) == len(stored)  # one point per reading: no second series for any of them
    assert standin.identical_rewrites >= 1  # the held batch was sent again after the restart...
    assert standin.changed_rewrites == 0  # ...and only ever rewrote what was there
    assert standin.points_received == len(standin.points) + standin.identical_rewrites
    assert server.query("PRAGMA integrity_check") == [("ok",)]


def test_a_400_and_a_422_end_in_dead_letters_that_the_cli_and_metrics_show(running, standin):
    standin.reject_line = lambda line: (
        "invalid field format" if line.measurement == "vehicle" and line.tags["vehicle_id"] == "EV-400" else None)
    standin.drop_line = lambda line: (
        'field type conflict: input field "voltage" on measurement "meter" is type float, already exists as type '
        'integer' if line.tags["meter_id"] == "MTR-422" else None)
    server, forwarder = running()
    client = IngestClient(server.url)
    good = [{"meterId": f"MTR-{n}", "kwhConsumedAc": 1.0, "voltage": 230.0} for n in range(500, 520)]
    good += [{"vehicleId": f"EV-{n}", "soc": 60.0, "kwhDeliveredDc": 0.9, "batteryTemp": 20.0} for n in range(500, 520)]
    bad = [{"vehicleId": "EV-400", "soc": 60.0, "kwhDeliveredDc": 0.9, "batteryTemp": 20.0},
           {"meterId": "MTR-422", "kwhConsumedAc": 1.0, "voltage": 230.0}]
    assert client.post_readings(good[:20] + bad + good[20:]).status_code == 200

    wait_until(lambda: outbox_depth(server) == 0, 15, "shipping")

    assert len(standin.points) == 40
    status = json.loads(chargewatch_cli(server, "outbox", "status", "--json").stdout)
    assert (status["depth"], status["dead_letters"], status["shipped_total"]) == (0, 2, 40)
    assert status["failures"]["rejected"] == 1 and status["failures"]["partial_write"] >= 1
    listed = chargewatch_cli(server, "outbox", "dead-letters", "--json")
    letters = {letter["status"]: letter for letter in json.loads(listed.stdout)}
    assert set(letters) == {400, 422}
    assert letters[400]["line"].startswith("vehicle,meter_id=MTR-400,vehicle_id=EV-400 ")
    assert letters[400]["error"].endswith("': invalid field format")
    assert letters[422]["line"].startswith("meter,meter_id=MTR-422,vehicle_id=EV-422 ")
    assert "partial write: field type conflict" in letters[422]["error"]
    metrics = metrics_of(server)
    assert "chargewatch_outbox_dead_letters 2.0" in metrics
    assert 'chargewatch_forwarder_failures_total{reason="rejected"} 1.0' in metrics

    standin.drop_line = None  # the field type was fixed in InfluxDB: ship the 422 line again
    requeued = chargewatch_cli(server, "outbox", "dead-letters", "--requeue", str(letters[422]["id"]))
    assert requeued.returncode == 0 and "requeued 1" in requeued.stdout
    wait_until(lambda: len(standin.points) == 41, 10, "the requeued line")
    assert chargewatch_cli(server, "outbox", "dead-letters", "--purge", "all").stdout.startswith("purged 1")
    assert "dead letters: 0" in chargewatch_cli(server, "outbox", "status").stdout
    assert requests.get(server.url + "/v1/ingest/meter/MTR-422/current",
                        headers={"Authorization": f"Token {READ_TOKEN}"}, timeout=10).status_code == 200

    second = chargewatch_cli(server, "forward")  # one forwarder per outbox
    assert second.returncode != 0 and "another forwarder is shipping" in second.stderr
