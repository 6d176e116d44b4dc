"""The embedded database: one SQLite file in WAL mode, its connections and its cross-process write lock.

Every SQLite adapter of a process works on one :class:`SqliteDatabase` (the composition root,
``chargewatch.bootstrap``, opens it): the reading store, the outbox, the windows, alerts,
notifications and runner state. They share its per-thread connections and the ``flock`` on
``<db>.lock`` that serialises every write transaction on the file, across processes.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from chargewatch.stores import StorageUnavailable

if TYPE_CHECKING:
    from chargewatch.settings import Settings

T = TypeVar("T")


class SqliteDatabase:
    """One SQLite file; safe to share between threads and (forked) processes.

    Connections and the lock descriptor belong to the process that opened them: a forked child (a
    gunicorn worker) opens its own on first use, and so does a process after :meth:`close`.
    """

    def __init__(self, path: Path, *, synchronous: str = "full", busy_timeout_ms: int = 10_000,
                 cache_size_mib: int = 64) -> None:
        self.path = Path(path)
        self.options: dict[str, Any] = {"synchronous": synchronous, "busy_timeout_ms": busy_timeout_ms,
                                        "cache_size_mib": cache_size_mib}
        self._pragmas = (
            f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}",
            f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
            f"PRAGMA cache_size = {-1024 * int(cache_size_mib)}",
            "PRAGMA temp_store = MEMORY",
        )
        self.busy_timeout_s = busy_timeout_ms / 1000
        self._local = threading.local()
        self._owner_pid = -1
        self._lock_fd: int | None = None
        try:
            self.patiently(self._create_file)  # gunicorn workers booting together wait their turn
        except (OSError, sqlite3.Error) as err:
            raise StorageUnavailable(f"cannot open the SQLite store at {self.path}: {err}") from err

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteDatabase:
        return cls(settings.sqlite_path, synchronous=settings.sqlite.synchronous,
                   busy_timeout_ms=settings.sqlite.busy_timeout_ms, cache_size_mib=settings.sqlite.cache_size_mib)

    def _create_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Readings, pairings and alert state are the operator's data: owner-only, like tokens.json.
        # SQLite gives the -wal and -shm files the permissions of the database file. Only a file that
        # does not exist yet is created here: closing any descriptor of a database file drops every
        # POSIX lock this process holds on it, including those of SQLite connections already open
        # (another store object on the same file), which lets other processes write under them.
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        conn = self.connect()
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
        finally:
            conn.close()

    # -- connections -------------------------------------------------------------------------

    def connect(self, *, sync_on_commit: bool = True) -> sqlite3.Connection:
        """A new connection with this database's pragmas (autocommit; transactions are explicit).

        ``sync_on_commit=False``: its commits do not fsync (synchronous=NORMAL), for a writer that
        makes them durable itself with :meth:`sync_wal` once it has released the write lock."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        for pragma in self._pragmas:
            conn.execute(pragma)
        if not sync_on_commit:
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @property
    def syncs_commits(self) -> bool:
        """Whether a commit must be on disk before it is acknowledged (``synchronous="full"``)."""
        return bool(self.options["synchronous"] == "full")

    def sync_wal(self) -> None:
        """Make every transaction committed to the file so far durable: fdatasync its WAL.

        A commit in WAL mode appends the transaction's pages and a commit frame to ``<db>-wal``;
        with synchronous=FULL SQLite fsyncs that file before COMMIT returns, holding the write lock
        (and so our ``flock``) through the fsync. With synchronous=NORMAL it leaves the frames in
        the page cache, and syncs the WAL before every checkpoint copies it into the database file,
        and the database file after. So the frames of every commit before this call are on disk
        when it returns (one fdatasync covers the commits of every process), and a checkpoint that
        moved them has synced them already. Opened by path each time: the WAL is deleted only after
        a checkpoint of all of it, when the last connection closes, and a new one holds none of
        the frames in question. Raises StorageUnavailable when the sync fails."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # no WAL: every commit has been checkpointed into the (synced) database file
        except OSError as err:
            raise StorageUnavailable(f"cannot open {self.path.name}-wal to sync it: {err}") from err
        try:
            os.fdatasync(fd)
        except OSError as err:
            raise StorageUnavailable(
                f"syncing {self.path.name}-wal to disk failed ({err}); the readings may or may not be stored, "
                "and sending them again is safe") from err
        finally:
            os.close(fd)

    def owned_here(self) -> bool:
        """Open the lock descriptor and forget inherited connections if this process has not yet;
        True when it had (nothing was reset)."""
        if self._owner_pid == os.getpid():
            return True
        try:
            lock_fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise StorageUnavailable(f"cannot open the write lock {self.path}.lock: {err}") from err
        self._lock_fd = lock_fd
        self._local = threading.local()
        self._owner_pid = os.getpid()
        return False

    def reader(self) -> sqlite3.Connection:
        """This thread's connection (reads, and writes inside :meth:`write_transaction`)."""
        self.owned_here()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
        return conn

    # -- the write lock ------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the file's cross-process write lock (blocks until it is free)."""
        self.owned_here()
        assert self._lock_fd is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        assert self._lock_fd is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def write_transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction on ``conn`` under the cross-process write lock."""
        self.lock()
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
            self.unlock()

    @contextmanager
    def transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection; SQLite's failures come out as
        StorageUnavailable naming what was being done."""
        conn = self.reader()
        try:
            with self.write_transaction(conn):
                yield conn
        except sqlite3.Error as err:
            raise StorageUnavailable(f"{doing} failed: {err}") from err

    # -- statements ----------------------------------------------------------------------------

    def ensure_tables(self, statements: Sequence[str], what: str) -> None:
        """Run the ``CREATE ... IF NOT EXISTS`` statements of one component of the file."""
        with self.transaction(f"creating the {what} tables in {self.path}") as conn:
            for statement in statements:
                conn.execute(statement)

    def read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.patiently(lambda: self.reader().execute(sql, params).fetchall())
        except sqlite3.Error as err:
            raise StorageUnavailable(f"reading from {self.path.name} failed: {err}") from err

    def write(self, statements: Iterable[tuple[str, Sequence[Any] | dict[str, Any]]]) -> None:
        """Run statements in one write transaction."""
        with self.transaction(f"writing to {self.path.name}") as conn:
            for sql, params in statements:
                conn.execute(sql, params)

    def patiently(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt``, retrying "database is locked" until the busy timeout.

        SQLite's busy handler does not cover every lock: while another process rebuilds the WAL
        index (the first to open the file after the last one closed it, as when gunicorn workers
        boot together) or switches the file to WAL, readers and writers get "database is locked"
        at once."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                return attempt()
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        """Close this process's connections and lock descriptor (reopened on next use)."""
        if self._owner_pid != os.getpid():
            return
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local = threading.local()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._owner_pid = -1
