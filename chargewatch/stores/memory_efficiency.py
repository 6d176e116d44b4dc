"""In-memory fakes of the efficiency side's ports (``chargewatch.efficiency_ports``), for unit tests of
the analytics routes and use cases; held to the same contract suite as the SQLite and InfluxDB
adapters (tests/integration/test_efficiency_store_contract.py).

:class:`InMemoryWindowStore` takes its windows through ``replace_windows`` (as the embedded engine
writes them); it computes none from readings.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Sequence
from typing import Any

from chargewatch.efficiency import EfficiencyWindow, SpanTotals, charging_windows, sum_row, window_sums
from chargewatch.efficiency_ports import AlertRecord, EfficiencyStores, Notification, QueuedNotification

_MS_PER_HOUR = 3_600_000


def _order(window: EfficiencyWindow) -> tuple[int, str, str]:
    return window.stop_ms, window.vehicle_id, window.meter_id or ""


class InMemoryWindowStore:
    """WindowSource in process memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[int, dict[tuple[int, str, str], EfficiencyWindow]] = {}  # window_ms -> key -> window

    def replace_windows(self, window_ms: int, start_ms: int, end_ms: int, windows: Sequence[EfficiencyWindow],
                        computed_ms: int) -> None:
        """Make the windows with stop in (start_ms, end_ms] exactly ``windows``."""
        with self._lock:
            stored = self._windows.setdefault(window_ms, {})
            for key in [key for key in stored if start_ms < key[0] <= end_ms]:
                del stored[key]
            stored.update((_order(w), w) for w in windows)

    def _in(self, window_ms: int, start_ms: int, end_ms: int) -> list[EfficiencyWindow]:
        with self._lock:
            stored = list(self._windows.get(window_ms, {}).values())
        return sorted((w for w in stored if start_ms < w.stop_ms <= end_ms), key=_order)

    def windows(self, window_ms: int, start_ms: int, end_ms: int, vehicle_id: str | None = None
                ) -> list[EfficiencyWindow]:
        return [w for w in self._in(window_ms, start_ms, end_ms) if vehicle_id is None or w.vehicle_id == vehicle_id]

    def windows_of(self, window_ms: int, start_ms: int, end_ms: int, vehicle_ids: Sequence[str]
                   ) -> list[EfficiencyWindow]:
        wanted = set(vehicle_ids)
        chosen = [w for w in self._in(window_ms, start_ms, end_ms) if w.vehicle_id in wanted]
        return sorted(chosen, key=lambda w: (w.vehicle_id, w.stop_ms, w.meter_id or ""))

    def charging_windows(self, window_ms: int, start_ms: int, end_ms: int, active_since_ms: int, active_kwh: float
                         ) -> list[EfficiencyWindow]:
        return charging_windows(self._in(window_ms, start_ms, end_ms), active_since_ms, active_kwh)

    def vehicle_window_sums(self, window_ms: int, vehicle_id: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        return window_sums([sum_row(w) for w in self.windows(window_ms, start_ms, end_ms, vehicle_id)])

    def vehicle_totals(self, window_ms: int, start_ms: int, end_ms: int) -> dict[str, SpanTotals]:
        by_vehicle: dict[str, list[EfficiencyWindow]] = {}
        for w in self._in(window_ms, start_ms, end_ms):
            by_vehicle.setdefault(w.vehicle_id, []).append(w)
        return {vehicle_id: _totals(windows) for vehicle_id, windows in sorted(by_vehicle.items())}

    def fleet_hourly_energy(self, window_ms: int, start_ms: int, end_ms: int) -> list[tuple[int, float, float]]:
        hour_lo = -(-start_ms // _MS_PER_HOUR) * _MS_PER_HOUR  # the first whole hour starts here
        hour_hi = end_ms // _MS_PER_HOUR * _MS_PER_HOUR  # the last whole hour stops here
        if hour_lo >= hour_hi:
            hour_lo = hour_hi = end_ms
        hours: dict[int, tuple[list[float], list[float]]] = {}
        for w in self._in(window_ms, start_ms, end_ms):
            if w.stop_ms <= hour_lo:
                label = hour_lo
            elif w.stop_ms <= hour_hi:
                label = -(-w.stop_ms // _MS_PER_HOUR) * _MS_PER_HOUR
            else:
                label = end_ms
            ac, dc = hours.setdefault(label, ([], []))
            ac.append(w.ac_kwh)
            dc.append(w.dc_kwh)
        return [(stop, math.fsum(ac), math.fsum(dc)) for stop, (ac, dc) in sorted(hours.items())]

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


def _totals(windows: list[EfficiencyWindow]) -> SpanTotals:
    temps = [(w.avg_battery_temp * w.dc_readings, w.dc_readings) for w in windows if w.avg_battery_temp is not None]
    return SpanTotals(
        ac_kwh=math.fsum(w.ac_kwh for w in windows), dc_kwh=math.fsum(w.dc_kwh for w in windows),
        ac_readings=sum(w.ac_readings for w in windows), dc_readings=sum(w.dc_readings for w in windows),
        windows=len(windows), battery_temp_sum=math.fsum(t for t, _ in temps),
        battery_temp_readings=sum(n for _, n in temps),
    )


class InMemoryNotificationOutbox:
    """NotificationOutbox in process memory. ``rows`` holds each notification by id with the
    columns of the SQLite table (``url``, ``payload``, ``attempts``, ``next_attempt_ms``,
    ``delivered_ms``, ``failed_ms``, ``last_error``), for tests to look into."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: dict[int, dict[str, Any]] = {}
        self._next_id = 1

    def queue(self, notifications: Sequence[QueuedNotification], now_ms: int) -> list[int]:
        """Queue notifications, due at ``now_ms`` (:class:`InMemoryAlertStore` queues its records'
        this way); returns their ids."""
        ids = []
        with self._lock:
            for url, payload in notifications:
                self.rows[self._next_id] = {"url": url, "payload": copy.deepcopy(payload), "attempts": 0,
                                            "next_attempt_ms": now_ms, "delivered_ms": None, "failed_ms": None,
                                            "last_error": None}
                ids.append(self._next_id)
                self._next_id += 1
        return ids

    def due_notifications(self, now_ms: int, limit: int = 50) -> list[Notification]:
        with self._lock:
            due = [(id_, row) for id_, row in sorted(self.rows.items())
                   if row["delivered_ms"] is None and row["failed_ms"] is None and row["next_attempt_ms"] <= now_ms]
            return [Notification(id_, row["url"], copy.deepcopy(row["payload"]), row["attempts"])
                    for id_, row in due[:limit]]

    def record_delivery(self, notification_id: int, now_ms: int, *, error: str | None = None,
                        retry_at_ms: int | None = None) -> None:
        with self._lock:
            row = self.rows.get(notification_id)
            if row is None:
                return
            row["attempts"] += 1
            row["last_error"] = error
            if error is None:
                row["delivered_ms"] = now_ms
            elif retry_at_ms is not None:
                row["next_attempt_ms"] = retry_at_ms
            else:
                row["failed_ms"] = now_ms

    def notification_counts(self) -> dict[str, int]:
        with self._lock:
            rows = list(self.rows.values())
        return {"pending": sum(r["delivered_ms"] is None and r["failed_ms"] is None for r in rows),
                "delivered": sum(r["delivered_ms"] is not None for r in rows),
                "failed": sum(r["failed_ms"] is not None for r in rows)}


class InMemoryAlertStore:
    """AlertStore in process memory; queues notifications in ``outbox``."""

    def __init__(self, outbox: InMemoryNotificationOutbox) -> None:
        self._lock = threading.Lock()
        self._alerts: dict[tuple[str, str, int], AlertRecord] = {}
        self.outbox = outbox

    def _sorted(self, states: set[str]) -> list[AlertRecord]:
        with self._lock:
            chosen = [a for a in self._alerts.values() if a.state in states]
        return sorted(chosen, key=lambda a: (a.vehicle_id, a.rule, a.started_ms))

    def open_alerts(self) -> list[AlertRecord]:
        return self._sorted({"pending", "firing"})

    def firing_alerts(self) -> list[AlertRecord]:
        return self._sorted({"firing"})

    def firing_count(self) -> int:
        return len(self.firing_alerts())

    def alert(self, vehicle_id: str, rule: str, started_ms: int) -> AlertRecord | None:
        with self._lock:
            return self._alerts.get((vehicle_id, rule, started_ms))

    def recent_alerts(self, since_ms: int, limit: int = 500) -> list[AlertRecord]:
        with self._lock:
            chosen = [a for a in self._alerts.values() if a.state == "firing" or (
                a.state == "resolved" and a.resolved_ms is not None and a.resolved_ms >= since_ms)]
        chosen.sort(key=lambda a: a.fired_ms if a.fired_ms is not None else a.started_ms, reverse=True)
        return chosen[:limit]

    def save_alerts(self, records: Sequence[AlertRecord], notifications: Sequence[QueuedNotification],
                    now_ms: int) -> None:
        with self._lock:
            self._alerts.update(((r.vehicle_id, r.rule, r.started_ms), r) for r in records)
        self.outbox.queue(notifications, now_ms)

    def replace_alerts(self, since_ms: int, until_ms: int, records: Sequence[AlertRecord],
                       notifications: Sequence[QueuedNotification], now_ms: int,
                       vehicle_ids: Sequence[str] | None = None) -> int:
        only = None if vehicle_ids is None else set(vehicle_ids)
        with self._lock:
            doomed = [key for key in self._alerts if since_ms < key[2] <= until_ms and (only is None or key[0] in only)]
            for key in doomed:
                del self._alerts[key]
            self._alerts.update(((r.vehicle_id, r.rule, r.started_ms), r) for r in records)
        self.outbox.queue(notifications, now_ms)
        return len(doomed)


class InMemoryRunnerState:
    """RunnerStateStore in process memory."""

    def __init__(self) -> None:
        self._values: dict[str, float] = {}

    def load(self) -> dict[str, float]:
        return dict(self._values)

    def update(self, values: dict[str, float]) -> None:
        self._values.update({key: float(value) for key, value in values.items()})


def in_memory_efficiency_stores() -> EfficiencyStores:
    """Every efficiency port on the in-memory fakes (no window writer: load windows with
    ``stores.windows.replace_windows``)."""
    outbox = InMemoryNotificationOutbox()
    return EfficiencyStores(windows=InMemoryWindowStore(), alerts=InMemoryAlertStore(outbox), notifications=outbox,
                            runner_state=InMemoryRunnerState())
