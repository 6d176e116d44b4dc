"""The one writer that every process on an SQLite file shares, and the connection to it.

Why: each commit ends in an fsync, and with one group commit per process the processes took turns
on the file, each turn covering only the few requests of one process. One writer per file sees
the requests of every process at once and covers all of them with one transaction and one fsync.

How:
- The writer holds an exclusive ``flock`` on ``<db>.writer.lock`` while it runs (the kernel drops
  it when its process dies) and listens on a Unix socket in the abstract namespace (no file to
  clean up, no path-length limit), named after the database's real path. Only processes of the
  same user may connect (``SO_PEERCRED``).
- Where it runs: with ``spawn`` (the services: ``CHARGEWATCH_SQLITE__WRITER=process``) the first
  request to find no writer starts one as a process of its own (``python -m
  chargewatch.stores.sqlite_writer``, in the caller's process group), so it never waits for the
  GIL behind request threads; it exits once no process has been connected for a few seconds.
  Without (``thread``: tools, tests) the first process to write runs it in a thread.
- Each request thread has its own connection. It sends one frame (the rows it built before any
  lock, ``marshal``-encoded) and blocks reading the answer, so the kernel wakes exactly the
  threads whose requests were committed; nothing wakes threads that have to keep waiting.
- The writer reads every complete frame waiting on any connection, hands them all to ``commit``
  (one transaction) and answers each. While it commits, new frames queue in the sockets.
- An answer is ``("ok", result)`` or ``("error", StorageUnavailable subclass name, message)``.
  A writer that stops in order answers every frame it has read and then says ``("goodbye",)``:
  the frame the client is waiting on was not read, so it is sent again to the next writer. A
  connection that ends without an answer (the writer's process was killed) leaves the outcome
  unknown: that request fails with StorageUnavailable (503), and a device's retry is answered as a
  duplicate if it had been stored.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import importlib
import json
import logging
import marshal
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from chargewatch.stores import StorageUnavailable

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<I")
_UCRED = struct.Struct("3i")
_RECV_BYTES = 1 << 20
IDLE_EXIT_SECONDS = 5.0  # a writer process with no connection for this long exits
_RESPAWN_SECONDS = 2.0

Commit = Callable[[list[list[tuple[Any, ...]]]], list[Any]]  # rows of each request -> one answer each


_RUNNING: weakref.WeakSet[SharedWriter] = weakref.WeakSet()
_INHERITED: list[Any] = []  # a forked child's copy of its parent's writer thread object, never used


@atexit.register
def _stop_running_writers() -> None:
    # A worker that exits (gunicorn's graceful stop) answers what it has read and says goodbye, so
    # the other processes' requests in flight move to the next writer instead of failing.
    for writer in list(_RUNNING):
        writer.close()


def writer_address(db_path: Path) -> str:
    """The abstract socket name of a database's writer."""
    digest = hashlib.sha256(str(Path(db_path).resolve()).encode()).hexdigest()[:32]
    return f"\0chargewatch-writer-{digest}"


def _frame(message: Any) -> bytes:
    payload = marshal.dumps(message)
    return _HEADER.pack(len(payload)) + payload


