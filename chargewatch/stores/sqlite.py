"""The embedded store: one SQLite file in WAL mode, shared by every worker and service.

Layout: reading history is split into one table per kind and UTC day (``meter_20261123``), keyed by
(timestamp, device id) so a resent reading is stored once. Time first: readings arrive in time
order, so inserts append at the end of the B-tree (a fleet of 10,000 devices would otherwise write
all over a day table larger than the cache), and window scans read a contiguous range. A device's
own history (``history``) scans its day by time: only tools use it; reports read windows.
Retention drops whole day tables, which takes milliseconds however large the day was, instead of a
long DELETE that would hold the write lock. ``current_state`` is the last-value cache.

Writes use group commit: the first request thread to arrive becomes the leader and commits the
readings of every thread that queued behind it in one transaction (one fsync), then wakes them.
Processes serialise their transactions with an ``flock`` on a lock file beside the database,
which wakes a waiter the moment the lock is free (SQLite's own busy handler polls with sleeps of
up to 100 ms).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypeVar

from chargewatch.pairing import PairingConflict, check_one_to_one
from chargewatch.readings import MeterReading
from chargewatch.stores import Kind, PairedReading, StorageUnavailable, StoredReading, WriteResult

if TYPE_CHECKING:
    from chargewatch.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

MS_PER_DAY = 86_400_000
MS_PER_HOUR = 3_600_000
_EPOCH_DAY = date(1970, 1, 1)
_KINDS: tuple[Kind, ...] = ("meter", "vehicle")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('pairings_version', 0);
CREATE TABLE IF NOT EXISTS pairings (
    vehicle_id TEXT PRIMARY KEY,
    meter_id TEXT NOT NULL UNIQUE,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stale_hours (
    hour_ms INTEGER PRIMARY KEY,
    marked_ms INTEGER NOT NULL
);
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
    "INSERT INTO stale_hours (hour_ms, marked_ms) VALUES (?, ?) "
    "ON CONFLICT (hour_ms) DO UPDATE SET marked_ms = max(marked_ms, excluded.marked_ms)"
)

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


def _history_row(reading: PairedReading) -> tuple:
    r = reading.reading
    if isinstance(r, MeterReading):
        return (r.meter_id, r.time_ms, reading.vehicle_id, r.kwh_consumed_ac, r.voltage, reading.received_ms)
    return (r.vehicle_id, r.time_ms, reading.meter_id, r.soc, r.kwh_delivered_dc, r.battery_temp,
            reading.received_ms)


def _current_row(reading: PairedReading) -> tuple:
    r = reading.reading
    if isinstance(r, MeterReading):
        return ("meter", r.meter_id, r.time_ms, reading.received_ms, reading.vehicle_id, reading.meter_id,
                r.kwh_consumed_ac, r.voltage, None, None)
    return ("vehicle", r.vehicle_id, r.time_ms, reading.received_ms, reading.vehicle_id, reading.meter_id,
            r.kwh_delivered_dc, None, r.soc, r.battery_temp)


def _stored(row: Sequence) -> StoredReading:
    kind, device_id, time_ms, received_ms, vehicle_id, meter_id, kwh, voltage, soc, battery_temp = row
    if kind == "meter":
        values = {"kwhConsumedAc": kwh, "voltage": voltage}
    else:
        values = {"soc": soc, "kwhDeliveredDc": kwh, "batteryTemp": battery_temp}
    return StoredReading(kind, device_id, time_ms, received_ms, vehicle_id, meter_id, values)


class _Ticket:
    __slots__ = ("readings", "done", "result", "error")

    def __init__(self, readings: Sequence[PairedReading]) -> None:
        self.readings = readings
        self.done = False
        self.result: WriteResult | None = None
        self.error: BaseException | None = None


class SqliteReadingStore:
    """ReadingStore on one SQLite file; safe to share between threads and (forked) processes."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "full",
        busy_timeout_ms: int = 10_000,
        cache_size_mib: int = 64,
        late_after_ms: int = 15 * 60 * 1000,
    ) -> None:
        self.path = Path(path)
        self._late_after_ms = late_after_ms
        self._pragmas = (
            f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}",
            f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
            f"PRAGMA cache_size = {-1024 * int(cache_size_mib)}",
            "PRAGMA temp_store = MEMORY",
        )
        self._cond = threading.Condition()
        self._pending: list[_Ticket] = []
        self._leading = False
        self._local = threading.local()
        self._owner_pid = -1
        self._writer: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._tables: set[str] = set()
        self._busy_timeout_s = busy_timeout_ms / 1000
        try:
            self._patiently(self._open_schema)  # gunicorn workers booting together wait their turn
        except (OSError, sqlite3.Error) as err:
            raise StorageUnavailable(f"cannot open the SQLite store at {self.path}: {err}") from err

    def _open_schema(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Readings, pairings and alert state are the operator's data: owner-only, like tokens.json.
        # SQLite gives the -wal and -shm files the permissions of the database file.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = self._connect()
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            with self.write_transaction(conn):
                _execute_script(conn, _SCHEMA)
        finally:
            conn.close()

    @classmethod
    def from_settings(cls, settings: "Settings") -> "SqliteReadingStore":
        return cls(settings.sqlite_path, **cls.options_from(settings))

    @staticmethod
    def options_from(settings: "Settings") -> dict[str, Any]:
        """The constructor's keyword options as the settings give them."""
        return {
            "synchronous": settings.sqlite.synchronous,
            "busy_timeout_ms": settings.sqlite.busy_timeout_ms,
            "cache_size_mib": settings.sqlite.cache_size_mib,
            "late_after_ms": settings.efficiency.late_after_seconds * 1000,
        }

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        for pragma in self._pragmas:
            conn.execute(pragma)
        return conn

    def _reset_after_fork(self) -> None:
        # Connections, the lock descriptor and a group commit in flight belong to the process that
        # made them; a forked child (a gunicorn worker) starts its own.
        if self._owner_pid != os.getpid():
            try:
                lock_fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as err:
                raise StorageUnavailable(f"cannot open the write lock {self.path}.lock: {err}") from err
            self._lock_fd = lock_fd
            self._local = threading.local()
            self._writer = None
            self._tables = set()
            self._cond = threading.Condition()
            self._pending = []
            self._leading = False
            self._owner_pid = os.getpid()

    def reader(self) -> sqlite3.Connection:
        self._reset_after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def write_transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction under the cross-process write lock."""
        self._reset_after_fork()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def ensure_tables(self, statements: Sequence[str], what: str) -> None:
        """Run ``CREATE ... IF NOT EXISTS`` statements of a component that shares this file."""
        conn = self.reader()
        try:
            with self.write_transaction(conn):
                for statement in statements:
                    conn.execute(statement)
        except sqlite3.Error as err:
            raise StorageUnavailable(f"cannot create the {what} tables in {self.path}: {err}") from err

    def read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            return self._patiently(lambda: self.reader().execute(sql, params).fetchall())
        except sqlite3.Error as err:
            raise StorageUnavailable(f"reading from {self.path.name} failed: {err}") from err

    def _patiently(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt``, retrying "database is locked" until the busy timeout.

        SQLite's busy handler does not cover every lock: while another process rebuilds the WAL
        index (the first to open the file after the last one closed it, as when gunicorn workers
        boot together) or switches the file to WAL, readers and writers get "database is locked"
        at once."""
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # -- writes (group commit) ---------------------------------------------------------------

    def write(self, readings: Sequence[PairedReading]) -> WriteResult:
        if not readings:
            return WriteResult(0, 0)
        self._reset_after_fork()
        ticket = _Ticket(readings)
        with self._cond:
            self._pending.append(ticket)
            while self._leading and not ticket.done:
                self._cond.wait()
            if not ticket.done:
                self._leading = True
                batch, self._pending = self._pending, []
            else:
                batch = None
        if batch is not None:
            try:
                self._commit_group(batch)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        assert ticket.result is not None
        return ticket.result

    def _commit_group(self, tickets: list[_Ticket]) -> None:
        try:
            try:
                self._patiently(lambda: self._write_tickets(tickets))
            except sqlite3.OperationalError as err:
                if "no such table" not in str(err):
                    raise
                self._tables.clear()  # another process dropped a day we had cached; recreate
                self._patiently(lambda: self._write_tickets(tickets))
        except sqlite3.Error as err:
            logger.error("group commit of %d requests failed: %s", len(tickets), err)
            failure = StorageUnavailable(f"writing to {self.path.name} failed: {err}")
            for ticket in tickets:
                ticket.error = failure
        except BaseException as err:  # never leave a waiting request thread hanging
            for ticket in tickets:
                ticket.error = err
            raise
        finally:
            for ticket in tickets:
                ticket.done = True

    def _write_tickets(self, tickets: list[_Ticket]) -> None:
        self._reset_after_fork()
        if self._writer is None:
            self._writer = self._connect()
        conn = self._writer
        newest: dict[tuple[str, str], PairedReading] = {}
        late_hours: set[int] = set()
        with self.write_transaction(conn):
            for ticket in tickets:
                stored = 0
                groups: dict[str, list[PairedReading]] = {}
                for paired in ticket.readings:
                    r = paired.reading
                    table = day_table(r.kind, r.time_ms // MS_PER_DAY)
                    groups.setdefault(table, []).append(paired)
                    key = (r.kind, r.device_id)
                    seen = newest.get(key)
                    if seen is None or r.time_ms > seen.reading.time_ms:
                        newest[key] = paired
                    if r.time_ms < paired.received_ms - self._late_after_ms:
                        late_hours.add(r.time_ms - r.time_ms % MS_PER_HOUR)
                for table, group in groups.items():
                    kind = table.split("_", 1)[0]
                    if table not in self._tables:
                        _execute_script(conn, _DAY_SCHEMA[kind].format(table=table))
                        self._tables.add(table)
                    stored += self._insert_history(conn, table, group)
                ticket.result = WriteResult(stored=stored, duplicates=len(ticket.readings) - stored)
            conn.executemany(_UPSERT_CURRENT, [_current_row(p) for p in newest.values()])
            if late_hours:
                # Late readings: the task runner recomputes these hours beyond its trailing windows.
                marked_ms = max(p.received_ms for t in tickets for p in t.readings)
                conn.executemany(_MARK_STALE, [(hour, marked_ms) for hour in late_hours])

    def _insert_history(self, conn: sqlite3.Connection, table: str, readings: list[PairedReading]) -> int:
        """Insert one day table's readings inside the group commit; returns how many were new."""
        kind = table.split("_", 1)[0]
        return conn.executemany(_INSERT[kind].format(table=table), [_history_row(p) for p in readings]).rowcount

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
        where, params = [], []
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
                    conn = self.reader()
                    try:
                        with self.write_transaction(conn):
                            conn.execute(f"DROP TABLE IF EXISTS {table}")
                    except sqlite3.Error as err:
                        raise StorageUnavailable(f"dropping {table} failed: {err}") from err
                    dropped.append(table)
        if dropped:
            logger.info("retention: dropped %s", ", ".join(dropped))
        return dropped

    # -- pairings ----------------------------------------------------------------------------

    def pairings_version(self) -> int:
        return self.read("SELECT value FROM meta WHERE key = 'pairings_version'")[0][0]

    def load_pairings(self) -> dict[str, str]:
        return dict(self.read("SELECT vehicle_id, meter_id FROM pairings"))

    def save_pairings(self, pairs: Mapping[str, str], *, replace: bool = False) -> None:
        check_one_to_one(pairs)
        now_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
        conn = self.reader()
        try:
            with self.write_transaction(conn):
                if replace:
                    conn.execute("DELETE FROM pairings")
                for vehicle, meter in pairs.items():
                    conn.execute("DELETE FROM pairings WHERE vehicle_id = ?", (vehicle,))
                for vehicle, meter in pairs.items():
                    holder = conn.execute("SELECT vehicle_id FROM pairings WHERE meter_id = ?", (meter,)).fetchone()
                    if holder is not None:
                        raise PairingConflict(f"meter {meter} is already paired with {holder[0]}")
                    conn.execute("INSERT INTO pairings VALUES (?, ?, ?)", (vehicle, meter, now_ms))
                conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'pairings_version'")
        except sqlite3.Error as err:
            raise StorageUnavailable(f"saving pairings failed: {err}") from err

    def delete_pairing(self, vehicle_id: str) -> bool:
        conn = self.reader()
        try:
            with self.write_transaction(conn):
                deleted = conn.execute("DELETE FROM pairings WHERE vehicle_id = ?", (vehicle_id,)).rowcount
                if deleted:
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
        for conn in (self._writer, getattr(self._local, "conn", None)):
            if conn is not None:
                conn.close()
        self._writer = None
        self._local = threading.local()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._owner_pid = -1
