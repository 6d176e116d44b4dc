"""The embedded store: one SQLite file in WAL mode, shared by every worker and service.

Layout: reading history is split into one table per kind and UTC day (``meter_20261123``), keyed by
(timestamp, device id) so a resent reading is stored once. Time first: readings arrive in time
order, so inserts append at the end of the B-tree (a fleet of 10,000 devices would otherwise write
all over a day table larger than the cache), and window scans read a contiguous range. A device's
own history (``history``) scans its day by time: only tools use it; reports read windows.
Retention drops whole day tables, which takes milliseconds however large the day was, instead of a
long DELETE that would hold the write lock. ``current_state`` is the last-value cache.

Writes (``writer``): by default (``group``) each process group-commits: the first request thread to
arrive leads, takes the file's write lock (an ``flock`` on ``<db>.lock``, which wakes the next
process the moment it is free; SQLite's own busy handler polls with sleeps of up to 100 ms) and
only then the requests queued behind it, commits them in one transaction (one fsync), wakes
exactly those and hands the lead to the next waiting thread. With ``process`` or ``thread``, one
writer serves every process on the file (``chargewatch.stores.sqlite_writer``): one fsync covers
the requests waiting in all of them. Other transactions on the file (task runner, pairings,
retention) serialise with either through the same ``flock``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from chargewatch.pairing import PairingConflict, PairingInterval, check_one_to_one
from chargewatch.readings import MeterReading
from chargewatch.stores import Kind, PairedReading, StorageUnavailable, StoredReading, WriteResult
from chargewatch.stores.outbox import Outbox, reading_line
from chargewatch.stores.sqlite_database import SqliteDatabase
from chargewatch.stores.sqlite_writer import SharedWriter

logger = logging.getLogger(__name__)

MS_PER_DAY = 86_400_000
MS_PER_HOUR = 3_600_000
_EPOCH_DAY = date(1970, 1, 1)
_KINDS: tuple[Kind, ...] = ("meter", "vehicle")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('pairings_version', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('stale_sequence', 0);
CREATE TABLE IF NOT EXISTS pairings (
    vehicle_id TEXT PRIMARY KEY,
    meter_id TEXT NOT NULL UNIQUE,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pairing_history (
    vehicle_id TEXT NOT NULL,
    meter_id TEXT NOT NULL,
    valid_from_ms INTEGER NOT NULL,
    valid_to_ms INTEGER,
    PRIMARY KEY (vehicle_id, valid_from_ms)
) WITHOUT ROWID;
INSERT INTO pairing_history SELECT vehicle_id, meter_id, updated_ms, NULL FROM pairings
    WHERE NOT EXISTS (SELECT 1 FROM pairing_history);
CREATE TABLE IF NOT EXISTS stale_windows (
    window_ms INTEGER NOT NULL,
    stop_ms INTEGER NOT NULL,
    vehicle_id TEXT NOT NULL,
    marked INTEGER NOT NULL,
    PRIMARY KEY (window_ms, stop_ms, vehicle_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS current_state (
    kind TEXT NOT NULL,
    device_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    vehicle_id TEXT,
    meter_id TEXT,
    kwh REAL NOT NULL,
    voltage REAL,
    soc REAL,
    battery_temp REAL,
    PRIMARY KEY (kind, device_id)
) WITHOUT ROWID;
"""

_DAY_SCHEMA = {
    "meter": """
        CREATE TABLE IF NOT EXISTS {table} (
            meter_id TEXT NOT NULL,
            time_ms INTEGER NOT NULL,
            vehicle_id TEXT,
            kwh_consumed_ac REAL NOT NULL,
            voltage REAL NOT NULL,
            received_ms INTEGER NOT NULL,
            PRIMARY KEY (time_ms, meter_id)
        ) WITHOUT ROWID;
    """,
    "vehicle": """
        CREATE TABLE IF NOT EXISTS {table} (
            vehicle_id TEXT NOT NULL,
            time_ms INTEGER NOT NULL,
            meter_id TEXT,
            soc REAL NOT NULL,
            kwh_delivered_dc REAL NOT NULL,
            battery_temp REAL NOT NULL,
            received_ms INTEGER NOT NULL,
            PRIMARY KEY (time_ms, vehicle_id)
        ) WITHOUT ROWID;
    """,
}

_INSERT = {
    "meter": "INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    "vehicle": "INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
}

