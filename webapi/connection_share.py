"""How many connections each gunicorn worker holds, in memory the workers share.

gunicorn's workers all wait on one listening socket, and whichever wakes first takes a connection
for the connection's whole life. Clients that keep a few connections open (gateways, Telegraf, wrk)
often end up all on one worker while the other idles: measured here, 7 of 8 connections opened at
once landed on one worker in 2 of 5 tries, and under load all 8 did. The workers publish their
counts here, and a worker holding more connections than another lets that one take the next
(see ``GuardedThreadWorker.accept``).

The share is created in gunicorn's arbiter before it forks the workers, so the memory is inherited,
not named: no file to leave behind. Each worker claims a slot when its event loop starts; the slot
of a worker that has exited (killed, say) no longer counts, and the next worker to start claims it.
A count is written only by its slot's owner and read by the others without a lock: it guides which
worker accepts, and a stale read costs at most one connection in the wrong place.
"""

from __future__ import annotations

import multiprocessing
import os

DEFAULT_SLOTS = 64  # more than any worker count the settings allow, or gunicorn's TTIN could reach


class ConnectionShare:
    """Per-worker connection counts in shared memory, keyed by the slot a worker claimed."""

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        context = multiprocessing.get_context("fork")  # gunicorn forks its workers
        self._claiming = context.Lock()
        self._pids = context.RawArray("q", slots)
        self._counts = context.RawArray("q", slots)

    def claim(self, pid: int) -> WorkerSlot | None:
        """A free slot for worker ``pid`` with a count of 0, or None when every slot is taken."""
        with self._claiming:
            for index, owner in enumerate(self._pids):
                if owner == 0 or not _alive(owner):
                    self._counts[index] = 0
                    self._pids[index] = pid
                    return WorkerSlot(self, index)
        return None

    def _publish(self, index: int, connections: int) -> None:
        self._counts[index] = connections

    def _someone_holds_fewer(self, index: int, connections: int) -> bool:
        for other, owner in enumerate(self._pids):
            # Whether the owner still lives is asked only of one that would make this worker yield.
            if owner and other != index and self._counts[other] < connections and _alive(owner):
                return True
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or another user's process took the pid
        return False
    return True


class WorkerSlot:
    """One worker's place in a :class:`ConnectionShare`."""

    def __init__(self, share: ConnectionShare, index: int) -> None:
        self._share = share
        self._index = index

    def publish(self, connections: int) -> None:
        """Tell the other workers how many connections this one holds now."""
        self._share._publish(self._index, connections)

    def holds_more_than_another(self, connections: int) -> bool:
        """Whether another live worker holds fewer than ``connections``."""
        return self._share._someone_holds_fewer(self._index, connections)
