"""The workers' shared connection counts (webapi/connection_share.py), in real shared memory."""

from __future__ import annotations

import os

from webapi.connection_share import ConnectionShare


def test_a_worker_holding_more_connections_than_another_yields_and_one_holding_as_many_does_not() -> None:
    share = ConnectionShare(slots=4)
    first, second = share.claim(os.getpid()), share.claim(os.getppid())  # two live processes
    assert first is not None and second is not None
    first.publish(3)
    second.publish(2)
    assert first.holds_more_than_another(3)
    assert not second.holds_more_than_another(2)
    assert not second.holds_more_than_another(3)  # as many as the fewest elsewhere: its turn


def test_a_lone_worker_never_yields() -> None:
    slot = ConnectionShare(slots=4).claim(os.getpid())
    assert slot is not None
    assert not slot.holds_more_than_another(1000)


def exited_pid() -> int:
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    return child


def test_an_exited_worker_no_longer_counts_and_its_slot_is_claimed_again_with_no_connections() -> None:
    share = ConnectionShare(slots=2)
    survivor, other = share.claim(os.getpid()), share.claim(os.getppid())
    assert survivor is not None and other is not None
    assert share.claim(os.getppid()) is None  # every slot held by a live process: that worker goes unbalanced
    share = ConnectionShare(slots=2)
    survivor, dead = share.claim(os.getpid()), share.claim(exited_pid())
    assert survivor is not None and dead is not None
    dead.publish(0)
    assert not survivor.holds_more_than_another(5)  # the exited one holds 0, but it is gone
    replacement = share.claim(os.getppid())  # takes the exited worker's slot, at 0 connections
    assert replacement is not None
    assert survivor.holds_more_than_another(5)
    assert share.claim(exited_pid()) is None


def test_counts_published_in_a_forked_worker_are_seen_by_the_other() -> None:
    share = ConnectionShare(slots=4)
    parent = share.claim(os.getpid())
    assert parent is not None
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    child = os.fork()
    if child == 0:  # a second worker holding 7 connections, alive until the parent has looked
        slot = share.claim(os.getpid())
        if slot is not None:
            slot.publish(7)
        os.write(ready_w, b"y" if slot is not None else b"n")
        os.read(done_r, 1)
        os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"y"
        assert not parent.holds_more_than_another(7)
        assert parent.holds_more_than_another(8)
    finally:
        os.write(done_w, b".")
        os.waitpid(child, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
    assert not parent.holds_more_than_another(8)  # the child has exited