_SELECT_HISTORY = {
    "meter": "SELECT meter_id, time_ms, received_ms, vehicle_id, meter_id, kwh_consumed_ac, voltage, "
    "NULL, NULL FROM {table} WHERE meter_id = ? AND time_ms >= ? AND time_ms < ? ORDER BY time_ms",
    "vehicle": "SELECT vehicle_id, time_ms, received_ms, vehicle_id, meter_id, kwh_delivered_dc, NULL, "
    "soc, battery_temp FROM {table} WHERE vehicle_id = ? AND time_ms >= ? AND time_ms < ? ORDER BY time_ms",
}

_UPSERT_CURRENT = """
INSERT INTO current_state
    (kind, device_id, time_ms, received_ms, vehicle_id, meter_id, kwh, voltage, soc, battery_temp)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (kind, device_id) DO UPDATE SET
    time_ms = excluded.time_ms, received_ms = excluded.received_ms,
    vehicle_id = excluded.vehicle_id, meter_id = excluded.meter_id, kwh = excluded.kwh,
    voltage = excluded.voltage, soc = excluded.soc, battery_temp = excluded.battery_temp
WHERE excluded.time_ms > current_state.time_ms
"""

_MARK_STALE = (
    "INSERT INTO stale_windows (window_ms, stop_ms, vehicle_id, marked) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO UPDATE SET marked = excluded.marked"
)
# Set by the task runner before it reads the readings of a run: windows with a stop up to here are
# computed (or being computed), so a reading for one of them that commits later marks it stale.
_COMPUTED_THROUGH = "SELECT (SELECT value FROM meta WHERE key = 'windows_computed_through_ms'), " \
    "(SELECT value FROM meta WHERE key = 'window_ms')"

_CURRENT_COLUMNS = "kind, device_id, time_ms, received_ms, vehicle_id, meter_id, kwh, voltage, soc, battery_temp"


@lru_cache(maxsize=256)
def day_table(kind: Kind, day_number: int) -> str:
    """Table name for one kind and UTC day (days since the epoch); never built from input text."""
    return f"{kind}_{(_EPOCH_DAY + timedelta(days=day_number)).strftime('%Y%m%d')}"


def _day_number(table: str) -> int:
    return (datetime.strptime(table.split("_", 1)[1], "%Y%m%d").date() - _EPOCH_DAY).days


def _day_number_of(moment: datetime) -> int:
    return (moment.astimezone(timezone.utc).date() - _EPOCH_DAY).days


def _execute_script(conn: sqlite3.Connection, script: str) -> None:
    # Not conn.executescript(): it commits any open transaction first, and these run inside one.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def wire_row(reading: PairedReading) -> tuple[Any, ...]:
    """The row a request sends the writer: the last-value cache's columns, from which the writer
    also takes the history row (``_history_row``)."""
    r = reading.reading
    if isinstance(r, MeterReading):
        return ("meter", r.meter_id, r.time_ms, reading.received_ms, reading.vehicle_id, reading.meter_id,
                r.kwh_consumed_ac, r.voltage, None, None)
    return ("vehicle", r.vehicle_id, r.time_ms, reading.received_ms, reading.vehicle_id, reading.meter_id,
            r.kwh_delivered_dc, None, r.soc, r.battery_temp)


def _history_row(row: Sequence[Any]) -> tuple[Any, ...]:
    kind, device_id, time_ms, received_ms, vehicle_id, meter_id, kwh, voltage, soc, battery_temp = row[:10]
    if kind == "meter":
        return (device_id, time_ms, vehicle_id, kwh, voltage, received_ms)
    return (device_id, time_ms, meter_id, soc, kwh, battery_temp, received_ms)


# The stored values a duplicate is compared with, and the same values in a wire row.
_STORED_VALUES = {
    "meter": "SELECT kwh_consumed_ac, voltage FROM {table} WHERE time_ms = ? AND meter_id = ?",
    "vehicle": "SELECT soc, kwh_delivered_dc, battery_temp FROM {table} WHERE time_ms = ? AND vehicle_id = ?",
}


def _values(row: Sequence[Any]) -> tuple[Any, ...]:
    return (row[6], row[7]) if row[0] == "meter" else (row[8], row[6], row[9])


