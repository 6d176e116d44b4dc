"""Notification delivery (taskrunner/notify.py) on the in-memory alert store and outbox and a fake HTTP
session: what goes to Alertmanager's API v2 and when, retries and their end, re-sending what fires;
webhooks as before."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import requests

from chargewatch.alerts import LOW, AlertPolicy
from chargewatch.efficiency_ports import AlertRecord
from chargewatch.settings import AlertSettings
from chargewatch.stores.memory_efficiency import InMemoryAlertStore, InMemoryNotificationOutbox
from taskrunner.notify import Notifier, alertmanager_endpoint, alertmanager_outbox_row

T0 = 1_795_392_000_000  # 2026-11-23T00:00Z
AM = "http://127.0.0.1:9093"
AM_ENDPOINT = AM + "/api/v2/alerts"


class Stores:
    """The alert store and the outbox the notifier works on: the in-memory fakes, holding ``alerts``."""

    def __init__(self, alerts: list[AlertRecord]) -> None:
        self.outbox = InMemoryNotificationOutbox()
        self.alerts = InMemoryAlertStore(self.outbox)
        self.alerts.save_alerts(alerts, [], T0)

    def enqueue(self, url: str, payload: dict[str, Any]) -> int:
        [row_id] = self.outbox.queue([(url, payload)], 0)
        return row_id

    @property
    def rows(self) -> dict[int, dict[str, Any]]:
        return self.outbox.rows


@dataclass
class FakeResponse:
    status_code: int
    text: str = ""


class FakeSession:
    """Records every POST; answers with ``status`` (an int) or raises it (an exception)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.status: int | Exception = 200

    def post(self, url: str, json: Any, timeout: float) -> FakeResponse:
        self.posts.append((url, json))
        if isinstance(self.status, Exception):
            raise self.status
        return FakeResponse(self.status, "refused" if self.status >= 400 else "")


class Clock:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self) -> float:
        return self.seconds


def firing(vehicle: str) -> AlertRecord:
    return AlertRecord(vehicle, LOW, T0, "firing", "M" + vehicle[1:], 0.8, T0 + 300_000, None, T0 + 300_000)


def notifier(outbox: Stores, session: FakeSession, clock: Clock, **settings: Any) -> Notifier:
    alert_settings = AlertSettings(alertmanager_urls=[AM], alertmanager_resend_seconds=60,
                                   webhook_backoff_seconds=2, **settings)
    return Notifier(outbox.alerts, outbox.outbox, alert_settings, AlertPolicy(), "http://cw:8081",
                    session, clock)  # type: ignore[arg-type]


def test_due_alertmanager_rows_go_in_one_post_each_as_its_alert_is_stored_when_sent() -> None:
    v1, v2 = firing("V1"), firing("V2")
    outbox = Stores([v1, v2])
    for record in (v1, v2):
        outbox.enqueue(alertmanager_endpoint(AM), alertmanager_outbox_row(record))
    # V2 resolved after its row was queued (an outage held the row back): it goes out resolved.
    outbox.alerts.save_alerts([replace(v2, state="resolved", resolved_ms=T0 + 900_000)], [], T0)
    session, clock = FakeSession(), Clock(T0 / 1000 + 1800)

    assert notifier(outbox, session, clock).deliver_due() == 2

    [(url, body)] = session.posts
    assert url == AM_ENDPOINT
    ends = {a["labels"]["vehicle_id"]: a["endsAt"] for a in body}
    assert ends == {"V1": "2026-11-23T00:34:00Z",  # now + 4 x 60 s: still firing
                    "V2": "2026-11-23T00:15:00Z"}  # its real end
    assert all(row["delivered_ms"] == T0 + 1_800_000 for row in outbox.rows.values())


