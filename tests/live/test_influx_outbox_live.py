"""Influx mode end to end against a real influxd, beside tests/live/test_forwarder_live.py: real
gunicorn ingest, the real ``chargewatch forward`` process, a steady bounded load, and InfluxDB itself
as the judge of what arrived.

- An outage under steady ingest: influxd killed (connections refused), restarted, then SIGSTOPped
  (connections accepted, nothing answered: the forwarder's requests time out), then resumed. Ingest
  keeps acknowledging; every acknowledged reading reaches InfluxDB once.
- kill -9 of ingest and forwarder while a write hangs in a SIGSTOPped influxd: the write may land
  after its forwarder died; the restarted forwarder sends it again, and InfluxDB still holds each
  reading once.
- A 400 (unparsable rows put into the outbox by hand: chargewatch's encoder never writes one) and a
  422 (a point older than the bucket's retention) end in dead letters that the CLI and /metrics
  show; after the retention is raised, the requeued line is stored.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.e2e.harness import READ_TOKEN, IngestClient
from tests.e2e.influx_mode import SteadyLoad, chargewatch_cli, outbox_depth, wait_until
from tests.live.test_forwarder_engine_live import suspended
from tests.live.test_forwarder_live import assert_exactly_the_acknowledged, partner_of, stored_points

pytestmark = [pytest.mark.influx, pytest.mark.slow]


def metrics_of(server) -> str:
    return requests.get(server.url + "/metrics", timeout=10).text


def test_an_influxdb_outage_under_steady_ingest_loses_no_acknowledged_reading(running, own_influxd):
    server, forwarder = running()
    load = SteadyLoad(server.url, threads=4, pairs=5, rate_per_thread=10).start()  # 400 readings/s
    try:
        wait_until(lambda: len(stored_points(own_influxd)) >= 400, 20, "shipping before the outage")
        outage_started = time.monotonic()
        own_influxd.kill9()  # connections refused
        time.sleep(4)
        own_influxd.restart()
        with suspended(own_influxd):  # accepting, not answering: the forwarder times out
            suspended_at, acked_at_suspend = time.monotonic(), len(load.acked)
            time.sleep(4)
            acked_in_hang = len(load.acked) - acked_at_suspend
            queued_at_worst = outbox_depth(server)
        time.sleep(2)
    finally:
        load.stop()
    wait_until(lambda: outbox_depth(server) == 0, 60, "draining the outbox")

    # Ingest kept acknowledging through both phases (how fast is benchmarks/influx_outage.py's figure).
    assert load.errors == [] and all(post.status == 200 for post in load.posts)
    assert load.latency(outage_started, suspended_at)["requests"] > 0
    assert acked_in_hang > 0
    assert queued_at_worst >= acked_in_hang  # the hang's readings waited durably in the outbox
    assert_exactly_the_acknowledged(own_influxd, load.acked)
    metrics = metrics_of(server)
    assert 'chargewatch_forwarder_failures_total{reason="connection"}' in metrics
    assert 'chargewatch_forwarder_failures_total{reason="timeout"}' in metrics
    assert "chargewatch_outbox_depth 0.0" in metrics
    assert 'chargewatch_forwarder_state{state="shipping"} 1.0' in metrics


def test_kill_9_of_ingest_and_forwarder_while_a_write_hangs_loses_and_duplicates_nothing(running, own_influxd):
    server, forwarder = running(CHARGEWATCH_INFLUX__BATCH_MAX_LINES="200")
    load = SteadyLoad(server.url, threads=4, pairs=5, rate_per_thread=10).start()
    try:
        wait_until(lambda: len(load.acked) >= 1000 and outbox_depth(server) < 1000, 20, "load under way")
        with suspended(own_influxd):  # on the way out the held write is read; its forwarder is dead
            time.sleep(0.6)  # the forwarder sends a batch every 0.2 s: one is held inside influxd now
            server.crash()
            forwarder.crash()
        acked_before_restart = len(load.acked)
        server.start()
        forwarder.start()
        wait_until(lambda: len(load.acked) >= acked_before_restart + 1000, 30, "load after the restart")
    finally:
        load.stop()
    wait_until(lambda: outbox_depth(server) == 0, 60, "draining the outbox")

    assert load.errors == []
    points = stored_points(own_influxd)
    assert len(points) == len(set(points)), "a reading reached InfluxDB twice (as a second series)"
    acked = {(kind, device, partner_of(kind, device), ms) for kind, device, ms in load.acked}
    missing = acked - set(points)
    assert not missing, f"{len(missing)} acknowledged readings were lost, e.g. {sorted(missing)[:3]}"
    # Readings stored by the crashed ingest but never answered are shipped too: InfluxDB may hold more.
    assert server.query("PRAGMA integrity_check") == [("ok",)]


def test_a_400_and_a_422_end_in_dead_letters_that_the_cli_and_metrics_show(running, own_influxd):
    server, forwarder = running(CHARGEWATCH_INFLUX__TELEMETRY_RETENTION_DAYS="1")
    unparsable = "vehicle,meter_id=MTR-400,vehicle_id=EV-400 soc=60,kwh_delivered_dc= 1795413600000"
    with sqlite3.connect(server.db_path) as conn:  # a corrupted row, ahead of the readings
        conn.execute("INSERT INTO outbox (line, created_ms) VALUES (?, ?)", (unparsable, int(time.time() * 1000)))
    client = IngestClient(server.url)
    old = (datetime.now(timezone.utc) - timedelta(days=3)).isoformat()  # inside chargewatch's 30 d, not InfluxDB's 1 d
    good = [{"meterId": f"MTR-{n}", "kwhConsumedAc": 1.0, "voltage": 230.0} for n in range(500, 520)]
    good += [{"vehicleId": f"EV-{n}", "soc": 60.0, "kwhDeliveredDc": 0.9, "batteryTemp": 20.0} for n in range(500, 520)]
    late = {"meterId": "MTR-422", "kwhConsumedAc": 1.0, "voltage": 230.0, "timestamp": old}
    assert client.post_readings(good[:20] + [late] + good[20:]).status_code == 200

    wait_until(lambda: outbox_depth(server) == 0, 20, "shipping")

    assert len(stored_points(own_influxd)) == 40
    status = json.loads(chargewatch_cli(server, "outbox", "status", "--json").stdout)
    assert (status["depth"], status["dead_letters"], status["shipped_total"]) == (0, 2, 40)
    assert status["failures"]["rejected"] == 1 and status["failures"]["partial_write"] >= 1
    listed = chargewatch_cli(server, "outbox", "dead-letters", "--json")
    letters = {letter["status"]: letter for letter in json.loads(listed.stdout)}
    assert set(letters) == {400, 422}
    assert letters[400]["line"] == unparsable
    assert letters[400]["error"] == f"unable to parse '{unparsable}': missing field value"
    assert letters[422]["line"].startswith("meter,meter_id=MTR-422,vehicle_id=EV-422 ")
    assert "partial write: dropped 1 points outside retention policy" in letters[422]["error"]
    metrics = metrics_of(server)
    assert "chargewatch_outbox_dead_letters 2.0" in metrics
    assert 'chargewatch_forwarder_failures_total{reason="rejected"} 1.0' in metrics

    # The operator raises the bucket's retention, then ships the 422 line again.
    [bucket] = own_influxd.api("GET", "/api/v2/buckets",
                               params={"org": own_influxd.org, "name": "telemetry"})["buckets"]
    # (An empty retentionRules list leaves the retention as it was: "forever" is everySeconds 0.)
    own_influxd.api("PATCH", f"/api/v2/buckets/{bucket['id']}",
                    json={"retentionRules": [{"type": "expire", "everySeconds": 0}]})
    requeued = chargewatch_cli(server, "outbox", "dead-letters", "--requeue", str(letters[422]["id"]))
    assert requeued.returncode == 0 and "requeued 1" in requeued.stdout
    wait_until(lambda: len(stored_points(own_influxd)) == 41, 20, "the requeued line")
    assert chargewatch_cli(server, "outbox", "dead-letters", "--purge", "all").stdout.startswith("purged 1")
    assert "dead letters: 0" in chargewatch_cli(server, "outbox", "status").stdout
    assert requests.get(server.url + "/v1/ingest/meter/MTR-422/current",
                        headers={"Authorization": f"Token {READ_TOKEN}"}, timeout=10).status_code == 200

    second = chargewatch_cli(server, "forward")  # one forwarder per outbox
    assert second.returncode != 0 and "another forwarder is shipping" in second.stderr
