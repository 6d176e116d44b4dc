"""One-instance locks: a process that must run at most once per data directory holds an ``flock``
on a lock file for its lifetime (the kernel releases it when the process dies, even by kill -9)."""

from __future__ import annotations

import fcntl
import os
import select
import signal
from collections.abc import Callable
from pathlib import Path


class AlreadyRunning(RuntimeError):
    """Another process holds the lock."""


def hold_instance_lock(lock_path: Path, busy: AlreadyRunning) -> int:
    """Take the lock or raise ``busy``; returns the descriptor to keep open (it holds our PID)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise busy from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class StopRequest:
    """Set by SIGINT and SIGTERM, waited on by any thread: ``set``, ``is_set`` and ``wait(timeout)`` as
    ``threading.Event`` has them, without its lock. A signal handler runs in the main thread between
    two bytecodes, possibly while that thread holds the Event's lock inside ``wait``; the handler's
    ``set`` then waits for that lock forever (``chargewatch run`` hung on Ctrl-C that way). Here
    ``set`` only assigns a flag and writes a byte to a pipe, which every ``wait`` selects on (the
    byte is never read, so the pipe stays readable for every waiter)."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._set = False

    def set(self) -> None:
        self._set = True
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:  # the pipe already holds a byte
            pass

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if not self._set:
            select.select([self._read], [], [], timeout)
        return self._set


def run_once_in_foreground(hold_lock: Callable[[], int]) -> tuple[int, StopRequest]:
    """Take a one-instance lock (exit with its message when another process holds it) and return
    it with a stop request that SIGINT and SIGTERM set."""
    try:
        lock = hold_lock()
    except AlreadyRunning as err:
        raise SystemExit(f"chargewatch: {err}") from None
    stopping = StopRequest()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    return lock, stopping
