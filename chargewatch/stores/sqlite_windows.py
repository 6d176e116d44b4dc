"""Efficiency windows and their hourly rollups in the shared SQLite database: the embedded
engine's WindowWriter and WindowSource (``chargewatch.efficiency_ports``).

Tables:

- ``efficiency``: one row per (window length, window stop, vehicle, meter); ``meter_id`` is ``''``
  for an unpaired vehicle (SQLite primary keys cannot hold NULL the way we need). Keyed time first,
  like the history: the runner rewrites and rolls up a time range of the whole fleet at once; a
  vehicle's own report goes through ``efficiency_vehicle``.
- ``efficiency_hourly``: per-vehicle sums of the windows of each hour, so a fleet summary over a
  day reads 24 rows per vehicle instead of 288. Summed by SQLite (plain float addition, a few ulps
  from exact): the fleet summary reads them; a vehicle's own report sums its windows exactly.
- ``fleet_latest``: the fleet summary's default span, materialised by each run.

The sums of the readings (``side_totals``) read the reading store's day tables, and
``mark_computing`` / ``stale_windows`` its ``meta`` and ``stale_windows`` tables, on the same database.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from typing import Any

from chargewatch.efficiency import EfficiencyWindow, SideTotals, SpanTotals, WindowKey, window_sums
from chargewatch.stores import StorageUnavailable
from chargewatch.stores.sqlite import MS_PER_DAY, MS_PER_HOUR, day_table
from chargewatch.stores.sqlite_database import SqliteDatabase

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
]

# A window's row as EfficiencyWindow's fields. meter_id is stored as "" where no meter fed the
# window (a key column cannot be NULL) and read back as None; the expression is left unnamed, so
# that ORDER BY meter_id still names the column (and follows the index's order).
_WINDOW_COLUMNS = ("vehicle_id, nullif(meter_id, ''), stop_ms, ac_kwh, dc_kwh, ac_readings, dc_readings, "
                   "avg_battery_temp, efficiency")


class _FSum:
    """SQLite aggregate: correctly rounded float sum (SQLite < 3.43 sums naively)."""

    def __init__(self) -> None:
        self.parts: list[float] = []

    def step(self, value: float | None) -> None:
        if value is not None:
            self.parts.append(value)

    def finalize(self) -> float:
        return math.fsum(self.parts)


_SUM_COLUMNS = "meter_id, stop_ms, ac_kwh, dc_kwh, ac_readings, dc_readings, avg_battery_temp"


class SqliteWindowStore:
    """Windows, rollups and the late-reading marks of the embedded store (WindowSource, WindowWriter)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database
        database.ensure_tables(_SCHEMA, "efficiency")

    def ping(self) -> None:
        self.database.read("SELECT 1")

    def close(self) -> None:
        self.database.close()

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
        conn = self.database.reader()
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
            raise StorageUnavailable(f"reading {self.database.path.name} failed: {err}") from err
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
        conn = self.database.reader()
        # typeshed types an aggregate's finalize() as returning int; sqlite3 takes any SQL value (a float here)
        conn.create_aggregate("fsum", 1, _FSum)  # type: ignore[arg-type]
        if not rows and not self.database.read(
            "SELECT 1 FROM efficiency WHERE window_ms = ? AND stop_ms > ? AND stop_ms <= ? LIMIT 1",
            (window_ms, start_ms, end_ms),
        ):
            return  # nothing there, nothing to write: spares a commit per empty hour on catch-up
        try:
            with self.database.write_transaction(conn):
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
        conn = self.database.reader()
        try:
            with self.database.write_transaction(conn):
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
        self.database.write([
            ("INSERT INTO meta (key, value) VALUES ('window_ms', ?) "
             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (window_ms,)),
            ("INSERT INTO meta (key, value) VALUES ('windows_computed_through_ms', ?) "
             "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)", (through_ms,)),
        ])

    def stale_windows(self, window_ms: int) -> list[tuple[int, str, int]]:
        """Windows late readings marked, as (stop ms, vehicle id, mark), in stop order."""
        return self.database.read("SELECT stop_ms, vehicle_id, marked FROM stale_windows WHERE window_ms = ? "
                          "ORDER BY stop_ms, vehicle_id", (window_ms,))

    def clear_stale_windows(self, window_ms: int, marks: Sequence[tuple[int, str, int]]) -> None:
        """Forget marks that were handled; a mark renewed since (a later late reading) stays."""
        self.database.write(("DELETE FROM stale_windows WHERE window_ms = ? AND stop_ms = ? AND vehicle_id = ? "
                     "AND marked <= ?", (window_ms, *mark)) for mark in marks)

    # -- reading windows (WindowSource) -----------------------------------------------------------------------

    def windows(self, window_ms: int, start_ms: int, end_ms: int, vehicle_id: str | None = None
                ) -> list[EfficiencyWindow]:
        """Windows with stop in (start_ms, end_ms], ordered by stop (then vehicle, meter)."""
        if vehicle_id is None:
            rows = self.database.read(
                f"SELECT {_WINDOW_COLUMNS} FROM efficiency WHERE window_ms = ? AND stop_ms > ? AND stop_ms <= ? "
                "ORDER BY stop_ms, vehicle_id, meter_id", (window_ms, start_ms, end_ms))
        else:
            rows = self.database.read(
                f"SELECT {_WINDOW_COLUMNS} FROM efficiency INDEXED BY efficiency_vehicle "
                "WHERE window_ms = ? AND vehicle_id = ? AND stop_ms > ? AND stop_ms <= ? ORDER BY stop_ms, meter_id",
                (window_ms, vehicle_id, start_ms, end_ms))
        return list(map(EfficiencyWindow._make, rows))

    def windows_of(self, window_ms: int, start_ms: int, end_ms: int, vehicle_ids: Sequence[str]
                   ) -> list[EfficiencyWindow]:
        """Windows of the given vehicles with stop in (start_ms, end_ms], ordered by vehicle then stop."""
        result: list[EfficiencyWindow] = []
        for first in range(0, len(vehicle_ids), 500):  # SQLite caps the number of bound parameters
            chunk = vehicle_ids[first:first + 500]
            result.extend(map(EfficiencyWindow._make, self.database.read(
                f"SELECT {_WINDOW_COLUMNS} FROM efficiency INDEXED BY efficiency_vehicle WHERE window_ms = ? "
                f"AND vehicle_id IN ({', '.join('?' * len(chunk))}) AND stop_ms > ? AND stop_ms <= ? "
                "ORDER BY vehicle_id, stop_ms, meter_id", (window_ms, *chunk, start_ms, end_ms))))
        return result

    def charging_windows(self, window_ms: int, start_ms: int, end_ms: int, active_since_ms: int, active_kwh: float
                         ) -> list[EfficiencyWindow]:
        """Windows with stop in (start_ms, end_ms] of the vehicles charging after ``active_since_ms``,
        chosen inside SQLite; a margin of a nanowatt-hour keeps in a vehicle whose meters' sum SQLite
        rounds a last bit below the threshold Python's sum reaches."""
        rows = self.database.read(
            f"SELECT {_WINDOW_COLUMNS} FROM efficiency WHERE window_ms = :w AND stop_ms > :lo AND stop_ms <= :hi "
            "AND vehicle_id IN (SELECT vehicle_id FROM efficiency WHERE window_ms = :w AND stop_ms > :since "
            "AND stop_ms <= :hi GROUP BY vehicle_id, stop_ms HAVING total(ac_kwh) >= :kwh OR total(dc_kwh) >= :kwh) "
            "ORDER BY stop_ms, vehicle_id, meter_id",
            {"w": window_ms, "lo": start_ms, "hi": end_ms, "since": active_since_ms, "kwh": active_kwh - 1e-9})
        return list(map(EfficiencyWindow._make, rows))

    def vehicle_window_sums(self, window_ms: int, vehicle_id: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        """:func:`window_sums` of one vehicle's windows with stop in (start_ms, end_ms]."""
        return window_sums(self.database.read(
            f"SELECT {_SUM_COLUMNS} FROM efficiency INDEXED BY efficiency_vehicle WHERE window_ms = ? "
            "AND vehicle_id = ? AND stop_ms > ? AND stop_ms <= ?", (window_ms, vehicle_id, start_ms, end_ms)))

    def vehicle_totals(self, window_ms: int, start_ms: int, end_ms: int) -> dict[str, SpanTotals]:
        """Per-vehicle sums over windows with stop in (start_ms, end_ms]: whole hours from the rollup,
        the partial hours at either end from the windows themselves. The span the task runner last
        materialised (``refresh_fleet_latest``) is read ready-made."""
        cached = self.database.read(
            "SELECT vehicle_id, ac_kwh, dc_kwh, ac_readings, dc_readings, windows, battery_temp_sum, "
            "battery_temp_readings FROM fleet_latest WHERE window_ms = ? AND start_ms = ? AND end_ms = ?",
            (window_ms, start_ms, end_ms))
        if cached:
            rows = cached
        else:
            sql, params = _vehicle_totals_query(window_ms, start_ms, end_ms)
            rows = self.database.read(sql, params)
        return {row[0]: SpanTotals._make(row[1:]) for row in rows}  # counts are SQLite integers

    def fleet_hourly_energy(self, window_ms: int, start_ms: int, end_ms: int) -> list[tuple[int, float, float]]:
        """The whole fleet's (hour stop, AC kWh, DC kWh) per hour over windows with stop in
        (start_ms, end_ms], oldest first: whole hours from the rollup, the partial hours at either end
        from the windows (labelled by the hour's stop, or ``end_ms`` for the last partial hour)."""
        hour_lo = -(-start_ms // MS_PER_HOUR) * MS_PER_HOUR
        hour_hi = (end_ms // MS_PER_HOUR) * MS_PER_HOUR
        if hour_lo >= hour_hi:
            hour_lo = hour_hi = end_ms
        rows = self.database.read(
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
        self.database.write([
            ("DELETE FROM fleet_latest WHERE window_ms = ?", (window_ms,)),
            (f"INSERT INTO fleet_latest SELECT :w, vehicle_id, :lo, :hi, ac_kwh, dc_kwh, ac_readings, dc_readings, "
             f"windows, battery_temp_sum, battery_temp_readings FROM ({sql})", params),
        ])


def _vehicle_totals_query(window_ms: int, start_ms: int, end_ms: int) -> tuple[str, dict[str, int]]:
    hour_lo = -(-start_ms // MS_PER_HOUR) * MS_PER_HOUR  # first whole hour starts here
    hour_hi = (end_ms // MS_PER_HOUR) * MS_PER_HOUR  # last whole hour stops here
    if hour_lo >= hour_hi:  # no whole hour inside: every window comes from the first part
        hour_lo = hour_hi = end_ms
    window_cols = ("vehicle_id, ac_kwh, dc_kwh, ac_readings, dc_readings, 1, "
                   "coalesce(avg_battery_temp * dc_readings, 0), "
                   "CASE WHEN avg_battery_temp IS NULL THEN 0 ELSE dc_readings END")
    sql = f"""SELECT vehicle_id, total(ac_kwh) AS ac_kwh, total(dc_kwh) AS dc_kwh,
                sum(ac_readings) AS ac_readings, sum(dc_readings) AS dc_readings, sum(windows) AS windows,
                total(battery_temp_sum) AS battery_temp_sum, sum(battery_temp_readings) AS battery_temp_readings
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
