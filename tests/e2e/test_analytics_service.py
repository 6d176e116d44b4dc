"""The whole embedded deployment over HTTP: ingest and analytics under gunicorn, the task runner,
and webhook receivers (one healthy, one that always fails) on 127.0.0.1."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from chargewatch.readings import MeterReading, VehicleReading, to_wire
from tests.e2e.harness import READ_TOKEN, IngestClient, IngestServer, free_port

pytestmark = pytest.mark.slow

WINDOW_MS = 300_000
FAULTY, HEALTHY = "VEHICLE_801", "VEHICLE_802"
EFFICIENCY = {FAULTY: 0.70, HEALTHY: 0.92}


class Receiver:
    """An Alertmanager-style webhook receiver; ``status`` is what it answers."""

    def __init__(self, status: int) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                outer.attempts += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if status < 300:
                    outer.bodies.append(json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[dict]:
    data_dir = tmp_path_factory.mktemp("deployment")
    good, bad = Receiver(200), Receiver(500)
    env = {"CHARGEWATCH_ALERTS__WEBHOOK_URLS": f"{bad.url},{good.url}",
           "CHARGEWATCH_ALERTS__WEBHOOK_BACKOFF_SECONDS": "0.2"}
    ingest = IngestServer(data_dir, free_port(), env)
    analytics = IngestServer(data_dir, free_port(), env, service="analytics")
    tasks = IngestServer(data_dir, 0, env, service="tasks")
    try:
        ingest.start()
        analytics.start()
        sent = post_history(IngestClient(ingest.url))
        tasks.start()
        yield {"ingest": ingest, "analytics": analytics, "tasks": tasks, "good": good, "bad": bad, "sent": sent}
    finally:
        for process in (tasks, analytics, ingest):
            process.stop()
        good.close()
        bad.close()


def post_history(client: IngestClient) -> dict[str, tuple[float, float, list[float]]]:
    """Fifty minutes of charging at 11 kW for both vehicles, ending a window before now."""
    end = datetime.fromtimestamp(time.time() // 300 * 300, timezone.utc) - timedelta(minutes=5)
    sent: dict[str, tuple[float, float, list[float]]] = {}
    batch = []
    for vehicle, efficiency in EFFICIENCY.items():
        meter = vehicle.replace("VEHICLE", "METER")
        ac_total = dc_total = 0.0
        temps = []
        for minute in range(50):
            at = end - timedelta(minutes=50 - minute) + timedelta(seconds=20)
            dc = 11.0 / 60
            temp = 20.0 + minute * 0.1
            batch.append(to_wire(VehicleReading(vehicle_id=vehicle, soc=30 + minute, kwh_delivered_dc=dc,
                                                battery_temp=temp, timestamp=at)))
            batch.append(to_wire(MeterReading(meter_id=meter, kwh_consumed_ac=dc / efficiency, voltage=400,
                                              timestamp=at + timedelta(seconds=9))))
            ac_total, dc_total = ac_total + dc / efficiency, dc_total + dc
            temps.append(temp)
        sent[vehicle] = (ac_total, dc_total, temps)
    response = client.post_readings(batch)
    assert response.status_code == 200, response.text
    return sent


def get(deployment: dict, path: str, **params) -> requests.Response:
    return requests.get(deployment["analytics"].url + path, params=params,
                        headers={"Authorization": f"Token {READ_TOKEN}"}, timeout=10)


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_the_runner_computes_windows_and_reports_itself_healthy(deployment) -> None:
    runner = wait_for(lambda: get(deployment, "/health").json()["details"]["taskRunner"]
                      if get(deployment, "/health").json()["details"]["taskRunner"]["status"] == "ok" else None)
    assert runner["lagSeconds"] < 2 * 300 + 30
    metrics = get(deployment, "/metrics").text
    assert "chargewatch_task_lag_seconds" in metrics


def test_the_performance_report_has_exact_totals_and_the_legacy_fields(deployment) -> None:
    wait_for(lambda: get(deployment, "/health").json()["details"]["taskRunner"]["status"] == "ok")
    now = datetime.now(timezone.utc)
    report = get(deployment, f"/v1/analytics/performance/{FAULTY}",
                 start=(now - timedelta(hours=2)).isoformat(), stop=now.isoformat()).json()
    ac, dc, temps = deployment["sent"][FAULTY]
    assert math.isclose(report["totalEnergyConsumedAc"], ac, rel_tol=1e-12)
    assert math.isclose(report["totalEnergyDeliveredDc"], dc, rel_tol=1e-12)
    assert math.isclose(report["efficiencyRatio"], 0.70, rel_tol=1e-9)
    assert math.isclose(report["efficiencyPercent"], 70.0, rel_tol=1e-9)
    assert math.isclose(report["avgBatteryTemp"], sum(temps) / len(temps), rel_tol=1e-9)
    assert report["status"] == "low" and report["meterId"] == "METER_801"
    assert {"vehicleId", "periodStart", "periodEnd"} <= set(report)
    assert report["readings"] == {"ac": 50, "dc": 50}


def test_the_fleet_summary_ranks_the_faulty_vehicle_worst(deployment) -> None:
    wait_for(lambda: get(deployment, "/health").json()["details"]["taskRunner"]["status"] == "ok")
    summary = get(deployment, "/v1/analytics/fleet/summary").json()
    assert summary["belowThreshold"] == [FAULTY]
    assert [w["vehicleId"] for w in summary["worst"]] == [FAULTY, HEALTHY]
    assert summary["vehiclesCharging"] == 2


def test_the_efficiency_series_lists_windows_for_charts(deployment) -> None:
    wait_for(lambda: get(deployment, "/health").json()["details"]["taskRunner"]["status"] == "ok")
    series = get(deployment, f"/v1/analytics/efficiency/{HEALTHY}").json()
    assert series["windowSeconds"] == 300
    stops = [w["stop"] for w in series["windows"]]
    assert stops == sorted(stops) and len(stops) >= 10
    assert sum(w["dcReadings"] for w in series["windows"]) == 50


def test_a_low_efficiency_alert_fires_and_reaches_the_webhook_despite_a_failing_receiver(deployment) -> None:
    alerts = wait_for(lambda: get(deployment, "/v1/analytics/alerts").json()["alerts"])
    assert [(a["vehicleId"], a["rule"], a["state"]) for a in alerts] == [(FAULTY, "low_efficiency", "firing")]
    good = deployment["good"]
    wait_for(lambda: good.bodies)
    (payload,) = good.bodies
    assert payload["status"] == "firing" and payload["version"] == "4"
    assert payload["alerts"][0]["labels"]["vehicle_id"] == FAULTY
    wait_for(lambda: deployment["bad"].attempts >= 3)  # retried with backoff, never blocking the good one


def test_analytics_needs_a_read_token(deployment) -> None:
    response = requests.get(deployment["analytics"].url + "/v1/analytics/fleet/summary", timeout=10)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_analytics_rejects_bad_periods_and_ids(deployment) -> None:
    assert get(deployment, "/v1/analytics/fleet/summary", start="yesterday").status_code == 400
    assert get(deployment, "/v1/analytics/fleet/summary", start="2026-11-23T10:00:00Z",
               stop="2026-11-23T09:00:00Z").status_code == 400
    assert get(deployment, "/v1/analytics/performance/bad id").status_code == 400