class SharedWriter:
    """One process's side of the shared writer: its connections, and the writer when it runs here."""

    def __init__(self, db_path: Path, commit: Commit, timeout_s: float,
                 spawn: dict[str, Any] | None = None) -> None:
        self._address = writer_address(db_path)
        self._spawn = spawn
        self._spawned_at = float("-inf")
        self._lock_path = f"{db_path}.writer.lock"
        self._commit = commit
        self._timeout_s = timeout_s
        self._local = threading.local()
        # Every open connection, closed when this object goes (even collected in a reference cycle,
        # where the sockets' own finalizers would run first and warn) or when a thread ends.
        self._open: set[socket.socket] = set()
        weakref.finalize(self, _close_all, self._open)
        self._lock_fd: int | None = None
        self._server: _WriterThread | None = None
        self._start_lock = threading.Lock()

    # -- client side ---------------------------------------------------------------------------

    def send(self, rows: list[tuple[Any, ...]]) -> Any:
        """Have ``rows`` committed by the writer; returns its answer once they are durable."""
        frame = _frame(rows)
        deadline = time.monotonic() + self._timeout_s
        while True:
            sock = self._connection(deadline)
            try:
                sock.sendall(frame)
            except OSError:
                # Not wholly sent, so never committed (the writer commits only complete frames).
                self._drop(sock)
                if time.monotonic() > deadline:
                    raise StorageUnavailable("the store's writer is not taking requests") from None
                continue
            answer = self._answer(sock)
            if answer[0] == "ok":
                return answer[1]
            if answer[0] == "error":
                raise _error_class(answer[1])(answer[2])
            self._drop(sock)  # goodbye: this frame was not read; send it to the next writer

    def connect(self) -> None:
        """Open this thread's connection now (starting the writer if none runs), so the first
        request does not wait for a writer process to start."""
        self._connection(time.monotonic() + self._timeout_s)

    def _answer(self, sock: socket.socket) -> tuple[Any, ...]:
        try:
            header = _receive(sock, _HEADER.size)
            answer: tuple[Any, ...] = marshal.loads(_receive(sock, _HEADER.unpack(header)[0]))
            return answer
        except (OSError, EOFError, ValueError) as err:
            self._drop(sock)
            raise StorageUnavailable(
                f"the store's writer stopped before answering ({err}); the readings may or may not be "
                "stored, and sending them again is safe") from None

    def _connection(self, deadline: float) -> socket.socket:
        held = getattr(self._local, "connection", None)
        if held is not None:
            sock: socket.socket = held.sock
            return sock
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self._address)
            except OSError as err:
                sock.close()
                if err.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN):
                    raise StorageUnavailable(f"cannot reach the store's writer: {err}") from None
                started = self._spawn_writer() if self._spawn is not None else self._start_writer()
                if not started and time.monotonic() > deadline:
                    raise StorageUnavailable("no writer took the store's writes in time") from None
                time.sleep(0.002)
                continue
            sock.settimeout(self._timeout_s + 30)
            self._local.connection = _Connection(sock, self._open)
            return sock

    def _drop(self, sock: socket.socket) -> None:
        self._local.connection = None
        self._open.discard(sock)
        sock.close()

    # -- the writer, in a process of its own ----------------------------------------------------

    def _spawn_writer(self) -> bool:
        """Start a writer process unless this process started one moments ago; False meanwhile."""
        with self._start_lock:
            if time.monotonic() - self._spawned_at < _RESPAWN_SECONDS:
                return False
            self._spawned_at = time.monotonic()
            # It forks at once and the intermediate exits, so this returns as soon as the writer
            # is on its way and leaves no child to reap. Two processes may start one each: the
            # second finds the lock taken and exits.
            subprocess.run([sys.executable, "-m", "chargewatch.stores.sqlite_writer", json.dumps(self._spawn)],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=False, timeout=60)
            return False

    # -- the writer, when this process holds the lock -------------------------------------------

    def _start_writer(self) -> bool:
        """Become the writer if no process is; True when a writer now runs here."""
        with self._start_lock:
            if self._server is not None:
                return True
            if self._lock_fd is None:
                try:
                    self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                except OSError as err:
                    raise StorageUnavailable(f"cannot open the writer lock {self._lock_path}: {err}") from err
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process's writer runs (or is starting)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(self._address)
                listener.listen(256)
            except OSError as err:
                listener.close()
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                raise StorageUnavailable(f"cannot start the store's writer: {err}") from err
            self._server = _WriterThread(listener, self._commit)
            self._server.start()
            _RUNNING.add(self)
            return True

    def close(self) -> None:
        """Stop the writer if it runs here (answering what it has read), and close connections."""
        with self._start_lock:
            if self._server is not None:
                self._server.stop()
                self._server = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the writer lock
                self._lock_fd = None
        _close_all(self._open)
        self._local = threading.local()

    def abandon(self) -> None:
        """In a forked child: forget the parent's connections and writer without touching them."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the child's copy only; the parent keeps its lock
        self._lock_fd = None
        if self._server is not None:
            # The parent's writer thread does not exist here; its sockets are the parent's to close.
            _INHERITED.append(self._server)
        self._server = None
        _close_all(self._open)  # the child's copies of the parent's connections
        self._start_lock = threading.Lock()
        self._local = threading.local()


class _Connection:
    """A request thread's connection to the writer, closed when the thread (its only holder) ends."""

    __slots__ = ("sock", "_open")

    def __init__(self, sock: socket.socket, open_set: set[socket.socket]) -> None:
        self.sock = sock
        self._open = open_set
        open_set.add(sock)

    def __del__(self) -> None:
        self._open.discard(self.sock)
        self.sock.close()


def _close_all(sockets: set[socket.socket]) -> None:
    for sock in list(sockets):
        sock.close()
    sockets.clear()


def _error_class(name: str) -> type[StorageUnavailable]:
    """The StorageUnavailable subclass the writer raised (OutboxFull, say), by name."""
    classes = [StorageUnavailable]
    while classes:
        cls = classes.pop()
        if cls.__name__ == name:
            return cls
        classes.extend(cls.__subclasses__())
    return StorageUnavailable


def _receive(sock: socket.socket, size: int) -> bytes:
    data = sock.recv(size, socket.MSG_WAITALL)
    if len(data) < size:
        raise EOFError("connection closed")
    return data


