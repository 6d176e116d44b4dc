"""One-instance locks: a process that must run at most once per data directory holds an ``flock``
on a lock file for its lifetime (the kernel releases it when the process dies, even by kill -9)."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from pathlib import Path
from typing import Callable


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


def run_once_in_foreground(hold_lock: Callable[[], int]) -> tuple[int, threading.Event]:
    """Take a one-instance lock (exit with its message when another process holds it) and return
    it with an event that SIGINT and SIGTERM set."""
    try:
        lock = hold_lock()
    except AlreadyRunning as err:
        raise SystemExit(f"chargewatch: {err}") from None
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    return lock, stopping
