"""Webhook delivery: drains the notification outbox with retries and exponential backoff."""

from __future__ import annotations

import logging
import time
from typing import Callable

import requests

from chargewatch.settings import AlertSettings
from chargewatch.stores.sqlite_efficiency import SqliteEfficiencyStore

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300.0


def deliver_due(store: SqliteEfficiencyStore, settings: AlertSettings, session: requests.Session,
                now: Callable[[], float] = time.time) -> int:
    """POST every notification that is due once; returns how many were delivered."""
    delivered = 0
    for note in store.due_notifications(int(now() * 1000)):
        try:
            response = session.post(note.url, json=note.payload, timeout=settings.webhook_timeout_seconds)
            error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except requests.RequestException as err:
            error = f"{type(err).__name__}: {err}"
        now_ms = int(now() * 1000)
        if error is None:
            store.record_delivery(note.id, now_ms)
            delivered += 1
            continue
        attempt = note.attempts + 1
        if attempt >= settings.webhook_max_attempts:
            logger.error("giving up on webhook %s after %d attempts: %s", note.url, attempt, error)
            store.record_delivery(note.id, now_ms, error=error)
        else:
            delay = min(settings.webhook_backoff_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
            logger.warning("webhook %s failed (%s); retry %d in %.0f s", note.url, error, attempt, delay)
            store.record_delivery(note.id, now_ms, error=error, retry_at_ms=now_ms + int(delay * 1000))
    return delivered


def deliver_forever(store: SqliteEfficiencyStore, settings: AlertSettings, stopping: Callable[[float], bool],
                    poll_seconds: float = 1.0) -> None:
    session = requests.Session()
    while not stopping(poll_seconds):
        try:
            deliver_due(store, settings, session)
        except Exception:  # keep delivering; the outbox keeps what was not sent
            logger.exception("webhook delivery pass failed")
