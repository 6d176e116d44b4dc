"""What only the SQLite adapter promises: durability in a real file, group commit across threads,
safe sharing between processes (spawned and forked), WAL mode, and clear failures."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import chargewatch
from chargewatch.stores import StorageUnavailable, WriteResult
from chargewatch.stores.sqlite import SqliteReadingStore

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TESTS_DIR = Path(__file__).resolve().parents[1]


def ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "chargewatch.db"


@pytest.fixture
def store(db_path):
    store = SqliteReadingStore(db_path)
    yield store
    store.close()


def test_readings_current_state_and_pairings_survive_closing_and_reopening_the_file(
    db_path, make_meter, make_vehicle, paired, reading_time
):
    first = SqliteReadingStore(db_path)
    first.write([paired(make_meter(), vehicle_id="VEHICLE_001"), paired(make_vehicle(), meter_id="METER_001")])
    first.save_pairings({"VEHICLE_001": "METER_017"})
    first.close()

    reopened = SqliteReadingStore(db_path)
    try:
        assert reopened.current("meter", "METER_001").vehicle_id == "VEHICLE_001"
        assert len(reopened.history("vehicle", "VEHICLE_001", 0, ms(reading_time) + 1)) == 1
        assert reopened.load_pairings() == {"VEHICLE_001": "METER_017"}
        assert reopened.write([paired(make_meter())]) == WriteResult(stored=0, duplicates=1)
    finally:
        reopened.close()


def test_a_store_reopens_its_connections_when_used_after_close(store, make_meter, paired, reading_time):
    store.write([paired(make_meter())])
    store.close()

    assert store.current("meter", "METER_001").time_ms == ms(reading_time)


def test_wal_mode_is_on_for_every_connection_to_the_file(store, db_path):
    with closing(sqlite3.connect(db_path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


class GroupCountingStore(SqliteReadingStore):
    """Counts SQLite write transactions and the requests each one committed.

    Only the writer calls ``_write_requests``, once per transaction. The first transaction is held
    until every writer thread has built its request (and a moment more, to send it), so the test
    does not depend on thread timing.
    """

    def __init__(self, path: Path, *, writers: int) -> None:
        super().__init__(path)
        self.writers = writers
        self.group_sizes: list[int] = []
        self.built = 0
        self._built_lock = threading.Lock()

    def _wire_row(self, paired):
        with self._built_lock:
            self.built += 1
        return super()._wire_row(paired)

    def _write_requests(self, requests):
        if not self.group_sizes:
            deadline = time.monotonic() + 5
            while self.built < self.writers and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.05)
        self.group_sizes.append(len(requests))
        return super()._write_requests(requests)


def test_concurrent_writer_threads_share_commits_and_store_every_reading_exactly_once(
    db_path, make_meter, paired, reading_time
):
    threads, writes_per_thread = 16, 50
    # Every thread also sends the same shared reading first: exactly one of them may store it.
    shared = paired(make_meter(meter_id="METER_SHARED"))
    batches = {
        t: [paired(make_meter(meter_id=f"METER_{t:03d}", timestamp=reading_time - timedelta(seconds=n)))
            for n in range(writes_per_thread)]
        for t in range(threads)
    }
    store = GroupCountingStore(db_path, writers=threads)
    start = threading.Barrier(threads)

    def send(t: int) -> list[WriteResult]:
        start.wait()
        return [store.write([shared])] + [store.write([reading]) for reading in batches[t]]

    try:
        with ThreadPoolExecutor(threads) as pool:
            results = [future.result() for future in [pool.submit(send, t) for t in range(threads)]]

        shared_results = Counter(thread_results[0] for thread_results in results)
        assert shared_results == {WriteResult(1, 0): 1, WriteResult(0, 1): threads - 1}
        assert all(r == WriteResult(1, 0) for thread_results in results for r in thread_results[1:])
        for t in range(threads):
            history = store.history("meter", f"METER_{t:03d}", 0, ms(reading_time) + 1)
            assert len(history) == len({entry.time_ms for entry in history}) == writes_per_thread
            assert store.current("meter", f"METER_{t:03d}").time_ms == ms(reading_time)
        assert len(store.history("meter", "METER_SHARED", 0, ms(reading_time) + 1)) == 1

        write_calls = threads * (writes_per_thread + 1)
        assert sum(store.group_sizes) == write_calls  # every request committed once, none lost
        assert len(store.group_sizes) < write_calls
        assert max(store.group_sizes) >= threads - 1
    finally:
        store.close()


_WRITER_PROCESS = """
import json, sys, time
from datetime import timedelta
from pathlib import Path

