"""The ports of the efficiency side: where windows are read and written, alerts kept, notifications
queued and the task runner's state recorded; with the records they pass.

The reading side's port is :class:`chargewatch.stores.ReadingStore`. Adapters (chosen in one place,
``chargewatch.bootstrap``):

| port | SQLite (embedded) | InfluxDB | in memory (tests) |
|---|---|---|---|
| :class:`WindowSource` | ``sqlite_windows.SqliteWindowStore`` | ``influx_windows.InfluxWindowSource`` | in memory |
| :class:`WindowWriter` | ``SqliteWindowStore`` | (the Flux task writes) | |
| :class:`AlertStore` | ``sqlite_alerts.SqliteAlertStore`` | (SQLite) | ``InMemoryAlertStore`` |
| :class:`NotificationOutbox` | ``sqlite_alerts.SqliteNotificationOutbox`` | (SQLite) | ``InMemoryNotificationOutbox`` |
| :class:`RunnerStateStore` | ``sqlite_runner_state.SqliteRunnerState`` | (SQLite) | ``InMemoryRunnerState`` |

(modules of ``chargewatch.stores``; ``InMemory*`` in ``stores.memory_efficiency``)

Contract common to every port: times are epoch milliseconds; a window is named by its stop, and a
range ``(start_ms, end_ms]`` holds the windows whose stop lies in it (windows are half-open
``[start, stop)`` in reading time, so these are the windows wholly inside ``[start_ms, end_ms)``);
failures raise :class:`chargewatch.stores.StorageUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from chargewatch.efficiency import EfficiencyWindow, SideTotals, SpanTotals, WindowKey


@dataclass(frozen=True)
class AlertRecord:
    """One alert of one rule for one vehicle, keyed by (vehicle, rule, start). States: pending,
    firing, resolved, cancelled (pending that never fired); see docs/alerts.md."""

    vehicle_id: str
    rule: str
    started_ms: int
    state: str
    meter_id: str | None
    value: float | None
    fired_ms: int | None
    resolved_ms: int | None
    updated_ms: int
    replayed: bool = False  # found by ``chargewatch alerts replay`` (or the runner's replay of backfilled hours)


@dataclass(frozen=True)
class Notification:
    """A queued delivery: the body for a webhook, or which alert to send to an Alertmanager."""

    id: int
    url: str
    payload: dict[str, Any]
    attempts: int


# (url, payload) of a notification to queue
QueuedNotification = tuple[str, dict[str, Any]]


class WindowSource(Protocol):
    """The efficiency windows as reports, the console and the alert rules read them."""

    def windows(self, window_ms: int, start_ms: int, end_ms: int, vehicle_id: str | None = None
                ) -> list[EfficiencyWindow]:
        """Windows with stop in (start_ms, end_ms], of one vehicle or all, ordered by stop, vehicle,
        meter (an unpaired vehicle's window, meter None, first)."""

    def windows_of(self, window_ms: int, start_ms: int, end_ms: int, vehicle_ids: Sequence[str]
                   ) -> list[EfficiencyWindow]:
        """Windows of the given vehicles with stop in (start_ms, end_ms], ordered by vehicle, stop, meter."""

    def charging_windows(self, window_ms: int, start_ms: int, end_ms: int, active_since_ms: int, active_kwh: float
                         ) -> list[EfficiencyWindow]:
        """:meth:`windows` of every vehicle, narrowed to the vehicles with a window stopping in
        (active_since_ms, end_ms] whose meters together reached ``active_kwh`` on either side (as
        :func:`chargewatch.efficiency.charging_windows`): the only vehicles the alert rules can
        judge. An adapter may leave in a vehicle just below ``active_kwh``, never leave one out."""

    def vehicle_window_sums(self, window_ms: int, vehicle_id: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        """:func:`chargewatch.efficiency.window_sums` of one vehicle's windows with stop in
        (start_ms, end_ms]: exact sums."""

    def vehicle_totals(self, window_ms: int, start_ms: int, end_ms: int) -> dict[str, SpanTotals]:
        """Per-vehicle sums over the windows with stop in (start_ms, end_ms], ordered by vehicle id;
        vehicles without a window are absent. Sums may be a few ulps from exact (rollups)."""

    def fleet_hourly_energy(self, window_ms: int, start_ms: int, end_ms: int) -> list[tuple[int, float, float]]:
        """The whole fleet's (hour stop, AC kWh, DC kWh) per hour of the windows with stop in
        (start_ms, end_ms], oldest first; a partial last hour is labelled ``end_ms``; hours without
        windows are absent."""

    def ping(self) -> None:
        """Raise StorageUnavailable unless the windows can be read."""

    def close(self) -> None: ...


class WindowWriter(Protocol):
    """The embedded engine's side of the windows: sums of the readings, windows replaced whole,
    the marks late readings leave. Only the task runner on the embedded store writes windows."""

    def side_totals(self, window_ms: int, start_ms: int, end_ms: int, vehicle_ids: Sequence[str] | None = None
                    ) -> tuple[dict[WindowKey, SideTotals], dict[WindowKey, SideTotals]]:
        """(AC, DC) sums and counts per (vehicle, meter, window stop) of the readings timed in
        [start_ms, end_ms), of every vehicle or only of ``vehicle_ids``."""

    def replace_windows(self, window_ms: int, start_ms: int, end_ms: int, windows: Sequence[EfficiencyWindow],
                        computed_ms: int) -> None:
        """Make the stored windows with stop in (start_ms, end_ms] exactly ``windows``; idempotent."""

    def replace_vehicle_windows(self, window_ms: int, stop_ms: int, vehicle_ids: Sequence[str],
                                windows: Sequence[EfficiencyWindow], computed_ms: int) -> None:
        """Make the stored windows of ``vehicle_ids`` with stop ``stop_ms`` exactly ``windows``."""

    def mark_computing(self, window_ms: int, through_ms: int) -> None:
        """From now on, a reading for a window with stop up to ``through_ms`` marks it stale."""

    def stale_windows(self, window_ms: int) -> list[tuple[int, str, int]]:
        """Windows late readings marked, as (stop ms, vehicle id, mark), in stop order."""

    def clear_stale_windows(self, window_ms: int, marks: Sequence[tuple[int, str, int]]) -> None:
        """Forget marks that were handled; a mark renewed since stays."""

    def refresh_fleet_latest(self, window_ms: int, start_ms: int, end_ms: int) -> None:
        """Make ``vehicle_totals`` of exactly this span cheap (the fleet summary's default span)."""


class AlertStore(Protocol):
    """Alert records, and the notifications their changes queue (in the same transaction)."""

    def open_alerts(self) -> list[AlertRecord]:
        """Alerts in state pending or firing, by vehicle and rule."""

    def firing_alerts(self) -> list[AlertRecord]:
        """Alerts in state firing, by vehicle and rule."""

    def firing_count(self) -> int:
        """How many alerts are firing (``len(firing_alerts())``, without reading them)."""

    def alert(self, vehicle_id: str, rule: str, started_ms: int) -> AlertRecord | None:
        """One alert as it is stored now, or None."""

    def recent_alerts(self, since_ms: int, limit: int = 500) -> list[AlertRecord]:
        """Firing, and fired-then-resolved since ``since_ms``; newest (by fired, else started) first."""

    def save_alerts(self, records: Sequence[AlertRecord], notifications: Sequence[QueuedNotification],
                    now_ms: int) -> None:
        """Upsert records and queue their notifications, all or nothing."""

    def replace_alerts(self, since_ms: int, until_ms: int, records: Sequence[AlertRecord],
                       notifications: Sequence[QueuedNotification], now_ms: int,
                       vehicle_ids: Sequence[str] | None = None) -> int:
        """Make the alerts that started in (since_ms, until_ms] exactly ``records`` (records that
        started earlier are upserted) and queue ``notifications``, all or nothing; returns how many
        stored alerts it removed. ``vehicle_ids``: only those vehicles' alerts are replaced."""


class NotificationOutbox(Protocol):
    """The delivery side of the notifications :class:`AlertStore` queues."""

    def due_notifications(self, now_ms: int, limit: int = 50) -> list[Notification]:
        """Undelivered notifications whose next attempt is due, oldest first."""

    def record_delivery(self, notification_id: int, now_ms: int, *, error: str | None = None,
                        retry_at_ms: int | None = None) -> None:
        """Delivered (no error), to retry at ``retry_at_ms``, or given up (error and no retry)."""

    def notification_counts(self) -> dict[str, int]:
        """``pending``, ``delivered``, ``failed`` counts."""


class RunnerStateStore(Protocol):
    """What the task runner last did (and requests to it), as named numbers."""

    def load(self) -> dict[str, float]: ...

    def update(self, values: dict[str, float]) -> None:
        """Set the given keys; others keep their values."""


@dataclass
class EfficiencyStores:
    """The efficiency side's adapters of one installation, as ``chargewatch.bootstrap`` builds them.

    ``window_writer`` is None when the windows are computed elsewhere (influx mode: the Flux task).
    """

    windows: WindowSource
    alerts: AlertStore
    notifications: NotificationOutbox
    runner_state: RunnerStateStore
    window_writer: WindowWriter | None = None

    def close(self) -> None:
        self.windows.close()
