"""Alert delivery: drains the notification outbox with retries and exponential backoff, to webhooks
and to Alertmanager's API v2, and keeps every Alertmanager's view of the firing alerts fresh.

A webhook row holds the body to POST; it is retried up to ``webhook_max_attempts`` times.

An Alertmanager row says which alert changed (``{"alertmanager": {"vehicle_id", "rule",
"started_ms"}}``, queued by the task runner in the same transaction as the change). Its body is
built from the alert's state when it is sent, so a row held back by an outage and delivered late can
never re-open an alert that has resolved since. Alertmanager rows are retried until delivered (the
delay doubles up to the resend interval, so a recovered Alertmanager is caught up within one
interval); only a 400, Alertmanager refusing the alerts themselves, ends them. Alertmanager treats
an alert whose ``endsAt`` has passed as resolved, so every ``alertmanager_resend_seconds`` the
firing alerts are POSTed again with ``endsAt`` ``VALID_FOR_RESENDS`` intervals ahead, as Prometheus
does; if chargewatch stops, Alertmanager resolves them by itself once that has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import requests

from chargewatch.alerts import AlertPolicy, alertmanager_alert
from chargewatch.efficiency_ports import AlertRecord, AlertStore, Notification, NotificationOutbox
from chargewatch.settings import AlertSettings

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300.0
ALERTMANAGER_API_PATH = "/api/v2/alerts"
VALID_FOR_RESENDS = 4  # Prometheus sends endsAt 4 resend intervals ahead
RESEND_BATCH = 1000  # alerts in one POST when re-sending the firing alerts


def alertmanager_endpoint(base_url: str) -> str:
    """Where alerts are POSTed for the Alertmanager at ``base_url``."""
    return base_url.rstrip("/") + ALERTMANAGER_API_PATH


def alertmanager_outbox_row(record: AlertRecord) -> dict[str, Any]:
    """The outbox payload of an Alertmanager notification: which alert to send as it then is."""
    return {"alertmanager": {"vehicle_id": record.vehicle_id, "rule": record.rule, "started_ms": record.started_ms}}


class Notifier:
    """Delivers the outbox and re-sends the firing alerts to every Alertmanager; one per data directory
    (it runs inside the task runner's process). ``clock`` gives seconds since the epoch."""

    def __init__(self, alerts: AlertStore, outbox: NotificationOutbox, settings: AlertSettings, policy: AlertPolicy,
                 external_url: str = "", session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.alerts = alerts
        self.outbox = outbox
        self.settings = settings
        self.policy = policy
        self.external_url = external_url
        self.session = session or requests.Session()
        self.clock = clock
        self.endpoints = [alertmanager_endpoint(url) for url in settings.alertmanager_urls]
        self.next_resend_s = 0.0  # at once: a restarted runner tells Alertmanager what still fires

    @property
    def valid_for_ms(self) -> int:
        return int(VALID_FOR_RESENDS * self.settings.alertmanager_resend_seconds * 1000)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def run_pass(self) -> int:
        """Deliver what is due, then re-send the firing alerts if their interval has come; returns how
        many notifications were delivered."""
        delivered = self.deliver_due()
        self.resend_firing()
        return delivered

    def run(self, stopping: Callable[[float], bool], poll_seconds: float = 1.0) -> None:
        """Pass after pass until ``stopping(timeout)`` returns True."""
        while not stopping(poll_seconds):
            try:
                self.run_pass()
            except Exception:  # keep delivering; the outbox keeps what was not sent
                logger.exception("notification delivery pass failed")

    # -- the outbox ----------------------------------------------------------------------------

    def deliver_due(self) -> int:
        """Send every notification that is due once; returns how many were delivered."""
        delivered = 0
        to_alertmanager: dict[str, list[Notification]] = {}
        for note in self.outbox.due_notifications(self._now_ms()):
            if "alertmanager" in note.payload:
                to_alertmanager.setdefault(note.url, []).append(note)
            else:
                delivered += self._deliver_webhook(note)
        for url, notes in to_alertmanager.items():
            delivered += self._deliver_to_alertmanager(url, notes)
        return delivered

    def _deliver_webhook(self, note: Notification) -> int:
        error, _ = self._post(note.url, note.payload)
        now_ms = self._now_ms()
        if error is None:
            self.outbox.record_delivery(note.id, now_ms)
            return 1
        attempt = note.attempts + 1
        if attempt >= self.settings.webhook_max_attempts:
            logger.error("giving up on webhook %s after %d attempts: %s", note.url, attempt, error)
            self.outbox.record_delivery(note.id, now_ms, error=error)
        else:
            delay = min(self.settings.webhook_backoff_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
            logger.warning("webhook %s failed (%s); retry %d in %.0f s", note.url, error, attempt, delay)
            self.outbox.record_delivery(note.id, now_ms, error=error, retry_at_ms=now_ms + int(delay * 1000))
        return 0

    def _deliver_to_alertmanager(self, url: str, notes: Sequence[Notification]) -> int:
        """All due rows of one Alertmanager in one POST, each alert as it is stored now."""
        now_ms = self._now_ms()
        sendable: list[Notification] = []
        alerts: list[dict[str, Any]] = []
        for note in notes:
            key = note.payload["alertmanager"]
            record = self.alerts.alert(key["vehicle_id"], key["rule"], key["started_ms"])
            if url not in self.endpoints:
                self.outbox.record_delivery(note.id, now_ms, error="this Alertmanager is no longer configured")
            elif record is None or record.fired_ms is None:
                self.outbox.record_delivery(note.id, now_ms, error="the alert is no longer stored")
            else:
                sendable.append(note)
                alerts.append(alertmanager_alert(record, self.policy, self.external_url, now_ms, self.valid_for_ms))
        if not alerts:
            return 0
        error, permanent = self._post(url, alerts)
        now_ms = self._now_ms()
        if error is None:
            for note in sendable:
                self.outbox.record_delivery(note.id, now_ms)
            return len(sendable)
        if permanent:
            logger.error("Alertmanager %s refused %d alert(s): %s", url, len(alerts), error)
        else:
            logger.warning("Alertmanager %s failed (%s); %d alert(s) kept for retry", url, error, len(alerts))
        for note in sendable:
            if permanent:
                self.outbox.record_delivery(note.id, now_ms, error=error)
                continue
            delay = min(self.settings.webhook_backoff_seconds * 2 ** note.attempts,
                        self.settings.alertmanager_resend_seconds)
            self.outbox.record_delivery(note.id, now_ms, error=error, retry_at_ms=now_ms + int(delay * 1000))
        return 0

    # -- re-sending what fires -----------------------------------------------------------------

    def resend_firing(self) -> int:
        """POST every firing alert to every Alertmanager, at most once per resend interval; returns how
        many alerts were accepted. A failure waits for the next interval (the state is in the store)."""
        if not self.endpoints or self.clock() < self.next_resend_s:
            return 0
        self.next_resend_s = self.clock() + self.settings.alertmanager_resend_seconds
        firing = self.alerts.firing_alerts()
        now_ms = self._now_ms()
        alerts = [alertmanager_alert(record, self.policy, self.external_url, now_ms, self.valid_for_ms)
                  for record in firing]
        accepted = 0
        for url in self.endpoints:
            for first in range(0, len(alerts), RESEND_BATCH):
                error, _ = self._post(url, alerts[first:first + RESEND_BATCH])
                if error is not None:
                    logger.warning("re-sending %d firing alert(s) to Alertmanager %s failed: %s", len(alerts), url,
                                   error)
                    break
                accepted += len(alerts[first:first + RESEND_BATCH])
        return accepted

    def _post(self, url: str, body: Any) -> tuple[str | None, bool]:
        """POST ``body`` as JSON; (None, False) on a 2xx, else (the error, whether it is a 400: the
        receiver refuses this body and would refuse it again)."""
        try:
            response = self.session.post(url, json=body, timeout=self.settings.webhook_timeout_seconds)
        except requests.RequestException as err:
            return f"{type(err).__name__}: {err}", False
        if 200 <= response.status_code < 300:
            return None, False
        return f"HTTP {response.status_code}: {response.text[:300]}", response.status_code == 400
