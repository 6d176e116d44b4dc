"""chargewatch's alerts through a real Alertmanager (Debian's ``prometheus-alertmanager``, started here on
127.0.0.1 with no cluster gossip).

The alerts come from chargewatch's own rules: efficiency windows are written to a real SQLite store
and the task runner evaluates them (without a window writer, as in influx mode where InfluxDB
computes the windows), queueing notifications in the outbox; the notifier thread
(``taskrunner.notify.Notifier``, as ``chargewatch tasks`` runs it) sends them to Alertmanager's API v2.
Alertmanager groups them by alertname and notifies a webhook receiver on 127.0.0.1. The last test runs
the same path end to end: readings over HTTP into ingest, ``chargewatch tasks`` as a process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from chargewatch import bootstrap
from chargewatch.alerts import LOW
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.settings import Settings
from taskrunner.notify import Notifier
from taskrunner.runner import TaskRunner
from tests.e2e.harness import free_port
from tests.live.alertmanager import AlertmanagerServer, WebhookReceiver, receiver_config
from tests.live.conftest import attach_log

REPO = Path(__file__).resolve().parents[2]
W = 300_000
MINUTE = 60_000
EXTERNAL_URL = "http://127.0.0.1:8081"
FAULTY = ("VEHICLE_001", "VEHICLE_002", "VEHICLE_003")
HEALTHY = "VEHICLE_004"


def meter_of(vehicle_id: str) -> str:
    return vehicle_id.replace("VEHICLE_", "METER_")


def parse_time(text: str) -> int:
    """Alertmanager's RFC 3339 time (nanoseconds allowed) in ms."""
    head, dot, rest = text.rstrip("Z").partition(".")
    fraction = rest[:3].ljust(3, "0") if dot else "000"
    return int(datetime.fromisoformat(head + "+00:00").timestamp()) * 1000 + int(fraction)