from conftest import READING_TIME, build_meter, build_paired
from chargewatch.stores.sqlite import SqliteReadingStore

path, go, name, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
batches = [
    [build_paired(build_meter(meter_id=meter_id, timestamp=READING_TIME - timedelta(seconds=n)))
     for meter_id in (f"METER_{name}", "METER_SHARED")]
    for n in range(count)
]
store = SqliteReadingStore(path)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
stored = duplicates = 0
for batch in batches:
    result = store.write(batch)
    stored, duplicates = stored + result.stored, duplicates + result.duplicates
store.close()
print(json.dumps({"stored": stored, "duplicates": duplicates}), flush=True)
"""


def test_two_processes_writing_the_same_file_at_once_lose_nothing_and_fail_nothing(
    db_path, tmp_path, reading_time
):
    count = 100
    go = tmp_path / "go"
    project_root = Path(chargewatch.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(project_root), str(_TESTS_DIR), os.environ.get("PYTHONPATH", "")]
    )}
    SqliteReadingStore(db_path).close()  # create the schema once, outside the race
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER_PROCESS, str(db_path), str(go), name, str(count)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for name in ("A", "B")
    ]
    try:
        for writer in writers:
            assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        go.touch()
        outputs = [writer.communicate(timeout=30) for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.communicate()

    for writer, (_, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
    totals = [json.loads(out) for out, _ in outputs]
    assert sum(t["stored"] for t in totals) == 3 * count  # each own meter, plus the shared one once
    assert sum(t["duplicates"] for t in totals) == count
    store = SqliteReadingStore(db_path)
    try:
        for meter_id in ("METER_A", "METER_B", "METER_SHARED"):
            assert len(store.history("meter", meter_id, 0, ms(reading_time) + 1)) == count
    finally:
        store.close()


def test_a_day_dropped_by_another_store_on_the_same_file_can_still_be_written(
    db_path, make_meter, paired, reading_time
):
    # The writer caches which day tables exist; another store dropping one must not break it.
    old = reading_time - timedelta(days=3)
    writer, janitor = SqliteReadingStore(db_path), SqliteReadingStore(db_path)
    try:
        writer.write([paired(make_meter(timestamp=old))])
        assert janitor.drop_expired(reading_time, retention_days=1) == ["meter_20261120"]

        result = writer.write([paired(make_meter(timestamp=old + timedelta(minutes=1)))])

        assert result == WriteResult(stored=1, duplicates=0)
        assert len(janitor.history("meter", "METER_001", 0, ms(reading_time))) == 1
    finally:
        writer.close()
        janitor.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_writes_through_the_store_object_it_inherited(store, make_meter, paired, reading_time):
    store.write([paired(make_meter(timestamp=reading_time - timedelta(minutes=2)))])
    store.current("meter", "METER_001")  # the parent now holds a writer and a reader connection
    in_child = paired(make_meter(timestamp=reading_time - timedelta(minutes=1)))

    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        exit_code = 1
        try:
            written = store.write([in_child])
            seen = store.current("meter", "METER_001").time_ms
            exit_code = 0 if (written, seen) == (WriteResult(1, 0), ms(reading_time) - 60_000) else 2
            store.close()
        finally:
            os._exit(exit_code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert store.write([paired(make_meter())]) == WriteResult(stored=1, duplicates=0)
    assert [entry.time_ms for entry in store.history("meter", "METER_001", 0, ms(reading_time) + 1)] == [
        ms(reading_time) - 120_000, ms(reading_time) - 60_000, ms(reading_time)
    ]


def test_a_path_below_a_regular_file_fails_with_storage_unavailable_naming_the_path(tmp_path):
    not_a_directory = tmp_path / "data"
    not_a_directory.write_text("a file, not a directory")
    path = not_a_directory / "chargewatch.db"

    with pytest.raises(StorageUnavailable, match="cannot open the SQLite store at") as failure:
        SqliteReadingStore(path)

    assert str(path) in str(failure.value)


def test_a_path_that_is_a_directory_fails_with_storage_unavailable_naming_the_path(tmp_path):
    with pytest.raises(StorageUnavailable, match="cannot open the SQLite store at") as failure:
        SqliteReadingStore(tmp_path)

    assert str(tmp_path) in str(failure.value)


def test_a_file_that_is_not_a_database_fails_with_storage_unavailable(tmp_path):
    path = tmp_path / "chargewatch.db"
    path.write_text("not a database " * 100)

    with pytest.raises(StorageUnavailable, match="file is not a database"):
        SqliteReadingStore(path)


def _open_and_report(path: Path, results) -> None:
    try:
        store = SqliteReadingStore(path)
        store.ping()
        store.close()
        results.put("ok")
    except StorageUnavailable as err:
        results.put(str(err))


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    # As under `chargewatch serve`: the store is created once, then gunicorn workers open it
    # together; one of them failing to open it shuts the whole service down.
    context = multiprocessing.get_context("fork")
    failures = []
    for trial in range(20):
        SqliteReadingStore(tmp_path / f"t{trial}.db").close()
        results = context.Queue()
        processes = [context.Process(target=_open_and_report, args=(tmp_path / f"t{trial}.db", results))
                     for _ in range(6)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=30)
        failures += [r for r in (results.get(timeout=5) for _ in processes) if r != "ok"]
    assert failures == []


_SENDER_PROCESS = """
import sys, time
from datetime import timedelta
from pathlib import Path

