"""The workers' shared connection counts (webapi/connection_share.py), in real shared memory."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from chargewatch.cli import gunicorn_options
from chargewatch.settings import Settings
from webapi.connection_share import ConnectionShare


def test_a_worker_holding_more_connections_than_another_yields_and_one_holding_as_many_does_not() -> None:
    share = ConnectionShare(slots=4)
    first, second = share.claim(101), share.claim(102)
    assert first is not None and second is not None
    first.publish(3)
    second.publish(2)
    assert first.holds_more_than_another(3)
    assert not second.holds_more_than_another(2)
    assert not second.holds_more_than_another(3)  # as many as the fewest elsewhere: its turn


def test_a_lone_worker_never_yields() -> None:
    slot = ConnectionShare(slots=4).claim(101)
    assert slot is not None
    assert not slot.holds_more_than_another(1000)


def test_a_released_worker_no_longer_counts_and_its_slot_is_claimed_again_with_no_connections() -> None:
    share = ConnectionShare(slots=2)
    survivor, dead = share.claim(101), share.claim(102)
    assert survivor is not None and dead is not None
    assert share.claim(103) is None  # every slot taken: that worker goes unbalanced
    survivor.publish(5)
    dead.publish(0)
    assert survivor.holds_more_than_another(5)
    share.release(102)
    assert not survivor.holds_more_than_another(5)
    replacement = share.claim(103)
    assert replacement is not None
    assert survivor.holds_more_than_another(5)  # the replacement starts at 0 connections


def test_counts_published_in_a_forked_worker_are_seen_by_the_other() -> None:
    share = ConnectionShare(slots=4)
    parent = share.claim(os.getpid())
    assert parent is not None
    parent.publish(1)
    child = os.fork()
    if child == 0:  # the child plays a second worker holding 7 connections
        slot = share.claim(os.getpid())
        if slot is not None:
            slot.publish(7)
        os._exit(0 if slot is not None else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not parent.holds_more_than_another(1)
    assert parent.holds_more_than_another(8)


def test_the_arbiters_child_exit_hook_releases_the_exited_workers_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # the hook also retires its metric files
    options = gunicorn_options(Settings(data_dir=tmp_path), "ingest", None, None)
    share = options["worker_class"].connection_share
    survivor, dead = share.claim(201), share.claim(202)
    dead.publish(0)
    assert survivor.holds_more_than_another(1)
    options["child_exit"](SimpleNamespace(), SimpleNamespace(pid=202, connection_share=share))
    assert not survivor.holds_more_than_another(1)
