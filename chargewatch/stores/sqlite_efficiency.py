"""Efficiency windows, hourly rollups, task-runner state and alerts in the embedded SQLite file.

Sits beside :class:`SqliteReadingStore` on the same file and its write lock. Tables:

- ``efficiency``: one row per (window length, window stop, vehicle, meter); ``meter_id`` is ``''``
  for an unpaired vehicle (SQLite primary keys cannot hold NULL the way we need). Keyed time first,
  like the history: the runner rewrites and rolls up a time range of the whole fleet at once; a
  vehicle's own report goes through ``efficiency_vehicle``.
- ``efficiency_hourly``: per-vehicle sums of the windows of each hour, so a fleet summary over a
  day reads 24 rows per vehicle instead of 288. Summed by SQLite (plain float addition, a few ulps
  from exact): the fleet summary reads them; a vehicle's own report sums its windows exactly.
- ``runner_state``, ``alerts``, ``notifications`` (the outbox of webhook and Alertmanager deliveries).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from chargewatch.efficiency import EfficiencyWindow, SideTotals, SpanTotals, WindowKey
from chargewatch.stores import StorageUnavailable
from chargewatch.stores.sqlite import MS_PER_DAY, MS_PER_HOUR, SqliteReadingStore, day_table

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS efficiency (
        window_ms INTEGER NOT NULL, vehicle_id TEXT NOT NULL, stop_ms INTEGER NOT NULL, meter_id TEXT NOT NULL,
        ac_kwh REAL NOT NULL, dc_kwh REAL NOT NULL, ac_readings INTEGER NOT NULL, dc_readings INTEGER NOT NULL,
        avg_battery_temp REAL, efficiency REAL, computed_ms INTEGER NOT NULL,
        PRIMARY KEY (window_ms, stop_ms, vehicle_id, meter_id)
    ) WITHOUT ROWID""",
    # Covering: a vehicle's report reads only this index (288 entries a day), never the table.
    """CREATE INDEX IF NOT EXISTS efficiency_vehicle ON efficiency (window_ms, vehicle_id, stop_ms, meter_id,
        ac_kwh, dc_kwh, ac_readings, dc_readings, avg_battery_temp, efficiency)""",
    """CREATE TABLE IF NOT EXISTS efficiency_hourly (
        window_ms INTEGER NOT NULL, hour_stop_ms INTEGER NOT NULL, vehicle_id TEXT NOT NULL,
        ac_kwh REAL NOT NULL, dc_kwh REAL NOT NULL, ac_readings INTEGER NOT NULL, dc_readings INTEGER NOT NULL,
        windows INTEGER NOT NULL, battery_temp_sum REAL NOT NULL, battery_temp_readings INTEGER NOT NULL,
        PRIMARY KEY (window_ms, hour_stop_ms, vehicle_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS fleet_latest (
        window_ms INTEGER NOT NULL, vehicle_id TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL,
        ac_kwh REAL NOT NULL, dc_kwh REAL NOT NULL, ac_readings INTEGER NOT NULL, dc_readings INTEGER NOT NULL,
        windows INTEGER NOT NULL, battery_temp_sum REAL NOT NULL, battery_temp_readings INTEGER NOT NULL,
        PRIMARY KEY (window_ms, vehicle_id)
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS runner_state (key TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS alerts (
        vehicle_id TEXT NOT NULL, rule TEXT NOT NULL, started_ms INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'resolved', 'cancelled')),
        meter_id TEXT, value REAL, fired_ms INTEGER, resolved_ms INTEGER, updated_ms INTEGER NOT NULL,
        replayed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (vehicle_id, rule, started_ms)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state)",
    """CREATE TABLE IF NOT EXISTS notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT, url TEXT NOT NULL, payload TEXT NOT NULL,
        created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL,
        delivered_ms INTEGER, failed_ms INTEGER, last_error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS notifications_due ON notifications (delivered_ms, failed_ms, next_attempt_ms)",
]