from conftest import READING_TIME, build_meter, build_paired
from chargewatch.stores.sqlite import SqliteReadingStore

path, go, sending = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
store = SqliteReadingStore(path, writer="thread")
store.write([build_paired(build_meter(meter_id="METER_OTHER_WARMUP"))])  # connected from now on
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
sending.touch()
print(store.write([build_paired(build_meter(meter_id="METER_OTHER_PROCESS"))]), flush=True)
store.close()
"""


def test_the_shared_writer_covers_the_requests_waiting_in_every_process_with_one_commit(
    db_path, tmp_path, make_meter, paired
):
    go, sending, held = tmp_path / "go", tmp_path / "sending", threading.Event()

    class HeldStore(SqliteReadingStore):
        """The writer (a thread of this process) holds one commit until the other process has sent,
        so requests of both processes queue behind it."""

        groups: list[set[str]] = []

        def _write_requests(self, requests):
            if held.is_set():
                held.clear()
                deadline = time.monotonic() + 10
                while not sending.exists() and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(0.3)  # the other process's frame and the local ones reach the socket
            self.groups.append({rows[0][1] for rows in requests})
            return super()._write_requests(requests)

    store = HeldStore(db_path, writer="thread")
    store.write([paired(make_meter(meter_id="METER_WARMUP"))])  # this process runs the writer
    project_root = Path(chargewatch.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project_root), str(_TESTS_DIR)])}
    other = subprocess.Popen([sys.executable, "-c", _SENDER_PROCESS, str(db_path), str(go), str(sending)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert other.stdout.readline().strip() == "ready", other.stderr.read()
        HeldStore.groups.clear()
        held.set()
        with ThreadPoolExecutor(5) as pool:
            trigger = pool.submit(store.write, [paired(make_meter(meter_id="METER_TRIGGER"))])
            time.sleep(0.1)  # the trigger's commit is held now
            go.touch()
            local = list(pool.map(lambda n: store.write([paired(make_meter(meter_id=f"METER_LOCAL_{n}"))]), range(4)))
            assert trigger.result() == WriteResult(1, 0)
        out, err = other.communicate(timeout=30)
    finally:
        if other.poll() is None:
            other.kill()
            other.communicate()
        store.close()

    assert other.returncode == 0, err
    assert out.strip() == "WriteResult(stored=1, duplicates=0, conflicts=0)"
    assert local == [WriteResult(1, 0)] * 4
    # The requests that queued behind the held commit, from both processes, shared one transaction.
    assert {"METER_OTHER_PROCESS", "METER_LOCAL_0", "METER_LOCAL_1", "METER_LOCAL_2", "METER_LOCAL_3"} in (
        HeldStore.groups), HeldStore.groups


def test_opening_a_second_store_on_the_file_keeps_the_locks_of_the_first(tmp_path: Path) -> None:
    # A process holds several store objects on one file (the task runner, its notifier, retention).
    # Opening one must not close a descriptor of the database file: POSIX drops every lock the
    # process holds on a file when any of its descriptors is closed, SQLite's included. Then another
    # process closing its last connection believes it is the file's last user, checkpoints and
    # deletes the WAL under the first store, whose later reads fail ("database disk image is
    # malformed") and whose writes go to the deleted file.
    path = tmp_path / "chargewatch.db"
    first = SqliteReadingStore(path)
    assert first.read("SELECT count(*) FROM pairings") == [(0,)]  # its connection has the WAL open
    second = SqliteReadingStore(path)
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                    "c.execute('CREATE TABLE probe (x)'); c.commit(); c.close()", str(path)], check=True, timeout=30)
    try:
        assert (tmp_path / "chargewatch.db-wal").exists(), "another process deleted the WAL under an open store"
        assert first.read("SELECT count(*) FROM probe") == [(0,)]
    finally:
        second.close()
        first.close()


class SyncRecordingDatabase:
    """Wraps ``os.fdatasync`` for one test: records the file each sync covered, whether the file's
    write lock (our ``flock``) was free at that moment, and how many of the test's readings the
    WAL held then (read by a connection of its own, which sees what was committed)."""

    def __init__(self, monkeypatch, db_path: Path, fail: bool = False) -> None:
        self.syncs: list[tuple[str, bool, int]] = []
        self._db_path = db_path
        self._fail = fail
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            self.syncs.append((os.readlink(f"/proc/self/fd/{fd}"), self._lock_is_free(), self._committed()))
            if self._fail:
                raise OSError(5, "Input/output error")
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)

    def _lock_is_free(self) -> bool:
        import fcntl

        fd = os.open(f"{self._db_path}.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # also releases the lock if we took it
        return True

    def _committed(self) -> int:
        with closing(sqlite3.connect(self._db_path)) as conn:
            return conn.execute("SELECT count(*) FROM current_state").fetchone()[0]


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc to name the synced file")
def test_a_write_returns_only_after_its_commit_is_synced_to_disk_outside_the_write_lock(
    db_path, monkeypatch, make_meter, paired
):
    store = SqliteReadingStore(db_path)  # synchronous="full", the default
    try:
        store.write([paired(make_meter(meter_id="METER_WARMUP"))])  # day table, WAL, connections
        recorder = SyncRecordingDatabase(monkeypatch, db_path)

        assert store.write([paired(make_meter(meter_id="METER_A"))]) == WriteResult(1, 0)

        # One fdatasync, of the WAL, after the commit (the WAL held the reading) and with the lock
        # released (the other processes' commits go on meanwhile), before write returned.
        assert recorder.syncs == [(f"{db_path}-wal", True, 2)]
        with closing(sqlite3.connect(db_path)) as conn:  # the commit itself did not fsync
            assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # a new connection: FULL
        assert store._writer.execute("PRAGMA synchronous").fetchone() == (1,)  # the writer's: NORMAL
    finally:
        store.close()


def test_with_synchronous_normal_a_write_does_not_wait_for_a_sync(db_path, monkeypatch, make_meter, paired):
    store = SqliteReadingStore(db_path, synchronous="normal")
    try:
        store.write([paired(make_meter(meter_id="METER_WARMUP"))])
        recorder = SyncRecordingDatabase(monkeypatch, db_path)
        assert store.write([paired(make_meter(meter_id="METER_A"))]) == WriteResult(1, 0)
        assert recorder.syncs == []
    finally:
        store.close()


def test_a_failed_sync_fails_the_write_and_a_resend_is_answered_as_a_duplicate(
    db_path, monkeypatch, make_meter, paired, caplog
):
    store = SqliteReadingStore(db_path)
    try:
        store.write([paired(make_meter(meter_id="METER_WARMUP"))])
        recorder = SyncRecordingDatabase(monkeypatch, db_path, fail=True)
        with pytest.raises(StorageUnavailable,
                           match="syncing chargewatch.db-wal to disk failed.*sending them again is safe"):
            store.write([paired(make_meter(meter_id="METER_A"))])
        assert "group commit of 1 requests: syncing" in caplog.text
        recorder._fail = False
        # The reading was committed, so the device's retry finds it: stored once, answered 2xx.
        assert store.write([paired(make_meter(meter_id="METER_A"))]) == WriteResult(0, 1)
        assert len(store.history("meter", "METER_A", 0, 2**62)) == 1
    finally:
        store.close()