def _stored(row: Sequence[Any]) -> StoredReading:
    kind, device_id, time_ms, received_ms, vehicle_id, meter_id, kwh, voltage, soc, battery_temp = row
    if kind == "meter":
        values = {"kwhConsumedAc": kwh, "voltage": voltage}
    else:
        values = {"soc": soc, "kwhDeliveredDc": kwh, "batteryTemp": battery_temp}
    return StoredReading(kind, device_id, time_ms, received_ms, vehicle_id, meter_id, values)


def _record_history(conn: sqlite3.Connection, before: Mapping[str, str], after: Mapping[str, str],
                    now_ms: int) -> None:
    """End the intervals of the pairings that changed at ``now_ms`` and open the new ones."""
    for vehicle in before.keys() | after.keys():
        if before.get(vehicle) == after.get(vehicle):
            continue
        conn.execute("UPDATE pairing_history SET valid_to_ms = ? WHERE vehicle_id = ? AND valid_to_ms IS NULL",
                     (now_ms, vehicle))
        # Changed twice within a millisecond: the first change held for no time at all.
        conn.execute("DELETE FROM pairing_history WHERE vehicle_id = ? AND valid_from_ms >= valid_to_ms", (vehicle,))
        if vehicle in after:
            conn.execute("INSERT INTO pairing_history VALUES (?, ?, ?, NULL)", (vehicle, after[vehicle], now_ms))


