"""The forwarder against the stand-in InfluxDB over real HTTP on 127.0.0.1, with the outbox in a real
SQLite file, for what a real influxd cannot be made to produce (each test says which), plus the
parts that need no InfluxDB at all (the poll and heartbeat, Retry-After parsing, the lock).

Everything a real engine does produce (the stored points, batching, a stopped or hanging influxd, a
400 naming unparsable lines, a 422 for points beyond retention or a field type conflict, 401, 403,
a missing org or bucket, the run loop) is in tests/live/test_forwarder_engine_live.py.

Delays are asserted, not slept: ``Forwarder.step()`` returns the wait before the next step."""

from __future__ import annotations

import os

import pytest

from chargewatch.influx.forwarder import (
    Forwarder,
    ForwarderBusy,
    InfluxWriteClient,
    WriteOutcome,
    _retry_after_seconds,
    hold_forwarder_lock,
)
from chargewatch.stores.outbox import reading_line
from chargewatch.stores.sqlite import SqliteReadingStore
from tests.conftest import build_meter, build_paired
from tests.influx_standin import InfluxStandin, StandinRequest, StandinResponse


class Clock:
    def __init__(self, now: float = 2_000_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def standin():
    with InfluxStandin() as server:
        yield server


@pytest.fixture
def store(tmp_path):
    store = SqliteReadingStore(tmp_path / "chargewatch.db", outbox_max_rows=1_000_000)
    yield store
    store.close()


@pytest.fixture
def make_forwarder(store, standin):
    clients: list[InfluxWriteClient] = []

    def make(token: str | None = None, timeout_seconds: float = 2.0, **options) -> Forwarder:
        client = InfluxWriteClient(standin.url, standin.org, "telemetry", token or standin.token,
                                   timeout_seconds=timeout_seconds)
        clients.append(client)
        return build_forwarder(store.outbox, client, **options)

    yield make
    for client in clients:
        client.close()


def build_forwarder(outbox, client, **options) -> Forwarder:
    """A forwarder with test-sized batches and waits and no jitter; ``options`` override them."""
    settings = {"batch_max_lines": 100, "batch_max_wait_seconds": 0.0, "backoff_base_seconds": 1.0,
                "backoff_max_seconds": 8.0, "config_error_retry_seconds": 30.0, "jitter": lambda: 1.0, **options}
    return Forwarder(outbox, client, **settings)


def queue(store: SqliteReadingStore, count: int, prefix: str = "MTR-", received_ms: int = 0,
          **overrides) -> list[str]:
    """Store ``count`` new meter readings (one per meter, ``overrides`` their fields); returns their lines."""
    readings = [build_paired(build_meter(meter_id=f"{prefix}{i}", **overrides), received_ms=received_ms)
                for i in range(count)]
    store.write(readings)
    return [reading_line(r) for r in readings]


def drain(forwarder: Forwarder, limit: int = 1000) -> list[float]:
    """Step until the outbox is empty; returns the delays asked for on the way."""
    delays: list[float] = []
    while forwarder.outbox.depth(exact=True) and len(delays) < limit:
        delays.append(forwarder.step())
    return delays


def meter_ids(standin: InfluxStandin) -> set[str]:
    return {dict(tags)["meter_id"] for _, tags, _ in standin.series_times("meter")}


def test_the_body_is_gzip_line_protocol_with_millisecond_precision_and_the_token(store, standin, make_forwarder):
    """Stand-in: a real influxd stores what arrives but does not show the request as sent."""
    seen: list[StandinRequest] = []
    write = standin.routes[("POST", "/api/v2/write")]

    def spy(request: StandinRequest) -> StandinResponse:
        seen.append(request)
        return write(request)

    standin.add_route("POST", "/api/v2/write", spy)
    lines = queue(store, 3)
    drain(make_forwarder())

    (request,) = seen
    assert request.query == {"org": "chargewatch", "bucket": "telemetry", "precision": "ms"}
    assert request.headers["authorization"] == "Token standin-token"
    assert request.headers["content-encoding"] == "gzip"
    assert request.body().decode().split("\n") == lines


def test_an_empty_outbox_is_polled_and_a_heartbeat_recorded(store, make_forwarder):
    clock = Clock()
    forwarder = make_forwarder(poll_seconds=0.25, clock=clock)
    assert forwarder.step() == 0.25
    assert store.outbox.stats().heartbeat_ms == int(clock.now * 1000)


def test_jitter_spreads_the_backoff_between_half_and_the_whole_delay(store, standin, make_forwarder):
    """Stand-in: any transient failure will do; the 500 is the one that answers at once."""
    queue(store, 1)
    standin.outage("500")
    low = make_forwarder(jitter=lambda: 0.0)
    assert [low.step() for _ in range(3)] == [0.5, 1.0, 2.0]


def test_500_is_retried_and_the_resend_is_an_identical_rewrite_at_worst(store, standin, make_forwarder):
    """Stand-in: influxd answers 500 only for an internal fault (e.g. a storage engine timeout),
    which cannot be caused from outside."""
    queue(store, 4)
    forwarder = make_forwarder()
    standin.outage("500")
    assert forwarder.step() == 1.0
    assert store.outbox.stats().failures == {"server_error": 1}
    standin.recover()
    assert forwarder.step() == 0.0
    assert len(standin.points) == 4


@pytest.mark.parametrize("status", ["503", "429"])
def test_retry_after_is_honoured_up_to_the_backoff_ceiling(store, standin, make_forwarder, status):
    """Stand-in: 429 and 503 with Retry-After are what InfluxDB Cloud sends when it throttles; OSS
    2.7 has no write limits and sends neither."""
    queue(store, 2)
    forwarder = make_forwarder(backoff_base_seconds=1.0, backoff_max_seconds=30.0)
    standin.outage(status, retry_after=7)
    assert forwarder.step() == 7.0
    standin.outage(status, retry_after=600)
    assert forwarder.step() == 30.0
    assert store.outbox.stats().failures == {("throttled" if status == "429" else "server_error"): 2}
    assert store.outbox.depth(exact=True) == 2


def test_retry_after_may_be_an_http_date():
    assert _retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: at once
    assert _retry_after_seconds("12") == 12.0
    assert _retry_after_seconds("soon") is None


def test_a_400_whose_lines_cannot_be_matched_is_bisected_down_to_the_bad_line(store, standin, make_forwarder):
    """Stand-in: a real influxd quotes every refused line exactly as sent, so the mismatch this
    fallback exists for (a proxy or another version rewriting the message) never happens there."""
    queue(store, 16)

    def mangled(request: StandinRequest) -> StandinResponse:  # names the line, but not as sent
        if b"MTR-5 " in request.body():
            return StandinResponse.error(400, "invalid", "unable to parse 'meter,meter_id=MTR-5 kwh...': bad")
        return write(request)

    write = standin.routes[("POST", "/api/v2/write")]
    standin.add_route("POST", "/api/v2/write", mangled)

    drain(make_forwarder())

    assert meter_ids(standin) == {f"MTR-{i}" for i in range(16)} - {"MTR-5"}
    (letter,) = store.outbox.dead_letters()
    assert "MTR-5 " in letter.line and letter.status == 400
    assert standin.changed_rewrites == standin.identical_rewrites == 0  # a 400 wrote nothing: no rewrites


def test_a_transient_failure_in_the_middle_of_a_bisect_keeps_the_unsettled_rows(store, standin, make_forwarder):
    """Stand-in: a 500 on exactly the third request of a bisect cannot be timed on a real engine."""
    queue(store, 8)
    standin.drop_line = lambda line: "dropped" if line.tags["meter_id"] == "MTR-6" else None
    calls = []
    write = standin.routes[("POST", "/api/v2/write")]

    def fail_third(request: StandinRequest) -> StandinResponse:
        calls.append(1)
        if len(calls) == 3:
            return StandinResponse.error(500, "internal error", "engine: timeout")
        return write(request)

    standin.add_route("POST", "/api/v2/write", fail_third)
    forwarder = make_forwarder()

    assert forwarder.step() == 1.0  # 422 (8 lines), 204 (first half), 500 (second half)
    assert store.outbox.depth(exact=True) == 4
    drain(forwarder)
    assert meter_ids(standin) == {f"MTR-{i}" for i in range(8)} - {"MTR-6"}
    assert len(store.outbox.dead_letters()) == 1


def test_413_halves_the_batch_without_dead_letters(store, standin, make_forwarder):
    """Stand-in: influxd 2.7.12 has no body-size limit to configure (it took an 8.9 MB body); a 413
    comes from a reverse proxy or a hosted InfluxDB in front of it."""
    queue(store, 8)
    write = standin.routes[("POST", "/api/v2/write")]
    standin.add_route("POST", "/api/v2/write", lambda request: (
        StandinResponse.error(413, "request too large", "unable to read data: points batch is too large")
        if request.body().count(b"\n") >= 3 else write(request)))

    drain(make_forwarder())

    assert len(standin.points) == 8 and store.outbox.dead_letters() == []


def test_only_one_forwarder_ships_an_outbox(tmp_path):
    fd = hold_forwarder_lock(tmp_path / "chargewatch.db")
    try:
        with pytest.raises(ForwarderBusy):
            hold_forwarder_lock(tmp_path / "chargewatch.db")
    finally:
        os.close(fd)
    os.close(hold_forwarder_lock(tmp_path / "chargewatch.db"))  # free again once released


def test_write_outcome_accepts_only_2xx():
    assert WriteOutcome(204).accepted and not WriteOutcome(None, "refused").accepted
    assert not WriteOutcome(422, "partial write").accepted

