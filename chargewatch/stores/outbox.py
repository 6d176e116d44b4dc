"""The durable outbox of influx mode: line-protocol rows waiting for InfluxDB, in the SQLite file.

Ingest appends a row per new reading inside its group commit, in the same transaction as the
day-table insert and the last-value cache update, so a 2xx means the reading is durable *and*
queued. The forwarder (chargewatch.influx.forwarder) reads the oldest rows, ships them and deletes
only the rows InfluxDB acknowledged; rows InfluxDB refuses move to ``dead_letters`` with the error.

Tables (beside the reading store's, under its write lock):

- ``outbox (id, line, created_ms)``: ``id`` orders the queue (oldest first); ``created_ms`` is when
  ingest received the reading, so the oldest row's age is the end-to-end lag.
- ``dead_letters (id, outbox_id, line, created_ms, failed_ms, status, error)``: lines InfluxDB
  rejected (400) or dropped (422), kept until requeued or purged through the CLI.
- ``forwarder_state (key, value)`` and ``forwarder_failures (reason, count)``: what the forwarder
  process last did, read by ingest's ``/metrics`` at scrape time (the forwarder serves no HTTP).

No dedupe is needed here: ingest appends a row only for a reading the day table did not hold yet,
so a (device, timestamp) enters the queue once; the forwarder may send a row twice (a crash
between InfluxDB's 204 and the delete), which InfluxDB absorbs as an identical overwrite.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chargewatch.lineprotocol import encode_point
from chargewatch.readings import MeterReading
from chargewatch.stores import PairedReading, StorageUnavailable

if TYPE_CHECKING:
    from chargewatch.stores.sqlite_database import SqliteDatabase

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, line TEXT NOT NULL, created_ms INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT, outbox_id INTEGER NOT NULL, line TEXT NOT NULL,
        created_ms INTEGER NOT NULL, failed_ms INTEGER NOT NULL, status INTEGER NOT NULL, error TEXT NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS forwarder_state (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS forwarder_failures (reason TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID",
]

# Two single-aggregate subqueries: SQLite answers each from the end of the rowid b-tree, whereas
# max(id) - min(id) in one SELECT, or count(*), would scan the whole queue.
_ID_RANGE = "SELECT (SELECT min(id) FROM outbox), (SELECT max(id) FROM outbox)"
_SET_STATE = ("INSERT INTO forwarder_state (key, value) VALUES (?, ?) "
              "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_COUNT_FAILURE = ("INSERT INTO forwarder_failures (reason, count) VALUES (?, 1) "
                  "ON CONFLICT (reason) DO UPDATE SET count = count + 1")


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


class OutboxFull(StorageUnavailable):
    """The outbox holds its bound of rows: InfluxDB has been unreachable too long (ingest answers 503)."""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    line: str
    created_ms: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    outbox_id: int
    line: str
    created_ms: int
    failed_ms: int
    status: int  # InfluxDB's HTTP status: 400 (unparsable) or 422 (dropped from a partial write)
    error: str


@dataclass(frozen=True)
class OutboxStats:
    """The queue and the forwarder as the outbox tables describe them."""

    depth: int
    max_rows: int
    oldest_created_ms: int | None
    dead_letters: int
    shipped_total: int
    failures: dict[str, int] = field(default_factory=dict)
    forwarder_state: str | None = None  # shipping | retrying | config_error | stopped; None: never ran
    last_error: str | None = None
    last_success_ms: int | None = None
    heartbeat_ms: int | None = None

    def lag_seconds(self, now_ms: int) -> float:
        """Age of the oldest row not yet acknowledged by InfluxDB; 0 when the queue is empty."""
        return 0.0 if self.oldest_created_ms is None else max(0.0, (now_ms - self.oldest_created_ms) / 1000)


class Outbox:
    """The outbox tables of the shared database; transactions go through its write lock."""

    def __init__(self, database: SqliteDatabase, max_rows: int) -> None:
        self.database = database
        self.max_rows = max_rows
        database.ensure_tables(_SCHEMA, "outbox")

    # -- ingest side (inside the group commit) -------------------------------------------------

    def append(self, conn: sqlite3.Connection, rows: Sequence[tuple[str, int]]) -> None:
        """Queue ``(line, created_ms)`` rows in the caller's open write transaction.

        Raises OutboxFull (rolling back the caller's whole transaction) when the rows would take the
        queue beyond ``max_rows``.
        """
        depth = _depth(conn.execute(_ID_RANGE).fetchone())
        if depth + len(rows) > self.max_rows:
            raise OutboxFull(
                f"the InfluxDB outbox holds {depth} of at most {self.max_rows} readings: InfluxDB has not "
                "taken readings for a while; retry later"
            )
        conn.executemany("INSERT INTO outbox (line, created_ms) VALUES (?, ?)", rows)

    # -- forwarder side ----------------------------------------------------------------------

    def oldest(self, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` rows, oldest first."""
        rows = self.database.read("SELECT id, line, created_ms FROM outbox ORDER BY id LIMIT ?", (int(limit),))
        return [OutboxRow(*row) for row in rows]

    def acknowledge(self, rows: Sequence[OutboxRow], now_ms: int) -> None:
        """Delete rows InfluxDB acknowledged, and count them as shipped."""
        with self.database.transaction("acknowledging shipped rows") as conn:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(row.id,) for row in rows])
            conn.execute("INSERT INTO forwarder_state (key, value) VALUES ('shipped_total', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value", (len(rows),))
            _set_state(conn, {"state": "shipping", "last_success_ms": now_ms, "heartbeat_ms": now_ms})

    def dead_letter(self, rows: Sequence[OutboxRow], status: int, errors: Sequence[str], now_ms: int) -> None:
        """Move rows InfluxDB refused to ``dead_letters``, each with its error."""
        with self.database.transaction("moving rows to dead_letters") as conn:
            conn.executemany(
                "INSERT INTO dead_letters (outbox_id, line, created_ms, failed_ms, status, error) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(row.id, row.line, row.created_ms, now_ms, status, error)
                 for row, error in zip(rows, errors, strict=True)],
            )
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(row.id,) for row in rows])

    def record_failure(self, reason: str, message: str, now_ms: int, state: str | None = None) -> None:
        """Count a failed write request by a bounded ``reason``; note the error and the new state."""
        values: dict[str, object] = {"last_error": message[:500], "last_error_ms": now_ms, "heartbeat_ms": now_ms}
        if state is not None:
            values["state"] = state
        with self.database.transaction("recording a forwarder failure") as conn:
            conn.execute(_COUNT_FAILURE, (reason,))
            _set_state(conn, values)

    def set_state(self, now_ms: int, state: str | None = None) -> None:
        """Heartbeat (and optionally a new state) of the forwarder."""
        values: dict[str, object] = {"heartbeat_ms": now_ms}
        if state is not None:
            values["state"] = state
        with self.database.transaction("recording the forwarder state") as conn:
            _set_state(conn, values)

    # -- inspection and repair (CLI, /metrics) ------------------------------------------------

    def depth(self, exact: bool = False) -> int:
        """Rows waiting. Without ``exact``: the id range (two index lookups), which over-counts only by
        rows dead-lettered from the middle of the queue while the rows around them still wait."""
        if exact:
            count: int = self.database.read("SELECT count(*) FROM outbox")[0][0]
            return count
        return _depth(self.database.read(_ID_RANGE)[0])

    def stats(self, exact: bool = False) -> OutboxStats:
        oldest = self.database.read("SELECT created_ms FROM outbox ORDER BY id LIMIT 1")
        state = dict(self.database.read("SELECT key, value FROM forwarder_state"))
        return OutboxStats(
            depth=self.depth(exact),
            max_rows=self.max_rows,
            oldest_created_ms=oldest[0][0] if oldest else None,
            dead_letters=self.database.read("SELECT count(*) FROM dead_letters")[0][0],
            shipped_total=int(state.get("shipped_total", 0)),
            failures=dict(self.database.read("SELECT reason, count FROM forwarder_failures ORDER BY reason")),
            forwarder_state=state.get("state"),
            last_error=state.get("last_error"),
            last_success_ms=state.get("last_success_ms"),
            heartbeat_ms=state.get("heartbeat_ms"),
        )

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        sql = "SELECT id, outbox_id, line, created_ms, failed_ms, status, error FROM dead_letters ORDER BY id"
        rows = self.database.read(sql + " LIMIT ?", (limit,)) if limit is not None else self.database.read(sql)
        return [DeadLetter(*row) for row in rows]

    def requeue(self, ids: Iterable[int] | None = None) -> int:
        """Put dead letters (all when ``ids`` is None) back at the end of the queue; returns how many.

        For after the cause is fixed (a field type made consistent, a retention changed). The bound
        does not apply: these rows were accepted once already.
        """
        where, params = _id_filter(ids)
        with self.database.transaction("requeueing dead letters") as conn:
            conn.execute(f"INSERT INTO outbox (line, created_ms) SELECT line, created_ms FROM dead_letters{where} "
                         "ORDER BY id", params)
            return conn.execute(f"DELETE FROM dead_letters{where}", params).rowcount

    def purge(self, ids: Iterable[int] | None = None) -> int:
        """Delete dead letters for good (all when ``ids`` is None); returns how many."""
        where, params = _id_filter(ids)
        with self.database.transaction("purging dead letters") as conn:
            return conn.execute(f"DELETE FROM dead_letters{where}", params).rowcount



def _depth(id_range: Sequence[int | None]) -> int:
    low, high = id_range
    return 0 if low is None or high is None else high - low + 1


def _set_state(conn: sqlite3.Connection, values: dict[str, object]) -> None:
    conn.executemany(_SET_STATE, list(values.items()))


def _id_filter(ids: Iterable[int] | None) -> tuple[str, tuple[Any, ...]]:
    if ids is None:
        return "", ()
    wanted = tuple(int(i) for i in ids)
    return f" WHERE id IN ({', '.join('?' * len(wanted))})", wanted
