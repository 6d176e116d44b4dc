"""One-instance locks: a process that must run at most once per data directory holds an ``flock``
on a lock file for its lifetime (the kernel releases it when the process dies, even by kill -9)."""

from __future__ import annotations

import fcntl
import os
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