_WINDOW_COLUMNS = ("vehicle_id, meter_id, stop_ms, ac_kwh, dc_kwh, ac_readings, dc_readings, avg_battery_temp, "
                   "efficiency")


class _FSum:
    """SQLite aggregate: correctly rounded float sum (SQLite < 3.43 sums naively)."""

    def __init__(self) -> None:
        self.parts: list[float] = []

    def step(self, value: float | None) -> None:
        if value is not None:
            self.parts.append(value)

    def finalize(self) -> float:
        return math.fsum(self.parts)


@dataclass(frozen=True)
class AlertRecord:
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


_ALERT_COLUMNS = ("vehicle_id, rule, started_ms, state, meter_id, value, fired_ms, resolved_ms, updated_ms, "
                  "replayed")


def _alert(row: Sequence[Any]) -> AlertRecord:
    record = AlertRecord(*row)
    return replace(record, replayed=bool(record.replayed))


@dataclass(frozen=True)
class Notification:
    id: int
    url: str
    payload: dict[str, Any]
    attempts: int


def _window(row: Sequence[Any]) -> EfficiencyWindow:
    vehicle_id, meter_id, *rest = row
    return EfficiencyWindow(vehicle_id, meter_id or None, *rest)


# (meter_id, stop_ms, ac_kwh, dc_kwh, ac_readings, dc_readings, avg_battery_temp) of one window
SumRow = tuple[str | None, int, float, float, int, int, float | None]
_SUM_COLUMNS = "meter_id, stop_ms, ac_kwh, dc_kwh, ac_readings, dc_readings, avg_battery_temp"


def window_sums(rows: Sequence[SumRow]) -> dict[str, Any]:
    """Exact (fsum) sums over one vehicle's windows: ``ac_kwh``, ``dc_kwh``, the same for windows where
    both sides reported (``matched_*``), reading counts, ``windows`` (distinct stops),
    ``battery_temp_sum``/``battery_temp_readings`` and ``meters``. Both stores report with it; it
    takes plain rows because a report is the hot path (no window objects built for 288 rows a day)."""
    matched = [r for r in rows if r[4] and r[5]]
    temps = [(r[6] * r[5], r[5]) for r in rows if r[6] is not None]
    return {
        "ac_kwh": math.fsum(r[2] for r in rows), "dc_kwh": math.fsum(r[3] for r in rows),
        "matched_ac_kwh": math.fsum(r[2] for r in matched), "matched_dc_kwh": math.fsum(r[3] for r in matched),
        "ac_readings": sum(r[4] for r in rows), "dc_readings": sum(r[5] for r in rows),
        "windows": len({r[1] for r in rows}), "meters": sorted({r[0] for r in rows if r[0]}),
        "battery_temp_sum": math.fsum(t for t, _ in temps), "battery_temp_readings": sum(n for _, n in temps),
    }


def sum_row(window: EfficiencyWindow) -> SumRow:
    return (window.meter_id, window.stop_ms, window.ac_kwh, window.dc_kwh, window.ac_readings,
            window.dc_readings, window.avg_battery_temp)


