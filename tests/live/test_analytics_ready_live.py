"""The analytics service in influx mode tells whether it can answer: /ready checks InfluxDB itself (the
source of every window), not only the local SQLite file, and reports answer 503 while it is down."""

from __future__ import annotations

import pytest
import requests

from tests.e2e.harness import READ_TOKEN, IngestServer, free_port
from tests.live.conftest import chargewatch_env, run_chargewatch

pytestmark = pytest.mark.influx


def test_ready_follows_influxdb_and_reports_answer_503_while_it_is_down(tmp_path, own_influxd):
    env = chargewatch_env(own_influxd, own_influxd.org, CHARGEWATCH_INFLUX__REQUEST_TIMEOUT_SECONDS="2")
    assert run_chargewatch(env, "influx", "setup").returncode == 0
    server = IngestServer(tmp_path / "analytics", free_port(), service="analytics",
                          extra_env={k: v for k, v in env.items() if k.startswith("CHARGEWATCH_")})
    server.data_dir.mkdir()
    server.start()
    auth = {"Authorization": f"Token {READ_TOKEN}"}
    try:
        ready = requests.get(server.url + "/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"store": "ok", "influxdb": "ok"}
        report = requests.get(server.url + "/v1/analytics/performance/VEHICLE_001", headers=auth, timeout=10)
        assert (report.status_code, report.json()["status"]) == (200, "no_data")

        own_influxd.kill9()
        down = requests.get(server.url + "/ready", timeout=10)
        assert down.status_code == 503
        assert down.json()["checks"]["store"] == "ok"
        assert down.json()["checks"]["influxdb"].startswith("StorageUnavailable: ")
        failing = requests.get(server.url + "/v1/analytics/performance/VEHICLE_001", headers=auth, timeout=10)
        assert failing.status_code == 503
        assert failing.json()["error"] == "storage_unavailable"

        own_influxd.restart()
        assert requests.get(server.url + "/ready", timeout=10).status_code == 200
    finally:
        server.stop()
