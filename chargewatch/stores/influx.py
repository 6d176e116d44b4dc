"""Influx mode: readings go to InfluxDB through a durable local outbox (``CHARGEWATCH_STORE=influx``).

The local part is the embedded SQLite store, unchanged: day tables, the last-value cache, pairings.
Each reading the day tables did not hold yet is also encoded as a line-protocol row and appended to
the outbox, in the same transaction and group commit, so a 2xx still means durable; the forwarder
(``chargewatch forward``) ships the outbox to InfluxDB.

Why keep the day tables in influx mode (the outbox alone would be enough to ship):

- They are the dedupe index. A device retry is detected here, before anything is queued, so a
  (device, timestamp) reaches InfluxDB once, with the pairing that held when it first arrived.
  InfluxDB's own overwrite would not be enough: the pairing tags are part of the series key, so a
  retry after a re-pairing would become a second point (energy counted twice), and a retry with
  other values would overwrite the first copy where the embedded store keeps it.
- The ReadingStore contract holds unchanged (stored/duplicate counts, ``history``, retention), and
  the contract suite runs against this adapter too.

The cost is the embedded store's write per reading, which the benchmarks already measure.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargewatch.lineprotocol import encode_point
from chargewatch.readings import MeterReading
from chargewatch.stores import PairedReading
from chargewatch.stores.outbox import Outbox
from chargewatch.stores.sqlite import _INSERT, SqliteReadingStore, _history_row, wire_row

if TYPE_CHECKING:
    from chargewatch.settings import Settings


def reading_line(paired: PairedReading) -> str:
    """The reading as InfluxDB stores it (docs/readings.md "Storage schema"), millisecond timestamp.

    Both pairing tags are written when known (a missing partner's tag is omitted); fields are
    always floats, since a field's type is fixed by its first write and an int would break later
    writes with 422.
    """
    r = paired.reading
    tags = {"meter_id": paired.meter_id, "vehicle_id": paired.vehicle_id}
    if isinstance(r, MeterReading):
        fields: dict[str, Any] = {"kwh_consumed_ac": float(r.kwh_consumed_ac), "voltage": float(r.voltage)}
    else:
        fields = {"soc": float(r.soc), "kwh_delivered_dc": float(r.kwh_delivered_dc),
                  "battery_temp": float(r.battery_temp)}
    return encode_point(r.kind, tags, fields, r.time_ms)


class InfluxReadingStore(SqliteReadingStore):
    """The embedded store plus the outbox: every newly stored reading is queued for InfluxDB."""

    def __init__(self, path: Path, *, outbox_max_rows: int = 5_000_000, **sqlite_options: Any) -> None:
        super().__init__(path, **sqlite_options)
        self._options["outbox_max_rows"] = outbox_max_rows
        self.outbox = Outbox(self, max_rows=outbox_max_rows)

    @classmethod
    def from_settings(cls, settings: Settings) -> InfluxReadingStore:
        return cls(settings.sqlite_path, outbox_max_rows=settings.influx.outbox_max_rows,
                   **cls.options_from(settings))

    def _wire_row(self, paired: PairedReading) -> tuple[Any, ...]:
        # The line is encoded by the request thread, before the writer and its lock; the writer
        # queues it only when the reading is new.
        return (*wire_row(paired), reading_line(paired))

    def _insert_history(self, conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> int:
        new = _insert_new(conn, table, rows)
        if new:
            self.outbox.append(conn, [(row[10], row[3]) for row in new])
        return len(new)


def _insert_new(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Insert wire rows into a day table; returns the rows that were not there yet, in order."""
    sql = _INSERT[table.split("_", 1)[0]].format(table=table)
    history = [_history_row(r) for r in rows]
    # One executemany in the usual case (no duplicates); only when its row count shows duplicates
    # are the rows redone one by one to learn which were new (executemany discards RETURNING rows).
    conn.execute("SAVEPOINT day_insert")
    if conn.executemany(sql, history).rowcount == len(history):
        new = rows
    else:
        conn.execute("ROLLBACK TO day_insert")
        new = [row for row, values in zip(rows, history, strict=True) if conn.execute(sql, values).rowcount]
    conn.execute("RELEASE day_insert")
    return new
