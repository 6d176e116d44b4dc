"""Notification delivery (analytics/notify.py) on a fake outbox and a fake HTTP session: what goes to
Alertmanager's API v2 and when, retries and their end, re-sending what fires; webhooks as before."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import requests

from analytics.alerts import LOW, AlertPolicy
from analytics.notify import Notifier, alertmanager_endpoint, alertmanager_outbox_row
from chargewatch.settings import AlertSettings
from chargewatch.stores.sqlite_efficiency import AlertRecord, Notification

T0 = 1_795_392_000_000  # 2026-11-23T00:00Z
AM = "http://127.0.0.1:9093"
AM_ENDPOINT = AM + "/api/v2/alerts"


class FakeOutbox:
    """The part of SqliteEfficiencyStore the notifier uses, in memory."""

    def __init__(self, alerts: list[AlertRecord]) -> None:
        self.alerts = {(a.vehicle_id, a.rule, a.started_ms): a for a in alerts}
        self.rows: dict[int, dict[str, Any]] = {}

    def enqueue(self, url: str, payload: dict[str, Any], due_ms: int = 0) -> int:
        row_id = len(self.rows) + 1
        self.rows[row_id] = {"url": url, "payload": payload, "attempts": 0, "next_ms": due_ms, "delivered_ms": None,
                             "failed_ms": None, "error": None}
        return row_id

    def due_notifications(self, now_ms: int, limit: int = 50) -> list[Notification]:
        return [Notification(i, r["url"], r["payload"], r["attempts"]) for i, r in self.rows.items()
                if r["delivered_ms"] is None and r["failed_ms"] is None and r["next_ms"] <= now_ms][:limit]

    def record_delivery(self, notification_id: int, now_ms: int, *, error: str | None = None,
                        retry_at_ms: int | None = None) -> None:
        row = self.rows[notification_id]
        row["attempts"] += 1
        row["error"] = error
        if error is None:
            row["delivered_ms"] = now_ms
        elif retry_at_ms is not None:
            row["next_ms"] = retry_at_ms
        else:
            row["failed_ms"] = now_ms

    def alert(self, vehicle_id: str, rule: str, started_ms: int) -> AlertRecord | None:
        return self.alerts.get((vehicle_id, rule, started_ms))

    def firing_alerts(self) -> list[AlertRecord]:
        return [a for a in self.alerts.values() if a.state == "firing"]


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


def notifier(outbox: FakeOutbox, session: FakeSession, clock: Clock, **settings: Any) -> Notifier:
    alert_settings = AlertSettings(alertmanager_urls=[AM], alertmanager_resend_seconds=60,
                                   webhook_backoff_seconds=2, **settings)
    # The fakes stand in for SqliteEfficiencyStore and requests.Session, which Notifier is typed to.
    return Notifier(outbox, alert_settings, AlertPolicy(), "http://cw:8081", session,  # type: ignore[arg-type]
                    clock)


def test_due_alertmanager_rows_go_in_one_post_each_as_its_alert_is_stored_when_sent() -> None:
    v1, v2 = firing("V1"), firing("V2")
    outbox = FakeOutbox([v1, v2])
    for record in (v1, v2):
        outbox.enqueue(alertmanager_endpoint(AM), alertmanager_outbox_row(record))
    # V2 resolved after its row was queued (an outage held the row back): it goes out resolved.
    outbox.alerts[(v2.vehicle_id, LOW, T0)] = replace(v2, state="resolved", resolved_ms=T0 + 900_000)
    session, clock = FakeSession(), Clock(T0 / 1000 + 1800)

    assert notifier(outbox, session, clock).deliver_due() == 2

    [(url, body)] = session.posts
    assert url == AM_ENDPOINT
    ends = {a["labels"]["vehicle_id"]: a["endsAt"] for a in body}
    assert ends == {"V1": "2026-11-23T00:34:00Z",  # now + 4 x 60 s: still firing
                    "V2": "2026-11-23T00:15:00Z"}  # its real end
    assert all(row["delivered_ms"] == T0 + 1_800_000 for row in outbox.rows.values())


def test_an_alertmanager_outage_keeps_its_rows_past_the_webhook_attempt_limit_backing_off_up_to_the_resend():
    outbox = FakeOutbox([firing("V1")])
    [row_id] = [outbox.enqueue(AM_ENDPOINT, alertmanager_outbox_row(firing("V1")))]
    session, clock = FakeSession(), Clock(T0 / 1000)
    session.status = requests.ConnectionError("refused")
    sender = notifier(outbox, session, clock, webhook_max_attempts=3)
    delays = []
    for _ in range(8):
        clock.seconds = outbox.rows[row_id]["next_ms"] / 1000
        before = clock.seconds
        assert sender.deliver_due() == 0
        delays.append(outbox.rows[row_id]["next_ms"] / 1000 - before)
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    assert outbox.rows[row_id]["failed_ms"] is None and "ConnectionError" in outbox.rows[row_id]["error"]

    session.status = 200
    clock.seconds = outbox.rows[row_id]["next_ms"] / 1000
    assert sender.deliver_due() == 1


def test_alertmanager_refusing_the_alerts_ends_their_rows_and_a_5xx_does_not() -> None:
    outbox = FakeOutbox([firing("V1")])
    row_id = outbox.enqueue(AM_ENDPOINT, alertmanager_outbox_row(firing("V1")))
    session, clock = FakeSession(), Clock(T0 / 1000)
    session.status = 503
    sender = notifier(outbox, session, clock)
    sender.deliver_due()
    assert outbox.rows[row_id]["failed_ms"] is None and outbox.rows[row_id]["error"] == "HTTP 503: refused"
    session.status = 400
    clock.seconds += 60
    sender.deliver_due()
    assert outbox.rows[row_id]["failed_ms"] == int(clock.seconds * 1000)


def test_rows_of_an_alertmanager_no_longer_configured_or_of_a_vanished_alert_end_without_a_post() -> None:
    outbox = FakeOutbox([firing("V1")])
    gone = outbox.enqueue("http://old-am:9093/api/v2/alerts", alertmanager_outbox_row(firing("V1")))
    vanished = outbox.enqueue(AM_ENDPOINT, alertmanager_outbox_row(firing("V9")))
    session = FakeSession()
    assert notifier(outbox, session, Clock(T0 / 1000)).deliver_due() == 0
    assert session.posts == []
    assert outbox.rows[gone]["error"] == "this Alertmanager is no longer configured"
    assert outbox.rows[vanished]["error"] == "the alert is no longer stored"
    assert outbox.rows[gone]["failed_ms"] and outbox.rows[vanished]["failed_ms"]


def test_firing_alerts_are_re_sent_to_every_alertmanager_once_per_interval() -> None:
    outbox = FakeOutbox([firing("V1"), firing("V2"),
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
    outbox = FakeOutbox([firing("V1")])
    row_id = outbox.enqueue("http://hook.example/x", {"version": "4", "alerts": []})
    session, clock = FakeSession(), Clock(T0 / 1000)
    session.status = 500
    # The fakes stand in for SqliteEfficiencyStore and requests.Session, which Notifier is typed to.
    sender = Notifier(outbox, AlertSettings(webhook_max_attempts=2), AlertPolicy(), "",  # type: ignore[arg-type]
                      session, clock)  # type: ignore[arg-type]
    assert sender.resend_firing() == 0
    sender.deliver_due()
    clock.seconds = outbox.rows[row_id]["next_ms"] / 1000
    sender.deliver_due()
    assert outbox.rows[row_id]["failed_ms"] is not None and outbox.rows[row_id]["attempts"] == 2
    assert [url for url, _ in session.posts] == ["http://hook.example/x"] * 2
