"""``chargewatch outbox ...`` and ``chargewatch forward`` in-process on a real SQLite file (the e2e
suite runs them as processes against a live forwarder)."""

from __future__ import annotations

import json

import pytest

from chargewatch.cli import main
from chargewatch.stores.sqlite import SqliteReadingStore


@pytest.fixture
def store(tmp_path, monkeypatch):
    for name in ("CHARGEWATCH_STORE", "CHARGEWATCH_SQLITE__PATH", "CHARGEWATCH_INFLUX__TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHARGEWATCH_DATA_DIR", str(tmp_path))
    store = SqliteReadingStore(tmp_path / "chargewatch.db", outbox_max_rows=1_000_000)
    yield store
    store.close()


@pytest.fixture
def with_dead_letters(store, make_meter, paired):
    store.write([paired(make_meter(meter_id=f"MTR-{i}"), received_ms=1_000) for i in range(3)])
    first, second, _ = store.outbox.oldest(3)
    store.outbox.dead_letter([first], 400, ["unable to parse 'meter,meter_id=MTR-0 ...': invalid field format"], 5_000)
    store.outbox.dead_letter([second], 422, ["partial write: field type conflict dropped=1"], 6_000)
    store.outbox.record_failure("rejected", "unable to parse", 5_000)
    return store


def test_status_shows_depth_lag_dead_letters_and_the_forwarder(with_dead_letters, capsys):
    assert main(["outbox", "status"]) == 0
    out = capsys.readouterr().out
    assert "outbox:       1 readings waiting (bound 5000000), oldest" in out
    assert "dead letters: 2  (chargewatch outbox dead-letters)" in out
    assert "shipped:      0 lines; failed requests: rejected 1" in out
    assert "forwarder:    has never run" in out

    assert main(["outbox", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["depth"] == 1 and status["dead_letters"] == 2 and status["failures"] == {"rejected": 1}
    assert status["oldest_created_at"] == "1970-01-01T00:00:01.000+00:00"
    assert status["lag_seconds"] > 0


def test_dead_letters_are_listed_with_their_errors(with_dead_letters, capsys):
    assert main(["outbox", "dead-letters"]) == 0
    out = capsys.readouterr().out
    assert "#1  1970-01-01T00:00:05.000+00:00  HTTP 400  unable to parse" in out
    assert "    meter,meter_id=MTR-0 " in out
    assert "#2  1970-01-01T00:00:06.000+00:00  HTTP 422  partial write" in out

    assert main(["outbox", "dead-letters", "--json", "--limit", "1"]) == 0
    (letter,) = json.loads(capsys.readouterr().out)
    assert (letter["id"], letter["status"], letter["failed_at"]) == (1, 400, "1970-01-01T00:00:05.000+00:00")


def test_dead_letters_are_requeued_or_purged_by_id_or_all(with_dead_letters, capsys):
    assert main(["outbox", "dead-letters", "--requeue", "2"]) == 0
    assert "requeued 1 dead letter(s)" in capsys.readouterr().out
    assert with_dead_letters.outbox.depth(exact=True) == 2
    assert main(["outbox", "dead-letters", "--purge", "all"]) == 0
    assert "purged 1 dead letter(s)" in capsys.readouterr().out
    assert main(["outbox", "dead-letters"]) == 0
    assert capsys.readouterr().out == "no dead letters\n"


def test_requeue_takes_only_ids_or_all(store, capsys):
    with pytest.raises(SystemExit):
        main(["outbox", "dead-letters", "--requeue", "some"])
    assert "is not 'all' or comma-separated dead-letter ids" in capsys.readouterr().err


def test_forward_refuses_to_start_outside_influx_mode_or_without_a_token(store, monkeypatch):
    with pytest.raises(SystemExit, match="set CHARGEWATCH_STORE=influx"):
        main(["forward"])
    monkeypatch.setenv("CHARGEWATCH_STORE", "influx")
    with pytest.raises(SystemExit, match="CHARGEWATCH_INFLUX__TOKEN is not set"):
        main(["forward"])
