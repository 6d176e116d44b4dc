"""Alerts and the notification outbox in the shared SQLite database: the AlertStore and
NotificationOutbox of ``chargewatch.efficiency_ports``, in every mode (influx mode too: alert state
and deliveries are local).

Tables: ``alerts`` (one row per vehicle, rule and start) and ``notifications`` (the outbox of
webhook and Alertmanager deliveries). An alert change and the notifications it queues are written
in one transaction, so a crash never loses a notification of a stored change nor sends one for a
change that was not stored.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from chargewatch.efficiency_ports import AlertRecord, Notification, QueuedNotification
from chargewatch.stores import StorageUnavailable
from chargewatch.stores.sqlite_database import SqliteDatabase

_ALERTS_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS alerts (
        vehicle_id TEXT NOT NULL, rule TEXT NOT NULL, started_ms INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'resolved', 'cancelled')),
        meter_id TEXT, value REAL, fired_ms INTEGER, resolved_ms INTEGER, updated_ms INTEGER NOT NULL,
        replayed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (vehicle_id, rule, started_ms)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state)",
]

_NOTIFICATIONS_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT, url TEXT NOT NULL, payload TEXT NOT NULL,
        created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL,
        delivered_ms INTEGER, failed_ms INTEGER, last_error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS notifications_due ON notifications (delivered_ms, failed_ms, next_attempt_ms)",
]

_ALERT_COLUMNS = ("vehicle_id, rule, started_ms, state, meter_id, value, fired_ms, resolved_ms, updated_ms, "
                  "replayed")


def _alert(row: Sequence[Any]) -> AlertRecord:
    record = AlertRecord(*row)
    return replace(record, replayed=bool(record.replayed))


class SqliteAlertStore:
    """AlertStore on the ``alerts`` table; queues notifications in the ``notifications`` table."""

    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database
        database.ensure_tables(_ALERTS_SCHEMA + _NOTIFICATIONS_SCHEMA, "alerts")
        if not self._alerts_have_replayed():
            # A file from before alert replay: the column every record now carries.
            try:
                database.write([("ALTER TABLE alerts ADD COLUMN replayed INTEGER NOT NULL DEFAULT 0", ())])
            except StorageUnavailable:
                if not self._alerts_have_replayed():  # not another process adding it at the same moment
                    raise

    def _alerts_have_replayed(self) -> bool:
        return "replayed" in {row[1] for row in self.database.read("PRAGMA table_info(alerts)")}

    def open_alerts(self) -> list[AlertRecord]:
        return [_alert(row) for row in self.database.read(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state IN ('pending', 'firing') ORDER BY vehicle_id, rule")]

    def firing_alerts(self) -> list[AlertRecord]:
        return [_alert(row) for row in self.database.read(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state = 'firing' ORDER BY vehicle_id, rule")]

    def firing_count(self) -> int:
        (count,), = self.database.read("SELECT count(*) FROM alerts WHERE state = 'firing'")
        return int(count)

    def alert(self, vehicle_id: str, rule: str, started_ms: int) -> AlertRecord | None:
        rows = self.database.read(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE vehicle_id = ? AND rule = ? "
                                  "AND started_ms = ?", (vehicle_id, rule, started_ms))
        return _alert(rows[0]) if rows else None

    def recent_alerts(self, since_ms: int, limit: int = 500) -> list[AlertRecord]:
        return [_alert(row) for row in self.database.read(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state = 'firing' OR (state = 'resolved' AND resolved_ms >= ?) "
            "ORDER BY coalesce(fired_ms, started_ms) DESC LIMIT ?", (since_ms, limit))]

    def save_alerts(self, records: Sequence[AlertRecord], notifications: Sequence[QueuedNotification],
                    now_ms: int) -> None:
        if records or notifications:
            with self.database.transaction("saving alerts") as conn:
                _store_alerts(conn, records, notifications, now_ms)

    def replace_alerts(self, since_ms: int, until_ms: int, records: Sequence[AlertRecord],
                       notifications: Sequence[QueuedNotification], now_ms: int,
                       vehicle_ids: Sequence[str] | None = None) -> int:
        where = "started_ms > ? AND started_ms <= ?"
        chunks: list[Sequence[str]] = [()] if vehicle_ids is None else [
            vehicle_ids[first:first + 500] for first in range(0, len(vehicle_ids), 500)]  # SQLite's parameter cap
        removed = 0
        with self.database.transaction("replacing alerts") as conn:
            for chunk in chunks:
                only = f" AND vehicle_id IN ({', '.join('?' * len(chunk))})" if vehicle_ids is not None else ""
                bound = (since_ms, until_ms, *chunk)
                (count,), = conn.execute(f"SELECT count(*) FROM alerts WHERE {where}{only}", bound)
                conn.execute(f"DELETE FROM alerts WHERE {where}{only}", bound)
                removed += count
            _store_alerts(conn, records, notifications, now_ms)
        return removed


class SqliteNotificationOutbox:
    """NotificationOutbox on the ``notifications`` table."""

    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database
        database.ensure_tables(_NOTIFICATIONS_SCHEMA, "notifications")

    def due_notifications(self, now_ms: int, limit: int = 50) -> list[Notification]:
        rows = self.database.read(
            "SELECT id, url, payload, attempts FROM notifications WHERE delivered_ms IS NULL AND failed_ms IS NULL "
            "AND next_attempt_ms <= ? ORDER BY id LIMIT ?", (now_ms, limit))
        return [Notification(id_, url, json.loads(payload), attempts) for id_, url, payload, attempts in rows]

    def record_delivery(self, notification_id: int, now_ms: int, *, error: str | None = None,
                        retry_at_ms: int | None = None) -> None:
        params: tuple[Any, ...]
        if error is None:
            sql, params = ("UPDATE notifications SET delivered_ms = ?, attempts = attempts + 1, last_error = NULL "
                           "WHERE id = ?", (now_ms, notification_id))
        elif retry_at_ms is not None:
            sql, params = ("UPDATE notifications SET attempts = attempts + 1, next_attempt_ms = ?, last_error = ? "
                           "WHERE id = ?", (retry_at_ms, error, notification_id))
        else:
            sql, params = ("UPDATE notifications SET attempts = attempts + 1, failed_ms = ?, last_error = ? "
                           "WHERE id = ?", (now_ms, error, notification_id))
        self.database.write([(sql, params)])

    def notification_counts(self) -> dict[str, int]:
        (pending, delivered, failed), = self.database.read(
            "SELECT total(delivered_ms IS NULL AND failed_ms IS NULL), total(delivered_ms IS NOT NULL), "
            "total(failed_ms IS NOT NULL) FROM notifications")
        return {"pending": int(pending), "delivered": int(delivered), "failed": int(failed)}


_UPSERT_ALERT = (
    "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (vehicle_id, rule, started_ms) "
    "DO UPDATE SET state = excluded.state, meter_id = excluded.meter_id, value = excluded.value, "
    "fired_ms = excluded.fired_ms, resolved_ms = excluded.resolved_ms, updated_ms = excluded.updated_ms, "
    "replayed = excluded.replayed")
_QUEUE_NOTIFICATION = "INSERT INTO notifications (url, payload, created_ms, next_attempt_ms) VALUES (?, ?, ?, ?)"


def _store_alerts(conn: sqlite3.Connection, records: Sequence[AlertRecord],
                  notifications: Sequence[QueuedNotification], now_ms: int) -> None:
    """Upsert ``records`` and queue ``notifications`` on ``conn`` (inside a write transaction)."""
    conn.executemany(_UPSERT_ALERT, [(r.vehicle_id, r.rule, r.started_ms, r.state, r.meter_id, r.value, r.fired_ms,
                                      r.resolved_ms, r.updated_ms, int(r.replayed)) for r in records])
    conn.executemany(_QUEUE_NOTIFICATION,
                     [(url, json.dumps(payload), now_ms, now_ms) for url, payload in notifications])