class SqliteEfficiencyStore:
    """The efficiency side of the embedded store (window rows, rollups, runner state, alerts)."""

    def __init__(self, readings: SqliteReadingStore) -> None:
        self.readings = readings
        readings.ensure_tables(_SCHEMA, "efficiency")
        if not self._alerts_have_replayed():
            # A file from before alert replay: the column every record now carries.
            try:
                self._write([("ALTER TABLE alerts ADD COLUMN replayed INTEGER NOT NULL DEFAULT 0", ())])
            except StorageUnavailable:
                if not self._alerts_have_replayed():  # not another process adding it at the same moment
                    raise

    def _alerts_have_replayed(self) -> bool:
        return "replayed" in {row[1] for row in self._read("PRAGMA table_info(alerts)")}

    def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        return self.readings.read(sql, params)

    def _write(self, statements: Iterable[tuple[str, Sequence[Any] | Mapping[str, Any]]]) -> None:
        conn = self.readings.reader()
        try:
            with self.readings.write_transaction(conn):
                for sql, params in statements:
                    conn.execute(sql, params)
        except sqlite3.Error as err:
            raise StorageUnavailable(f"writing to {self.readings.path.name} failed: {err}") from err

    # -- computing windows ---------------------------------------------------------------------

    def side_totals(
        self, window_ms: int, start_ms: int, end_ms: int, vehicle_ids: Sequence[str] | None = None
    ) -> tuple[dict[WindowKey, SideTotals], dict[WindowKey, SideTotals]]:
        """Per (vehicle, meter, window stop) sums and counts of readings timed in [start_ms, end_ms),
        of every vehicle or only of ``vehicle_ids``."""
        if vehicle_ids is not None:
            ac: dict[WindowKey, SideTotals] = {}
            dc: dict[WindowKey, SideTotals] = {}
            for first in range(0, len(vehicle_ids), 500):  # SQLite caps the number of bound parameters
                more_ac, more_dc = self._side_totals(window_ms, start_ms, end_ms, vehicle_ids[first:first + 500])
                ac.update(more_ac)
                dc.update(more_dc)
            return ac, dc
        return self._side_totals(window_ms, start_ms, end_ms, None)

    def _side_totals(
        self, window_ms: int, start_ms: int, end_ms: int, vehicle_ids: Sequence[str] | None
    ) -> tuple[dict[WindowKey, SideTotals], dict[WindowKey, SideTotals]]:
        conn = self.readings.reader()
        # typeshed types an aggregate's finalize() as returning int; sqlite3 takes any SQL value (a float here)
        conn.create_aggregate("fsum", 1, _FSum)  # type: ignore[arg-type]
        existing = {
            name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND (name GLOB 'meter_[0-9]*' "
                "OR name GLOB 'vehicle_[0-9]*')")
        }
        ac: dict[WindowKey, SideTotals] = {}
        dc: dict[WindowKey, SideTotals] = {}
        bucket = "(time_ms / :w) * :w + :w"
        params: dict[str, Any] = {"w": window_ms, "start": start_ms, "end": end_ms}
        only = ""
        if vehicle_ids is not None:
            params.update({f"v{i}": vehicle_id for i, vehicle_id in enumerate(vehicle_ids)})
            only = f" AND vehicle_id IN ({', '.join(f':v{i}' for i in range(len(vehicle_ids)))})"
        try:
            for day in range(start_ms // MS_PER_DAY, (end_ms - 1) // MS_PER_DAY + 1):
                meters, vehicles = day_table("meter", day), day_table("vehicle", day)
                if meters in existing:
                    for vehicle_id, meter_id, stop, kwh, count in conn.execute(
                        f"SELECT vehicle_id, meter_id, {bucket} AS stop, fsum(kwh_consumed_ac), count(*) "
                        f"FROM {meters} WHERE time_ms >= :start AND time_ms < :end AND vehicle_id IS NOT NULL{only} "
                        "GROUP BY vehicle_id, meter_id, stop", params,
                    ):
                        ac[(vehicle_id, meter_id, stop)] = SideTotals(kwh, count)
                if vehicles in existing:
                    for vehicle_id, meter_id, stop, kwh, count, temps in conn.execute(
                        f"SELECT vehicle_id, meter_id, {bucket} AS stop, fsum(kwh_delivered_dc), count(*), "
                        f"fsum(battery_temp) FROM {vehicles} WHERE time_ms >= :start AND time_ms < :end{only} "
                        "GROUP BY vehicle_id, meter_id, stop", params,
                    ):
                        dc[(vehicle_id, meter_id, stop)] = SideTotals(kwh, count, temps)
        except sqlite3.Error as err:
            raise StorageUnavailable(f"reading {self.readings.path.name} failed: {err}") from err
        return ac, dc

    def replace_windows(
        self, window_ms: int, start_ms: int, end_ms: int, windows: Sequence[EfficiencyWindow], computed_ms: int
    ) -> None:
        """Make the stored windows with stop in (start_ms, end_ms] exactly ``windows``, and refresh the
        hourly rollups of the hours they fall in. Idempotent: the same input gives the same rows."""
        first_hour = (start_ms // MS_PER_HOUR) * MS_PER_HOUR
        last_hour_stop = -(-end_ms // MS_PER_HOUR) * MS_PER_HOUR
        rows = [(window_ms, w.vehicle_id, w.stop_ms, w.meter_id or "", w.ac_kwh, w.dc_kwh, w.ac_readings,
                 w.dc_readings, w.avg_battery_temp, w.efficiency, computed_ms) for w in windows]
        conn = self.readings.reader()
        # typeshed types an aggregate's finalize() as returning int; sqlite3 takes any SQL value (a float here)
        conn.create_aggregate("fsum", 1, _FSum)  # type: ignore[arg-type]
        if not rows and not self._read(
            "SELECT 1 FROM efficiency WHERE window_ms = ? AND stop_ms > ? AND stop_ms <= ? LIMIT 1",
            (window_ms, start_ms, end_ms),
        ):
            return  # nothing there, nothing to write: spares a commit per empty hour on catch-up
        try:
            with self.readings.write_transaction(conn):
                conn.execute("DELETE FROM efficiency WHERE window_ms = ? AND stop_ms > ? AND stop_ms <= ?",
                             (window_ms, start_ms, end_ms))
                conn.executemany("INSERT INTO efficiency VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                conn.execute("DELETE FROM efficiency_hourly WHERE window_ms = ? AND hour_stop_ms > ? "
                             "AND hour_stop_ms <= ?", (window_ms, first_hour, last_hour_stop))
                conn.execute(
                    f"""INSERT INTO efficiency_hourly
                    SELECT window_ms, ((stop_ms - 1) / {MS_PER_HOUR} + 1) * {MS_PER_HOUR} AS hour_stop, vehicle_id,
                        total(ac_kwh), total(dc_kwh), sum(ac_readings), sum(dc_readings), count(*),
                        total(avg_battery_temp * dc_readings), sum(CASE WHEN avg_battery_temp IS NULL THEN 0
                                                                   ELSE dc_readings END)
                    FROM efficiency WHERE window_ms = ? AND stop_ms > ? AND stop_ms <= ?
                    GROUP BY hour_stop, vehicle_id""",
                    (window_ms, first_hour, last_hour_stop),
                )
        except sqlite3.Error as err:
            raise StorageUnavailable(f"writing windows failed: {err}") from err

    def replace_vehicle_windows(
        self, window_ms: int, stop_ms: int, vehicle_ids: Sequence[str], windows: Sequence[EfficiencyWindow],
        computed_ms: int,
    ) -> None:
        """Make the stored windows of ``vehicle_ids`` with stop ``stop_ms`` exactly ``windows`` (of
        those vehicles), and refresh those vehicles' rollup of that hour."""
        hour_stop = -(-stop_ms // MS_PER_HOUR) * MS_PER_HOUR
        rows = [(window_ms, w.vehicle_id, w.stop_ms, w.meter_id or "", w.ac_kwh, w.dc_kwh, w.ac_readings,
                 w.dc_readings, w.avg_battery_temp, w.efficiency, computed_ms) for w in windows]
        conn = self.readings.reader()
        try:
            with self.readings.write_transaction(conn):
                for first in range(0, len(vehicle_ids), 500):
                    chunk = list(vehicle_ids[first:first + 500])
                    marks = ", ".join("?" * len(chunk))
                    conn.execute("DELETE FROM efficiency WHERE window_ms = ? AND stop_ms = ? "
                                 f"AND vehicle_id IN ({marks})", (window_ms, stop_ms, *chunk))
                    if first == 0:
                        conn.executemany("INSERT INTO efficiency VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    conn.execute(f"DELETE FROM efficiency_hourly WHERE window_ms = ? AND hour_stop_ms = ? "
                                 f"AND vehicle_id IN ({marks})", (window_ms, hour_stop, *chunk))
                    conn.execute(
                        f"""INSERT INTO efficiency_hourly
                        SELECT window_ms, ? AS hour_stop, vehicle_id,
                            total(ac_kwh), total(dc_kwh), sum(ac_readings), sum(dc_readings), count(*),
                            total(avg_battery_temp * dc_readings), sum(CASE WHEN avg_battery_temp IS NULL THEN 0
                                                                       ELSE dc_readings END)
                        FROM efficiency INDEXED BY efficiency_vehicle
                        WHERE window_ms = ? AND vehicle_id IN ({marks}) AND stop_ms > ? AND stop_ms <= ?
                        GROUP BY vehicle_id""",
                        (hour_stop, window_ms, *chunk, hour_stop - MS_PER_HOUR, hour_stop),
                    )
        except sqlite3.Error as err:
            raise StorageUnavailable(f"writing windows failed: {err}") from err

    def mark_computing(self, window_ms: int, through_ms: int) -> None:
        """Before a run reads readings: from now on, a reading for a window with stop up to
        ``through_ms`` marks that vehicle's window stale (``stale_windows``)."""
        self._write([
            ("INSERT INTO meta (key, value) VALUES ('window_ms', ?) "
             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (window_ms,)),
            ("INSERT INTO meta (key, value) VALUES ('windows_computed_through_ms', ?) "
             "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)", (through_ms,)),
        ])

    def stale_windows(self, window_ms: int) -> list[tuple[int, str, int]]:
        """Windows late readings marked, as (stop ms, vehicle id, mark), in stop order."""
        return self._read("SELECT stop_ms, vehicle_id, marked FROM stale_windows WHERE window_ms = ? "
                          "ORDER BY stop_ms, vehicle_id", (window_ms,))

    def clear_stale_windows(self, window_ms: int, marks: Sequence[tuple[int, str, int]]) -> None:
        """Forget marks that were handled; a mark renewed since (a later late reading) stays."""
        self._write(("DELETE FROM stale_windows WHERE window_ms = ? AND stop_ms = ? AND vehicle_id = ? "
                     "AND marked <= ?", (window_ms, *mark)) for mark in marks)

    # -- reading windows -----------------------------------------------------------------------

    def windows(self, window_ms: int, start_ms: int, end_ms: int, vehicle_id: str | None = None
                ) -> list[EfficiencyWindow]:
        """Windows with stop in (start_ms, end_ms], ordered by stop (then vehicle, meter)."""
        if vehicle_id is None:
            rows = self._read(
                f"SELECT {_WINDOW_COLUMNS} FROM efficiency WHERE window_ms = ? AND stop_ms > ? AND stop_ms <= ? "
                "ORDER BY stop_ms, vehicle_id, meter_id", (window_ms, start_ms, end_ms))
        else:
            rows = self._read(
                f"SELECT {_WINDOW_COLUMNS} FROM efficiency INDEXED BY efficiency_vehicle "
                "WHERE window_ms = ? AND vehicle_id = ? AND stop_ms > ? AND stop_ms <= ? ORDER BY stop_ms, meter_id",
                (window_ms, vehicle_id, start_ms, end_ms))
        return [_window(row) for row in rows]

    def windows_of(self, window_ms: int, start_ms: int, end_ms: int, vehicle_ids: Sequence[str]
                   ) -> list[EfficiencyWindow]:
        """Windows of the given vehicles with stop in (start_ms, end_ms], ordered by vehicle then stop."""
        result: list[EfficiencyWindow] = []
        for first in range(0, len(vehicle_ids), 500):  # SQLite caps the number of bound parameters
            chunk = vehicle_ids[first:first + 500]
            result.extend(_window(row) for row in self._read(
                f"SELECT {_WINDOW_COLUMNS} FROM efficiency INDEXED BY efficiency_vehicle WHERE window_ms = ? "
                f"AND vehicle_id IN ({', '.join('?' * len(chunk))}) AND stop_ms > ? AND stop_ms <= ? "
                "ORDER BY vehicle_id, stop_ms, meter_id", (window_ms, *chunk, start_ms, end_ms)))
        return result

    def vehicle_window_sums(self, window_ms: int, vehicle_id: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        """:func:`window_sums` of one vehicle's windows with stop in (start_ms, end_ms]."""
        return window_sums(self._read(
            f"SELECT {_SUM_COLUMNS} FROM efficiency INDEXED BY efficiency_vehicle WHERE window_ms = ? "
            "AND vehicle_id = ? AND stop_ms > ? AND stop_ms <= ?", (window_ms, vehicle_id, start_ms, end_ms)))

    def vehicle_totals(self, window_ms: int, start_ms: int, end_ms: int) -> dict[str, SpanTotals]:
        """Per-vehicle sums over windows with stop in (start_ms, end_ms]: whole hours from the rollup,
        the partial hours at either end from the windows themselves. The span the task runner last
        materialised (``refresh_fleet_latest``) is read ready-made."""
        cached = self._read("SELECT vehicle_id, ac_kwh, dc_kwh, ac_readings, dc_readings, windows, battery_temp_sum, "
                            "battery_temp_readings FROM fleet_latest "
                            "WHERE window_ms = ? AND start_ms = ? AND end_ms = ?",
                            (window_ms, start_ms, end_ms))
        if cached:
            rows = cached
        else:
            sql, params = _vehicle_totals_query(window_ms, start_ms, end_ms)
            rows = self._read(sql, params)
        return {
            vehicle_id: SpanTotals(ac, dc, int(nac), int(ndc), int(nw), temps, int(ntemps))
            for vehicle_id, ac, dc, nac, ndc, nw, temps, ntemps in rows
        }

    def fleet_hourly_energy(self, window_ms: int, start_ms: int, end_ms: int) -> list[tuple[int, float, float]]:
        """The whole fleet's (hour stop, AC kWh, DC kWh) per hour over windows with stop in
        (start_ms, end_ms], oldest first: whole hours from the rollup, the partial hours at either end
        from the windows (labelled by the hour's stop, or ``end_ms`` for the last partial hour)."""
        hour_lo = -(-start_ms // MS_PER_HOUR) * MS_PER_HOUR
        hour_hi = (end_ms // MS_PER_HOUR) * MS_PER_HOUR
        if hour_lo >= hour_hi:
            hour_lo = hour_hi = end_ms
        rows = self._read(
            """SELECT hour_stop, total(ac_kwh), total(dc_kwh) FROM (
                SELECT hour_stop_ms AS hour_stop, ac_kwh, dc_kwh FROM efficiency_hourly
                WHERE window_ms = :w AND hour_stop_ms > :hlo AND hour_stop_ms <= :hhi
                UNION ALL SELECT :hlo, ac_kwh, dc_kwh FROM efficiency
                WHERE window_ms = :w AND stop_ms > :lo AND stop_ms <= :hlo
                UNION ALL SELECT :hi, ac_kwh, dc_kwh FROM efficiency
                WHERE window_ms = :w AND stop_ms > :hhi AND stop_ms <= :hi
            ) GROUP BY hour_stop ORDER BY hour_stop""",
            {"w": window_ms, "lo": start_ms, "hi": end_ms, "hlo": hour_lo, "hhi": hour_hi})
        return [(int(stop), ac, dc) for stop, ac, dc in rows]

    def refresh_fleet_latest(self, window_ms: int, start_ms: int, end_ms: int) -> None:
        """Materialise per-vehicle totals of (start_ms, end_ms] (the fleet summary's default span)."""
        sql, params = _vehicle_totals_query(window_ms, start_ms, end_ms)
        self._write([
            ("DELETE FROM fleet_latest WHERE window_ms = ?", (window_ms,)),
            (f"INSERT INTO fleet_latest SELECT :w, vehicle_id, :lo, :hi, ac_kwh, dc_kwh, ac_readings, dc_readings, "
             f"windows, battery_temp_sum, battery_temp_readings FROM ({sql})", params),
        ])

    # -- runner state --------------------------------------------------------------------------

    def runner_state(self) -> dict[str, float]:
        return dict(self._read("SELECT key, value FROM runner_state"))

    def set_runner_state(self, values: dict[str, float]) -> None:
        self._write(("INSERT INTO runner_state VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (key, float(value))) for key, value in values.items())

    # -- alerts and notifications --------------------------------------------------------------

    def open_alerts(self) -> list[AlertRecord]:
        """Alerts in state pending or firing."""
        return [_alert(row) for row in self._read(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state IN ('pending', 'firing') ORDER BY vehicle_id, rule")]

    def alert(self, vehicle_id: str, rule: str, started_ms: int) -> AlertRecord | None:
        """One alert as it is stored now, or None."""
        rows = self._read(
            "SELECT vehicle_id, rule, started_ms, state, meter_id, value, fired_ms, resolved_ms, updated_ms "
            "FROM alerts WHERE vehicle_id = ? AND rule = ? AND started_ms = ?", (vehicle_id, rule, started_ms))
        return AlertRecord(*rows[0]) if rows else None

    def firing_alerts(self) -> list[AlertRecord]:
        """Alerts in state firing, by vehicle and rule."""
        return [AlertRecord(*row) for row in self._read(
            "SELECT vehicle_id, rule, started_ms, state, meter_id, value, fired_ms, resolved_ms, updated_ms "
            "FROM alerts WHERE state = 'firing' ORDER BY vehicle_id, rule")]

    def recent_alerts(self, since_ms: int, limit: int = 500) -> list[AlertRecord]:
        """Firing, and fired-then-resolved since ``since_ms``; newest first."""
        return [_alert(row) for row in self._read(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state = 'firing' OR (state = 'resolved' AND resolved_ms >= ?) "
            "ORDER BY coalesce(fired_ms, started_ms) DESC LIMIT ?", (since_ms, limit))]

    def save_alerts(self, records: Sequence[AlertRecord], notifications: Sequence[tuple[str, dict[str, Any]]],
                    now_ms: int) -> None:
        """Upsert alert records and enqueue their notifications in one transaction."""
        statements = _alert_upserts(records) + _notification_inserts(notifications, now_ms)
        if statements:
            self._write(statements)

    def replace_alerts(self, since_ms: int, until_ms: int, records: Sequence[AlertRecord],
                       notifications: Sequence[tuple[str, dict[str, Any]]], now_ms: int) -> int:
        """Make the alerts that started in (since_ms, until_ms] exactly ``records`` (a replay's
        result; records that started earlier are upserted too), and enqueue ``notifications``, in
        one transaction. Returns how many stored alerts it removed."""
        removed: int = self._read("SELECT count(*) FROM alerts WHERE started_ms > ? AND started_ms <= ?",
                                  (since_ms, until_ms))[0][0]
        self._write([("DELETE FROM alerts WHERE started_ms > ? AND started_ms <= ?", (since_ms, until_ms)),
                     *_alert_upserts(records), *_notification_inserts(notifications, now_ms)])
        return removed

    def due_notifications(self, now_ms: int, limit: int = 50) -> list[Notification]:
        """Undelivered notifications whose next attempt is due, oldest first."""
        return [Notification(id_, url, json.loads(payload), attempts) for id_, url, payload, attempts in self._read(
            "SELECT id, url, payload, attempts FROM notifications WHERE delivered_ms IS NULL AND failed_ms IS NULL "
            "AND next_attempt_ms <= ? ORDER BY id LIMIT ?", (now_ms, limit))]

    def record_delivery(self, notification_id: int, now_ms: int, *, error: str | None = None,
                        retry_at_ms: int | None = None) -> None:
        """Delivered (no error), to retry at ``retry_at_ms``, or given up (error and no retry)."""
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
        self._write([(sql, params)])

    def notification_counts(self) -> dict[str, int]:
        """pending / delivered / failed counts, for metrics."""
        (pending, delivered, failed), = self._read(
            "SELECT total(delivered_ms IS NULL AND failed_ms IS NULL), total(delivered_ms IS NOT NULL), "
            "total(failed_ms IS NOT NULL) FROM notifications")
        return {"pending": int(pending), "delivered": int(delivered), "failed": int(failed)}


def _alert_upserts(records: Sequence[AlertRecord]) -> list[tuple[str, Sequence[Any]]]:
    return [
        ("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (vehicle_id, rule, started_ms) "
         "DO UPDATE SET state = excluded.state, meter_id = excluded.meter_id, value = excluded.value, "
         "fired_ms = excluded.fired_ms, resolved_ms = excluded.resolved_ms, updated_ms = excluded.updated_ms, "
         "replayed = excluded.replayed",
         (r.vehicle_id, r.rule, r.started_ms, r.state, r.meter_id, r.value, r.fired_ms, r.resolved_ms,
          r.updated_ms, int(r.replayed)))
        for r in records
    ]


def _notification_inserts(notifications: Sequence[tuple[str, dict[str, Any]]], now_ms: int
                          ) -> list[tuple[str, Sequence[Any]]]:
    return [("INSERT INTO notifications (url, payload, created_ms, next_attempt_ms) VALUES (?, ?, ?, ?)",
             (url, json.dumps(payload), now_ms, now_ms)) for url, payload in notifications]


def _vehicle_totals_query(window_ms: int, start_ms: int, end_ms: int) -> tuple[str, dict[str, int]]:
    hour_lo = -(-start_ms // MS_PER_HOUR) * MS_PER_HOUR  # first whole hour starts here
    hour_hi = (end_ms // MS_PER_HOUR) * MS_PER_HOUR  # last whole hour stops here
    if hour_lo >= hour_hi:  # no whole hour inside: every window comes from the first part
        hour_lo = hour_hi = end_ms
    window_cols = ("vehicle_id, ac_kwh, dc_kwh, ac_readings, dc_readings, 1, "
                   "coalesce(avg_battery_temp * dc_readings, 0), "
                   "CASE WHEN avg_battery_temp IS NULL THEN 0 ELSE dc_readings END")
    sql = f"""SELECT vehicle_id, total(ac_kwh) AS ac_kwh, total(dc_kwh) AS dc_kwh,
                total(ac_readings) AS ac_readings, total(dc_readings) AS dc_readings, total(windows) AS windows,
                total(battery_temp_sum) AS battery_temp_sum, total(battery_temp_readings) AS battery_temp_readings
            FROM (
            SELECT vehicle_id, ac_kwh, dc_kwh, ac_readings, dc_readings, windows, battery_temp_sum,
                   battery_temp_readings
            FROM efficiency_hourly WHERE window_ms = :w AND hour_stop_ms > :hlo AND hour_stop_ms <= :hhi
            UNION ALL SELECT {window_cols} FROM efficiency
            WHERE window_ms = :w AND stop_ms > :lo AND stop_ms <= :hlo
            UNION ALL SELECT {window_cols} FROM efficiency
            WHERE window_ms = :w AND stop_ms > :hhi AND stop_ms <= :hi
        ) GROUP BY vehicle_id"""
    return sql, {"w": window_ms, "lo": start_ms, "hi": end_ms, "hlo": hour_lo, "hhi": hour_hi}
