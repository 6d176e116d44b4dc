"""How many connections each gunicorn worker holds, in memory the workers share.

gunicorn's workers all wait on one listening socket, and whichever wakes first takes a connection
for the connection's whole life. Clients that keep a few connections open (gateways, Telegraf, wrk)
often end up all on one worker while the other idles: measured here, 7 of 8 connections opened at
once landed on one worker in 2 of 5 tries, and under load all 8 did. The workers publish their
counts here, and a worker holding more connections than another lets that one take the next
(see ``GuardedThreadWorker.accept``).

The arbiter creates the share before it forks the workers, so the memory is inherited, not named:
no file to leave behind. Each worker claims a slot when it starts; the arbiter releases a dead
worker's slot. A count is written only by its slot's owner, and read by the others without a lock:
it guides which worker accepts, and a stale read costs at most one connection in the wrong place.
"""

from __future__ import annotations

import multiprocessing

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
                if owner == 0:
                    self._counts[index] = 0
                    self._pids[index] = pid
                    return WorkerSlot(self, index)
        return None

    def release(self, pid: int) -> None:
        """Forget worker ``pid`` (it has exited): its slot no longer counts and may be claimed again."""
        with self._claiming:
            for slot, owner in enumerate(self._pids):
                if owner == pid:
                    self._pids[slot] = 0
                    self._counts[slot] = 0

    def _publish(self, index: int, connections: int) -> None:
        self._counts[index] = connections

    def _fewest_besides(self, index: int) -> int | None:
        fewest = None
        for other, owner in enumerate(self._pids):
            if owner and other != index:
                count = self._counts[other]
                if fewest is None or count < fewest:
                    fewest = count
        return fewest


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
        fewest = self._share._fewest_besides(self._index)
        return fewest is not None and connections > fewest