class Fleet:
    """A real store, the task runner and the notifier of one data directory, with windows written for
    chosen efficiencies; the notifier runs in its own thread, as in ``chargewatch tasks``."""

    def __init__(self, data_dir: Path, alertmanager_urls: list[str], resend_seconds: float = 1.0) -> None:
        self.settings = Settings(data_dir=data_dir, sqlite={"synchronous": "normal"}, auth={"enabled": False},
                                 alerts={"alertmanager_urls": alertmanager_urls,
                                         "alertmanager_resend_seconds": resend_seconds,
                                         "webhook_backoff_seconds": 0.2})
        self.stores = bootstrap.open_stores(self.settings)
        self.store = self.stores.efficiency
        # windows as written below, not recomputed from readings: the runner as in influx mode
        self.runner = TaskRunner(replace(self.store, window_writer=None), self.settings, EXTERNAL_URL)
        self.notifier = Notifier(self.store.alerts, self.store.notifications, self.settings.alerts,
                                 self.runner.policy, EXTERNAL_URL)
        # The newest window stop the runner would evaluate now (real time): queued notifications are due at once.
        self.now_stop_ms = (int(time.time() * 1000) - self.runner.offset_ms) // W * W
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self.notifier.run, args=(self._stopping.wait, 0.1),
                                        name="notifier", daemon=True)

    def write_windows(self, efficiencies: dict[str, float], start_ms: int, end_ms: int) -> None:
        """Windows with stop in (start_ms, end_ms]: 2 kWh of AC each (a car charging), DC at the efficiency."""
        windows = [EfficiencyWindow(vehicle_id, meter_of(vehicle_id), stop, 2.0, 2.0 * efficiency, 5, 5, 25.0,
                                    efficiency)
                   for stop in range(start_ms + W, end_ms + 1, W) for vehicle_id, efficiency in efficiencies.items()]
        assert self.store.window_writer is not None
        self.store.window_writer.replace_windows(W, start_ms, end_ms, windows, end_ms)

    def evaluate_at(self, stop_ms: int) -> None:
        self.runner.run_once(stop_ms + self.runner.offset_ms)

    def fire(self) -> None:
        """An hour ago: three chargers at 0.78 for an hour, one at 0.95: the three fire."""
        start, end = self.now_stop_ms - 120 * MINUTE, self.now_stop_ms - 60 * MINUTE
        self.write_windows({**{v: 0.78 for v in FAULTY}, HEALTHY: 0.95}, start, end)
        self.evaluate_at(end)
        assert sorted(a.vehicle_id for a in self.store.alerts.firing_alerts()) == list(FAULTY)

    def resolve(self) -> None:
        """The last hour: every charger back at 0.95: the three resolve."""
        start, end = self.now_stop_ms - 60 * MINUTE, self.now_stop_ms
        self.write_windows({**{v: 0.95 for v in FAULTY}, HEALTHY: 0.95}, start, end)
        self.evaluate_at(end)
        assert self.store.alerts.firing_alerts() == []

    def start_notifier(self) -> None:
        self._thread.start()

    def stop_notifier(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def close(self) -> None:
        self.stop_notifier()
        self.stores.close()


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def build(alertmanager_urls: list[str], resend_seconds: float = 1.0) -> Fleet:
        fleet = Fleet(tmp_path / f"data-{len(fleets)}", alertmanager_urls, resend_seconds)
        fleets.append(fleet)
        return fleet

    yield build
    for fleet in fleets:
        fleet.close()


def notified(status: str, vehicles: set[str]) -> Callable[[dict[str, Any]], bool]:
    """A webhook body of ``status`` whose alerts are exactly ``vehicles``' low-efficiency alerts."""
    def matches(body: dict[str, Any]) -> bool:
        return body["status"] == status and {a["labels"]["vehicle_id"] for a in body["alerts"]} == vehicles \
            and all(a["status"] == status for a in body["alerts"])
    return matches


def test_firing_alerts_arrive_grouped_stay_firing_while_resent_and_then_resolve(
        alertmanager_factory, webhook_receiver: WebhookReceiver, fleet_factory) -> None:
    alertmanager = alertmanager_factory(receiver_config(webhook_receiver.url))
    fleet = fleet_factory([alertmanager.url], resend_seconds=2.0)
    fleet.fire()
    fleet.start_notifier()

    firing = webhook_receiver.wait_for(notified("firing", set(FAULTY)))
    # One notification for the rule, holding all three vehicles: Alertmanager grouped them by alertname.
    assert firing["groupLabels"] == {"alertname": "ChargingEfficiencyLow"}
    assert firing["receiver"] == "test"
    records = {r.vehicle_id: r for r in fleet.store.alerts.firing_alerts()}
    for alert in firing["alerts"]:
        vehicle_id = alert["labels"]["vehicle_id"]
        # The runner's first run found these in the hour before its first live span: replayed, and
        # labelled so in Alertmanager as in the webhook body (the labels of one alert are one set).
        assert records[vehicle_id].replayed
        assert alert["labels"] == {"alertname": "ChargingEfficiencyLow", "rule": LOW, "vehicle_id": vehicle_id,
                                   "meter_id": meter_of(vehicle_id), "severity": "warning", "service": "chargewatch",
                                   "replayed": "true"}
        assert parse_time(alert["startsAt"]) == records[vehicle_id].fired_ms
        assert alert["generatorURL"] == f"{EXTERNAL_URL}/v1/analytics/performance/{vehicle_id}"
        assert "0.780" in alert["annotations"]["summary"]

    # Each POST says endsAt = now + 8 s (4 resend intervals): without the resends Alertmanager would
    # have resolved them by itself within 8 s. 10 s later they are still active and nothing resolved.
    time.sleep(10)
    active = {a["labels"]["vehicle_id"]: a for a in alertmanager.alerts()}
    assert set(active) == set(FAULTY)
    assert all(a["status"]["state"] == "active" for a in active.values())
    assert all(parse_time(a["endsAt"]) > time.time() * 1000 for a in active.values())
    assert [b["status"] for b in webhook_receiver.bodies] == ["firing"]

    resolved_at = time.monotonic()
    fleet.resolve()
    resolved = webhook_receiver.wait_for(notified("resolved", set(FAULTY)))
    stored = {r.vehicle_id: r for r in fleet.store.alerts.recent_alerts(0) if r.state == "resolved"}
    for alert in resolved["alerts"]:
        record = stored[alert["labels"]["vehicle_id"]]
        assert parse_time(alert["endsAt"]) == record.resolved_ms  # the real end, not a timeout
        assert parse_time(alert["startsAt"]) == record.fired_ms
    print(f"\nresolved notification {time.monotonic() - resolved_at:.1f} s after the runner resolved them")
    assert fleet.store.notifications.notification_counts() == {"pending": 0, "delivered": 6, "failed": 0}


def test_a_silence_set_in_alertmanager_suppresses_the_matched_vehicle(
        alertmanager_factory, webhook_receiver: WebhookReceiver, fleet_factory) -> None:
    alertmanager = alertmanager_factory(receiver_config(webhook_receiver.url))
    now = time.time()
    silence = alertmanager.api("POST", "/api/v2/silences", json={
        "matchers": [{"name": "vehicle_id", "value": "VEHICLE_002", "isRegex": False, "isEqual": True}],
        "startsAt": datetime.fromtimestamp(now - 60).astimezone().isoformat(),
        "endsAt": datetime.fromtimestamp(now + 3600).astimezone().isoformat(),
        "createdBy": "chargewatch live test", "comment": "charger under repair"})
    fleet = fleet_factory([alertmanager.url])
    fleet.fire()
    fleet.start_notifier()

    firing = webhook_receiver.wait_for(notified("firing", {"VEHICLE_001", "VEHICLE_003"}))
    assert firing["groupLabels"] == {"alertname": "ChargingEfficiencyLow"}
    held = {a["labels"]["vehicle_id"]: a["status"] for a in alertmanager.alerts()}
    assert held["VEHICLE_002"] == {"state": "suppressed", "silencedBy": [silence["silenceID"]], "inhibitedBy": []}
    assert held["VEHICLE_001"]["state"] == "active"
    time.sleep(4)  # several group intervals and resends: the silenced vehicle is never notified
    notified_vehicles = {a["labels"]["vehicle_id"] for body in webhook_receiver.bodies for a in body["alerts"]}
    assert notified_vehicles == {"VEHICLE_001", "VEHICLE_003"}


def test_an_alertmanager_that_is_down_at_first_gets_the_alerts_once_it_is_up(
        alertmanager_factory, webhook_receiver: WebhookReceiver, fleet_factory) -> None:
    port = free_port()
    alertmanager = alertmanager_factory(receiver_config(webhook_receiver.url), port=port, start=False)
    fleet = fleet_factory([alertmanager.url], resend_seconds=2.0)
    fleet.fire()
    fleet.start_notifier()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the outbox retries: every row failed at least twice
        rows = fleet.stores.database.read("SELECT attempts, last_error, delivered_ms FROM notifications")
        if len(rows) == 3 and all(attempts >= 2 for attempts, _, _ in rows):
            break
        time.sleep(0.1)
    assert len(rows) == 3 and all(attempts >= 2 and "ConnectionError" in error and delivered is None
                                  for attempts, error, delivered in rows), rows
    assert webhook_receiver.bodies == []

    alertmanager.start()
    webhook_receiver.wait_for(notified("firing", set(FAULTY)))
    # The first resend may bring them before the outbox's next retry; the rows follow within one interval.
    deadline = time.monotonic() + 10
    while fleet.store.notifications.notification_counts()["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fleet.store.notifications.notification_counts() == {"pending": 0, "delivered": 3, "failed": 0}
    fleet.resolve()
    webhook_receiver.wait_for(notified("resolved", set(FAULTY)))


def test_when_chargewatch_stops_re_sending_alertmanager_resolves_its_alerts_by_itself(
        alertmanager_factory, webhook_receiver: WebhookReceiver, fleet_factory) -> None:
    alertmanager = alertmanager_factory(receiver_config(webhook_receiver.url))
    fleet = fleet_factory([alertmanager.url], resend_seconds=1.0)
    fleet.fire()
    fleet.start_notifier()
    webhook_receiver.wait_for(notified("firing", set(FAULTY)))
    fleet.stop_notifier()  # the tasks process is gone: no more resends
    stopped = time.monotonic()
    webhook_receiver.wait_for(notified("resolved", set(FAULTY)), timeout_seconds=20)
    assert time.monotonic() - stopped >= 2  # the last endsAt was 4 s after the last resend


def test_the_bundled_alertmanager_config_loads_and_answers_the_compose_healthcheck(alertmanager_factory) -> None:
    alertmanager: AlertmanagerServer = alertmanager_factory(config_path=REPO / "alertmanager" / "alertmanager.yml")
    assert requests.get(f"{alertmanager.url}/-/ready", timeout=5).status_code == 200
    status = alertmanager.api("GET", "/api/v2/status")
    assert status["versionInfo"]["version"].startswith("0.25")
    assert "group_by:\n  - alertname" in status["config"]["original"]


def test_chargewatch_tasks_sends_the_alerts_of_readings_ingested_over_http_to_alertmanager(
        request: pytest.FixtureRequest, alertmanager_factory, webhook_receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    from tests.e2e.harness import IngestClient, IngestServer
    from tests.e2e.test_analytics_service import FAULTY as FAULTY_VEHICLE
    from tests.e2e.test_analytics_service import post_history

    alertmanager = alertmanager_factory(receiver_config(webhook_receiver.url))
    env = {"CHARGEWATCH_ALERTS__ALERTMANAGER_URLS": alertmanager.url,
           "CHARGEWATCH_ALERTS__ALERTMANAGER_RESEND_SECONDS": "1"}
    ingest = IngestServer(tmp_path, free_port(), env)
    tasks = IngestServer(tmp_path, 0, env, service="tasks")
    attach_log(request, tmp_path / "tasks.log")
    try:
        ingest.start()
        post_history(IngestClient(ingest.url))  # 50 min of charging: one vehicle at 0.70, one at 0.92
        tasks.start()
        firing = webhook_receiver.wait_for(notified("firing", {FAULTY_VEHICLE}), timeout_seconds=60)
        assert firing["alerts"][0]["labels"]["meter_id"] == FAULTY_VEHICLE.replace("VEHICLE", "METER")
        tasks.stop()  # no more resends: Alertmanager resolves the alert once the last endsAt (4 s) passed
        webhook_receiver.wait_for(notified("resolved", {FAULTY_VEHICLE}), timeout_seconds=30)
    finally:
        tasks.stop()
        ingest.stop()