class _Ticket:
    """One request waiting in a process's group commit. ``wake`` is a lock held from the start and
    released to wake the request's thread: cheaper than an Event (a Condition and a lock of its own
    per waiter), and it wakes that one thread only."""

    __slots__ = ("rows", "wake", "lead", "result", "error")

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.wake = threading.Lock()
        self.wake.acquire()
        self.lead = False
        self.result: tuple[int, int, int] | None = None
        self.error: BaseException | None = None

    def answer(self) -> tuple[int, int, int]:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _count_conflicts(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> int:
    """Rows whose (device, timestamp) is stored with other values (the stored copy, the first, is
    kept). Run only when an insert found duplicates; a row just inserted matches itself."""
    sql = _STORED_VALUES[rows[0][0]].format(table=table)
    return sum(conn.execute(sql, (row[2], row[1])).fetchone() != _values(row) for row in rows)


class SqliteReadingStore:
    """ReadingStore on one SQLite file; safe to share between threads and (forked) processes.

    With ``outbox_max_rows`` (influx mode), every reading the day tables did not hold yet is also
    encoded as a line-protocol row and appended to the :class:`Outbox` of the same database, in the
    same transaction and group commit, so a 2xx still means durable; the forwarder ships the
    outbox to InfluxDB. The day tables stay in influx mode: they are the dedupe index, so a
    (device, timestamp) reaches InfluxDB once, with the pairing that held when it first arrived
    (InfluxDB's own overwrite would not do: the pairing tags are part of the series key).
    """

    def __init__(self, database: SqliteDatabase | Path, *, writer: str = "group",
                 outbox_max_rows: int | None = None, **database_options: Any) -> None:
        self.database = database if isinstance(database, SqliteDatabase) else SqliteDatabase(
            database, **database_options)
        self.path = self.database.path
        self._writer_mode = writer
        # The group commit commits without fsync and syncs the WAL after releasing the lock.
        self._sync_after_commit = writer == "group" and self.database.syncs_commits
        self._shared: SharedWriter | None = None
        self._queue_lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._leading = False
        self._owner_pid = -1
        self._writer: sqlite3.Connection | None = None
        self._tables: set[str] = set()
        try:
            self.database.patiently(self._create_schema)  # gunicorn workers booting together wait their turn
        except sqlite3.Error as err:
            raise StorageUnavailable(f"cannot open the SQLite store at {self.path}: {err}") from err
        self.outbox = Outbox(self.database, outbox_max_rows) if outbox_max_rows is not None else None

    def _create_schema(self) -> None:
        conn = self.database.reader()
        with self.database.write_transaction(conn):
            _execute_script(conn, _SCHEMA)

    # -- connections -------------------------------------------------------------------------

    def _reset_after_fork(self) -> None:
        # The writer connection and a group commit in flight belong to the process that made them;
        # a forked child (a gunicorn worker) starts its own.
        self.database.owned_here()
        if self._owner_pid != os.getpid():
            self._writer = None
            self._tables = set()
            self._queue_lock = threading.Lock()
            self._queue = []
            self._leading = False
            if self._shared is not None:
                self._shared.abandon()
            self._shared = SharedWriter(self.path, self._commit_requests, self.database.busy_timeout_s,
                                        spawn=self._writer_spec() if self._writer_mode == "process" else None)
            self._owner_pid = os.getpid()

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.database.read(sql, params)

    # -- writes (one writer shared by every process) -------------------------------------------

    def write(self, readings: Sequence[PairedReading]) -> WriteResult:
        if not readings:
            return WriteResult(0, 0)
        self._reset_after_fork()
        rows = [self._wire_row(p) for p in readings]  # built here, outside any lock
        if self._writer_mode == "group":
            return WriteResult(*self._group_commit(rows))
        assert self._shared is not None
        return WriteResult(*self._shared.send(rows))

    def _group_commit(self, rows: list[tuple[Any, ...]]) -> tuple[int, int, int]:
        """This process's group commit: the first thread to arrive leads; it takes the file's write
        lock first and only then the requests queued behind it (those that arrived while it waited
        for the other processes join too), commits them in one transaction, releases the lock and
        hands the lead to the next waiting thread, then syncs the WAL (outside the lock, so the
        next batch of this process or another commits meanwhile) and wakes exactly its requests."""
        ticket = _Ticket(rows)
        with self._queue_lock:
            if self._leading:
                self._queue.append(ticket)
            else:
                self._leading = True
                ticket.lead = True
        if not ticket.lead:
            ticket.wake.acquire()
            if not ticket.lead:
                return ticket.answer()
        batch = [ticket]
        try:
            self.database.lock()  # held through the commit (write_transaction)
            with self._queue_lock:
                batch, self._queue = [ticket, *self._queue], []
            try:
                results = self._commit_requests([t.rows for t in batch])
            except BaseException as err:  # never leave a waiting request thread hanging
                for waiting in batch:
                    waiting.error = err
            else:
                for waiting, result in zip(batch, results, strict=True):
                    waiting.result = result
            finally:
                self.database.unlock()
        finally:
            with self._queue_lock:
                if self._queue:
                    successor = self._queue.pop(0)
                    successor.lead = True
                    successor.wake.release()
                else:
                    self._leading = False
        if ticket.error is None and self._sync_after_commit:
            try:
                self.database.sync_wal()
            except StorageUnavailable as err:
                logger.error("group commit of %d requests: %s", len(batch), err)
                for waiting in batch:
                    waiting.error = err
        for waiting in batch[1:]:
            waiting.wake.release()
        return ticket.answer()

    def start_writer(self) -> None:
        """Connect this thread to the shared writer now, starting it if none runs (ingest workers
        call it once at boot; the connection also keeps a writer process from idling out). Nothing
        to do for the per-process group commit."""
        if self._writer_mode == "group":
            return
        self._reset_after_fork()
        assert self._shared is not None
        self._shared.connect()

    def _wire_row(self, paired: PairedReading) -> tuple[Any, ...]:
        if self.outbox is None:
            return wire_row(paired)
        # The line is encoded by the request thread, before the writer and its lock; the writer
        # queues it only when the reading is new.
        return (*wire_row(paired), reading_line(paired))

    def _writer_spec(self) -> dict[str, Any]:
        """How a writer process builds this store (``chargewatch.stores.sqlite_writer``)."""
        cls = type(self)
        options = {**self.database.options, "outbox_max_rows": None if self.outbox is None else self.outbox.max_rows}
        return {"store": f"{cls.__module__}:{cls.__qualname__}", "path": str(self.path), "options": options}

    def _commit_requests(self, requests: list[list[tuple[Any, ...]]]) -> list[tuple[int, int, int]]:
        """The writer's side: commit every request's rows in one transaction; returns
        (stored, duplicates, conflicts) per request."""
        try:
            try:
                return self.database.patiently(lambda: self._write_requests(requests))
            except sqlite3.OperationalError as err:
                if "no such table" not in str(err):
                    raise
                self._tables.clear()  # another process dropped a day we had cached; recreate
                return self.database.patiently(lambda: self._write_requests(requests))
        except sqlite3.Error as err:
            logger.error("group commit of %d requests failed: %s", len(requests), err)
            raise StorageUnavailable(f"writing to {self.path.name} failed: {err}") from err

    def _write_requests(self, requests: list[list[tuple[Any, ...]]]) -> list[tuple[int, int, int]]:
        if self._writer is None:
            self._writer = self.database.connect(sync_on_commit=not self._sync_after_commit)
        conn = self._writer
        newest: dict[tuple[str, str], tuple[Any, ...]] = {}
        results = []
        with self.database.write_transaction(conn):
            computed_through_ms, window_ms = conn.execute(_COMPUTED_THROUGH).fetchone()
            stale: set[tuple[int, int, str]] = set()
            for rows in requests:
                stored = conflicts = 0
                groups: dict[str, list[tuple[Any, ...]]] = {}
                for row in rows:
                    kind, device_id, time_ms, received_ms = row[:4]
                    table = day_table(kind, time_ms // MS_PER_DAY)
                    groups.setdefault(table, []).append(row)
                    key = (kind, device_id)
                    seen = newest.get(key)
                    if seen is None or time_ms > seen[2]:
                        newest[key] = row
                    if computed_through_ms is not None and row[4] is not None:
                        stop_ms = (time_ms // window_ms + 1) * window_ms
                        if stop_ms <= computed_through_ms:  # its window was computed without it
                            stale.add((window_ms, stop_ms, row[4]))
                for table, group in groups.items():
                    kind = table.split("_", 1)[0]
                    if table not in self._tables:
                        _execute_script(conn, _DAY_SCHEMA[kind].format(table=table))
                        self._tables.add(table)
                    new = self._insert_history(conn, table, group)
                    stored += new
                    if new < len(group):
                        conflicts += _count_conflicts(conn, table, group)
                results.append((stored, len(rows) - stored - conflicts, conflicts))
            conn.executemany(_UPSERT_CURRENT, [row[:10] for row in newest.values()])
            if stale:
                # Late readings: the task runner recomputes these vehicles' windows at its next run.
                # A sequence, not a clock: the runner clears only the marks it has seen (see
                # SqliteWindowStore.clear_stale_windows), whatever the order requests arrived in.
                (sequence,) = conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'stale_sequence' "
                                           "RETURNING value").fetchone()
                conn.executemany(_MARK_STALE, [(*key, sequence) for key in stale])
        return results

    def _insert_history(self, conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> int:
        """Insert one day table's rows inside the group commit (queueing the new ones in the outbox,
        if any); returns how many were new."""
        kind = table.split("_", 1)[0]
        if self.outbox is None:
            return conn.executemany(_INSERT[kind].format(table=table), [_history_row(r) for r in rows]).rowcount
        new = _insert_new(conn, table, rows)
        if new:
            self.outbox.append(conn, [(row[10], row[3]) for row in new])
        return len(new)

    # -- the last-value cache ----------------------------------------------------------------

    def current(self, kind: Kind, device_id: str) -> StoredReading | None:
        rows = self.read(
            f"SELECT {_CURRENT_COLUMNS} FROM current_state WHERE kind = ? AND device_id = ?", (kind, device_id)
        )
        return _stored(rows[0]) if rows else None

    def list_current(
        self, kind: Kind | None = None, after: tuple[str, str] | None = None, limit: int = 100,
        unpaired_only: bool = False,
    ) -> list[StoredReading]:
        where: list[str] = []
        params: list[Any] = []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if after is not None:
            where.append("(kind, device_id) > (?, ?)")
            params.extend(after)
        if unpaired_only:
            where.append("(CASE kind WHEN 'meter' THEN vehicle_id ELSE meter_id END) IS NULL")
        sql = f"SELECT {_CURRENT_COLUMNS} FROM current_state"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY kind, device_id LIMIT ?"
        return [_stored(row) for row in self.read(sql, (*params, int(limit)))]

    # -- history -----------------------------------------------------------------------------

    def history(self, kind: Kind, device_id: str, start_ms: int, end_ms: int) -> list[StoredReading]:
        first_day, last_day = start_ms // MS_PER_DAY, (end_ms - 1) // MS_PER_DAY
        result: list[StoredReading] = []
        for day, table in sorted(self._day_tables(kind).items()):
            if first_day <= day <= last_day:
                sql = _SELECT_HISTORY[kind].format(table=table)
                result.extend(_stored((kind, *row)) for row in self.read(sql, (device_id, start_ms, end_ms)))
        return result

    def count_by_minute(self, kind: Kind, start_ms: int, end_ms: int) -> dict[int, int]:
        counts: dict[int, int] = {}
        first_day, last_day = start_ms // MS_PER_DAY, (end_ms - 1) // MS_PER_DAY
        for day, table in self._day_tables(kind).items():  # table names built from numbers, never input
            if first_day <= day <= last_day:
                for minute, count in self.read(f"SELECT time_ms / 60000 * 60000 AS minute, count(*) FROM {table} "
                                               "WHERE time_ms >= ? AND time_ms < ? GROUP BY minute",
                                               (start_ms, end_ms)):
                    counts[minute] = counts.get(minute, 0) + count
        return counts

    def _day_tables(self, kind: Kind) -> dict[int, str]:
        """Existing history tables of one kind by day number."""
        rows = self.read(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB ?", (f"{kind}_[0-9]*",)
        )
        return {_day_number(name): name for (name,) in rows}

    def drop_expired(self, now: datetime, retention_days: int) -> list[str]:
        cutoff_day = _day_number_of(now - timedelta(days=retention_days))
        dropped = []
        for kind in _KINDS:
            for day, table in sorted(self._day_tables(kind).items()):
                if day < cutoff_day:
                    with self.database.transaction(f"dropping {table}") as conn:
                        conn.execute(f"DROP TABLE IF EXISTS {table}")
                    dropped.append(table)
        cutoff_ms = cutoff_day * MS_PER_DAY
        if self.read("SELECT 1 FROM pairing_history WHERE valid_to_ms < ? LIMIT 1", (cutoff_ms,)):
            # No reading that old is stored or accepted any more.
            with self.database.transaction("pruning the pairing history") as conn:
                conn.execute("DELETE FROM pairing_history WHERE valid_to_ms < ?", (cutoff_ms,))
                conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'pairings_version'")
        if dropped:
            logger.info("retention: dropped %s", ", ".join(dropped))
        return dropped

    # -- pairings ----------------------------------------------------------------------------

    def pairings_version(self) -> int:
        version: int = self.read("SELECT value FROM meta WHERE key = 'pairings_version'")[0][0]
        return version

    def load_pairings(self) -> dict[str, str]:
        return dict(self.read("SELECT vehicle_id, meter_id FROM pairings"))

    def load_pairing_history(self) -> list[PairingInterval]:
        return [PairingInterval(*row) for row in self.read(
            "SELECT vehicle_id, meter_id, valid_from_ms, valid_to_ms FROM pairing_history ORDER BY valid_from_ms")]

    def save_pairings(self, pairs: Mapping[str, str], *, replace: bool = False) -> None:
        check_one_to_one(pairs)
        now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
        conn = self.database.reader()
        try:
            with self.database.write_transaction(conn):
                before = dict(conn.execute("SELECT vehicle_id, meter_id FROM pairings"))
                if replace:
                    conn.execute("DELETE FROM pairings")
                for vehicle in pairs:
                    conn.execute("DELETE FROM pairings WHERE vehicle_id = ?", (vehicle,))
                for vehicle, meter in pairs.items():
                    holder = conn.execute("SELECT vehicle_id FROM pairings WHERE meter_id = ?", (meter,)).fetchone()
                    if holder is not None:
                        raise PairingConflict(f"meter {meter} is already paired with {holder[0]}")
                    conn.execute("INSERT INTO pairings VALUES (?, ?, ?)", (vehicle, meter, now_ms))
                _record_history(conn, before, dict(conn.execute("SELECT vehicle_id, meter_id FROM pairings")), now_ms)
                conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'pairings_version'")
        except sqlite3.Error as err:
            raise StorageUnavailable(f"saving pairings failed: {err}") from err

    def delete_pairing(self, vehicle_id: str) -> bool:
        conn = self.database.reader()
        try:
            with self.database.write_transaction(conn):
                deleted = conn.execute("DELETE FROM pairings WHERE vehicle_id = ?", (vehicle_id,)).rowcount
                if deleted:
                    now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
                    _record_history(conn, {vehicle_id: ""}, {}, now_ms)
                    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'pairings_version'")
        except sqlite3.Error as err:
            raise StorageUnavailable(f"deleting a pairing failed: {err}") from err
        return bool(deleted)

    # -- lifecycle ---------------------------------------------------------------------------

    def ping(self) -> None:
        self.read("SELECT 1")

    def close(self) -> None:
        if self._owner_pid != os.getpid():
            return
        if self._shared is not None:
            self._shared.close()  # the writer thread, if it runs here, finishes before its connection closes
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self.database.close()
        self._owner_pid = -1


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
