"""Alert replay on a backfilled demo fleet, end to end: ``chargewatch simulate backfill`` through the
real ingest, then the real task runner (whose first run replays the history) and the real CLI.

Without replay, a backfilled fleet shows its faulty chargers below the threshold and no alert, or
alerts stamped with the time the runner started. With it, each faulty charger's vehicle alerts at
its fault onset, marked replayed, and no healthy vehicle alerts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import requests

from tests.e2e.harness import READ_TOKEN, IngestServer, free_port, simulate_backfill, wait_for_task_runner

pytestmark = pytest.mark.slow

HOURS = 5


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def chargewatch(server: IngestServer, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chargewatch", *args], env=server.env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[dict]:
    data_dir = tmp_path_factory.mktemp("replay")
    ingest = IngestServer(data_dir, free_port())
    analytics = IngestServer(data_dir, free_port(), service="analytics")
    tasks = IngestServer(data_dir, 0, service="tasks")
    truth_path = data_dir / "truth.json"
    try:
        ingest.start()
        analytics.start()
        truth = simulate_backfill(ingest, truth_path, hours=HOURS, pairs=16, seed=7, faulty_share=0.25)
        tasks.start()
        wait_for_task_runner(analytics, tasks)
        yield {"ingest": ingest, "analytics": analytics, "tasks": tasks, "truth": truth}
    finally:
        for process in (tasks, analytics, ingest):
            process.stop()


def alerts_by_vehicle(demo: dict) -> dict[str, list[dict]]:
    params: dict[str, str | int] = {"state": "recent", "hours": 48}
    response = requests.get(demo["analytics"].url + "/v1/analytics/alerts", params=params,
                            headers={"Authorization": f"Token {READ_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, list[dict]] = {}
    for alert in response.json()["alerts"]:
        result.setdefault(alert["vehicleId"], []).append(alert)
    return result


def charging_after(demo: dict, vehicle_id: str, onset_ms: int) -> list[dict]:
    """The vehicle's charging windows (>= 0.1 kWh AC) that began after its fault onset, from the API."""
    response = requests.get(demo["analytics"].url + f"/v1/analytics/efficiency/{vehicle_id}",
                            params={"start": datetime.fromtimestamp(onset_ms / 1000, timezone.utc).isoformat()},
                            headers={"Authorization": f"Token {READ_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return [w for w in response.json()["windows"] if w["acKwh"] >= 0.1 and _ms(w["stop"]) - 300_000 >= onset_ms]


def test_the_faulty_chargers_vehicles_alert_at_their_onsets_and_healthy_ones_do_not(demo) -> None:
    alerts = alerts_by_vehicle(demo)
    vehicles = demo["truth"]["vehicles"]
    faulty = [v for v in vehicles if v["faulty"]]
    assert len(faulty) == 4
    checked = 0
    for vehicle in faulty:
        onset = _ms(vehicle["faultOnset"])
        charging = charging_after(demo, vehicle["vehicleId"], onset)
        if sum(w["acKwh"] for w in charging) < 2:  # no session since the onset: nothing to see yet
            assert vehicle["vehicleId"] not in alerts
            continue
        checked += 1
        found = [a for a in alerts.get(vehicle["vehicleId"], []) if a["rule"] == "low_efficiency"]
        assert found, (vehicle["vehicleId"], vehicle["faultOnset"], alerts)
        first = min(found, key=lambda a: a["startedAt"])
        started = _ms(first["startedAt"])
        # It starts when the fault first shows (the first charging window after the onset), hours
        # before the runner started, and fires after the pending time, as it would have live.
        first_charging = _ms(charging[0]["stop"])
        assert first_charging - 5 * 60_000 <= started <= first_charging + 15 * 60_000, (vehicle, first, charging[0])
        assert first["replayed"] is True and first["firedAt"] is not None
        assert _ms(first["firedAt"]) - started >= 5 * 60_000
    assert checked >= 2, "the demo fleet should show at least two faults"
    healthy = {v["vehicleId"] for v in vehicles if not v["faulty"]}
    assert not healthy & set(alerts), {v: alerts[v] for v in healthy & set(alerts)}


def test_replaying_again_from_the_cli_finds_the_same_alerts(demo) -> None:
    before = alerts_by_vehicle(demo)
    demo["tasks"].stop()  # the CLI replays itself when no runner holds the lock
    result = chargewatch(demo["ingest"], "alerts", "replay", "--since", f"{HOURS + 1}h", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["notified"] == 0  # no --notify, no webhooks
    assert alerts_by_vehicle(demo) == before
    replayed = {(a["vehicleId"], a["startedAt"]) for a in body["alerts"] if a["state"] in ("firing", "resolved")}
    assert replayed == {(a["vehicleId"], a["startedAt"]) for found in before.values() for a in found}
    table = chargewatch(demo["ingest"], "alerts", "list", "--state", "recent", "--hours", "48")
    assert table.returncode == 0 and "(replayed)" in table.stdout
    assert table.stdout.splitlines()[0].split() == ["VEHICLE", "RULE", "STATE", "STARTED", "FIRED", "ENDED",
                                                    "EFFICIENCY", "METER"]