class _WriterThread(threading.Thread):
    def __init__(self, listener: socket.socket, commit: Commit, idle_exit_s: float | None = None) -> None:
        super().__init__(name="chargewatch-sqlite-writer", daemon=True)
        self._idle_exit_s = idle_exit_s
        listener.setblocking(False)
        self._listener = listener
        self._commit = commit
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._buffers: dict[socket.socket, bytearray] = {}
        self._selector = selectors.DefaultSelector()

    def stop(self) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the thread saw the flag between two turns and has ended already
        self.join(timeout=60)
        self._wake_w.close()

    def run(self) -> None:
        sel = self._selector
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        idle_since = time.monotonic()
        try:
            while not self._stopping:
                requests: list[tuple[socket.socket, list[tuple[Any, ...]]]] = []
                if self._idle_exit_s is not None:
                    if self._buffers:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > self._idle_exit_s:
                        break
                for key, _ in sel.select(None if self._idle_exit_s is None else 1.0):
                    if key.data == "accept":
                        self._accept_all(requests)
                    elif key.data == "conn":
                        self._read(cast(socket.socket, key.fileobj), requests)  # a connection we registered
                if requests:
                    self._answer(requests)
            self._finish()
        except BaseException:  # never leave clients waiting for a writer that died
            logger.exception("the SQLite writer thread failed")
            for conn in list(self._buffers):
                self._close(conn)
            raise
        finally:
            sel.close()
            self._listener.close()
            self._wake_r.close()

    def _accept_all(self, requests: list[tuple[socket.socket, list[tuple[Any, ...]]]]) -> None:
        """Accept every queued connection and read what each has sent already, so requests of new
        connections join this commit rather than one per turn."""
        while True:
            try:
                conn = self._accept()
            except BlockingIOError:
                return
            if conn is not None:
                self._read(conn, requests)

    def _accept(self) -> socket.socket | None:
        conn, _ = self._listener.accept()
        _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid != os.getuid():
            logger.warning("refused a writer connection from uid %d", uid)
            conn.close()
            return None
        conn.setblocking(True)  # answers are sent whole; reads use MSG_DONTWAIT
        self._buffers[conn] = bytearray()
        self._selector.register(conn, selectors.EVENT_READ, "conn")
        return conn

    def _read(self, conn: socket.socket, requests: list[tuple[socket.socket, list[tuple[Any, ...]]]]) -> None:
        try:
            data = conn.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        buffer = self._buffers[conn]
        buffer += data
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            if len(buffer) < _HEADER.size + size:
                break
            try:
                rows = marshal.loads(bytes(buffer[_HEADER.size:_HEADER.size + size]))
            except (EOFError, ValueError, TypeError):
                logger.error("dropped a writer connection that sent an unreadable frame")
                self._close(conn)
                return
            del buffer[:_HEADER.size + size]
            requests.append((conn, rows))

    def _answer(self, requests: Sequence[tuple[socket.socket, list[tuple[Any, ...]]]]) -> None:
        try:
            answers: list[tuple[Any, ...]] = [("ok", result) for result in self._commit([rows for _, rows in requests])]
        except StorageUnavailable as err:
            answers = [("error", type(err).__name__, str(err))] * len(requests)
        for (conn, _), answer in zip(requests, answers, strict=True):
            if conn in self._buffers:
                try:
                    conn.sendall(_frame(answer))
                except OSError:
                    self._close(conn)

    def _finish(self) -> None:
        """Stopping in order: answer every complete frame already here, then say goodbye."""
        requests: list[tuple[socket.socket, list[tuple[Any, ...]]]] = []
        self._accept_all(requests)  # connections already queued are answered, not reset
        self._selector.unregister(self._listener)
        self._listener.close()
        for conn in list(self._buffers):
            self._read(conn, requests)
        if requests:
            self._answer(requests)
        for conn in list(self._buffers):
            try:
                conn.sendall(_frame(("goodbye",)))
            except OSError:
                pass
            self._close(conn)

    def _close(self, conn: socket.socket) -> None:
        if self._buffers.pop(conn, None) is not None:
            self._selector.unregister(conn)
        conn.close()


def main(argv: Sequence[str]) -> int:
    """The writer process: ``python -m chargewatch.stores.sqlite_writer '<spec JSON>'``."""
    spec = json.loads(argv[0])
    if os.fork():
        os._exit(0)  # the intermediate: the spawner waits for it, the writer carries on
    module_name, _, class_name = spec["store"].partition(":")
    store_class = getattr(importlib.import_module(module_name), class_name)
    store = store_class(Path(spec["path"]), **{**spec["options"], "writer": "thread"})
    lock_fd = os.open(f"{spec['path']}.writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another writer runs
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(writer_address(Path(spec["path"])))
    listener.listen(256)
    try:
        _WriterThread(listener, store._commit_requests, idle_exit_s=IDLE_EXIT_SECONDS).run()
    finally:
        store.close()
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