def test_an_alertmanager_outage_keeps_its_rows_past_the_webhook_attempt_limit_backing_off_up_to_the_resend():
    outbox = Stores([firing("V1")])
    [row_id] = [outbox.enqueue(AM_ENDPOINT, alertmanager_outbox_row(firing("V1")))]
    session, clock = FakeSession(), Clock(T0 / 1000)
    session.status = requests.ConnectionError("refused")
    sender = notifier(outbox, session, clock, webhook_max_attempts=3)
    delays = []
    for _ in range(8):
        clock.seconds = outbox.rows[row_id]["next_attempt_ms"] / 1000
        before = clock.seconds
        assert sender.deliver_due() == 0
        delays.append(outbox.rows[row_id]["next_attempt_ms"] / 1000 - before)
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    assert outbox.rows[row_id]["failed_ms"] is None and "ConnectionError" in outbox.rows[row_id]["last_error"]

    session.status = 200
    clock.seconds = outbox.rows[row_id]["next_attempt_ms"] / 1000
    assert sender.deliver_due() == 1


def test_alertmanager_refusing_the_alerts_ends_their_rows_and_a_5xx_does_not() -> None:
    outbox = Stores([firing("V1")])
    row_id = outbox.enqueue(AM_ENDPOINT, alertmanager_outbox_row(firing("V1")))
    session, clock = FakeSession(), Clock(T0 / 1000)
    session.status = 503
    sender = notifier(outbox, session, clock)
    sender.deliver_due()
    assert outbox.rows[row_id]["failed_ms"] is None and outbox.rows[row_id]["last_error"] == "HTTP 503: refused"
    session.status = 400
    clock.seconds += 60
    sender.deliver_due()
    assert outbox.rows[row_id]["failed_ms"] == int(clock.seconds * 1000)


def test_rows_of_an_alertmanager_no_longer_configured_or_of_a_vanished_alert_end_without_a_post() -> None:
    outbox = Stores([firing("V1")])
    gone = outbox.enqueue("http://old-am:9093/api/v2/alerts", alertmanager_outbox_row(firing("V1")))
    vanished = outbox.enqueue(AM_ENDPOINT, alertmanager_outbox_row(firing("V9")))
    session = FakeSession()
    assert notifier(outbox, session, Clock(T0 / 1000)).deliver_due() == 0
    assert session.posts == []
    assert outbox.rows[gone]["last_error"] == "this Alertmanager is no longer configured"
    assert outbox.rows[vanished]["last_error"] == "the alert is no longer stored"
    assert outbox.rows[gone]["failed_ms"] and outbox.rows[vanished]["failed_ms"]


def test_firing_alerts_are_re_sent_to_every_alertmanager_once_per_interval() -> None:
    outbox = Stores([firing("V1"), firing("V2"),
                         replace(firing("V3"), state="resolved", resolved_ms=T0 + 600_000)])
    session, clock = FakeSession(), Clock(T0 / 1000 + 3600)
    sender = notifier(outbox, session, clock)
    assert sender.resend_firing() == 2  # at once, at start
    [(url, body)] = session.posts
    assert url == AM_ENDPOINT and {a["labels"]["vehicle_id"] for a in body} == {"V1", "V2"}
    assert {a["endsAt"] for a in body} == {"2026-11-23T01:04:00Z"}
    clock.seconds += 59
    assert sender.resend_firing() == 0 and len(session.posts) == 1
    clock.seconds += 1
    session.status = 500
    assert sender.resend_firing() == 0 and len(session.posts) == 2  # failed: the next interval tries again
    clock.seconds += 60
    session.status = 200
    assert sender.resend_firing() == 2
    assert {a["endsAt"] for a in session.posts[-1][1]} == {"2026-11-23T01:06:00Z"}  # 2 min later


def test_without_alertmanager_nothing_is_re_sent_and_webhooks_still_give_up_after_their_attempts() -> None:
    outbox = Stores([firing("V1")])
    row_id = outbox.enqueue("http://hook.example/x", {"version": "4", "alerts": []})
    session, clock = FakeSession(), Clock(T0 / 1000)
    session.status = 500
    sender = Notifier(outbox.alerts, outbox.outbox, AlertSettings(webhook_max_attempts=2), AlertPolicy(), "",
                      session, clock)  # type: ignore[arg-type]
    assert sender.resend_firing() == 0
    sender.deliver_due()
    clock.seconds = outbox.rows[row_id]["next_attempt_ms"] / 1000
    sender.deliver_due()
    assert outbox.rows[row_id]["failed_ms"] is not None and outbox.rows[row_id]["attempts"] == 2
    assert [url for url, _ in session.posts] == ["http://hook.example/x"] * 2
