"""The forwarder against the stand-in InfluxDB over real HTTP on 127.0.0.1, with the outbox in a real
SQLite file: what it deletes, what it keeps, what it dead-letters, and how long it waits.

Delays are asserted, not slept: ``Forwarder.step()`` returns the wait before the next step."""

from __future__ import annotations

import os
import threading
import time

import pytest

from chargewatch.influx.forwarder import (
    Forwarder, ForwarderBusy, InfluxWriteClient, WriteOutcome, _retry_after_seconds, hold_forwarder_lock,
)
from chargewatch.stores.influx import InfluxReadingStore, reading_line
from tests.conftest import READING_TIME, build_meter, build_paired, build_vehicle
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
    store = InfluxReadingStore(tmp_path / "chargewatch.db")
    yield store
    store.close()


@pytest.fixture
def make_forwarder(store, standin):
    clients: list[InfluxWriteClient] = []

    def make(token: str | None = None, timeout_seconds: float = 2.0, **options) -> Forwarder:
        client = InfluxWriteClient(standin.url, standin.org, "telemetry", token or standin.token,
                                   timeout_seconds=timeout_seconds)
        clients.append(client)
        settings = {"batch_max_lines": 100, "batch_max_wait_seconds": 0.0, "backoff_base_seconds": 1.0,
                    "backoff_max_seconds": 8.0, "config_error_retry_seconds": 30.0, "jitter": lambda: 1.0,
                    **options}
        return Forwarder(store.outbox, client, **settings)

    yield make
    for client in clients:
        client.close()


def queue(store: InfluxReadingStore, count: int, prefix: str = "MTR-", received_ms: int = 0) -> list[str]:
    """Store ``count`` new meter readings (one per meter); returns their lines."""
    readings = [build_paired(build_meter(meter_id=f"{prefix}{i}"), received_ms=received_ms) for i in range(count)]
    store.write(readings)
    return [reading_line(r) for r in readings]


def drain(forwarder: Forwarder, limit: int = 1000) -> list[float]:
    """Step until the outbox is empty; returns the delays asked for on the way."""
    delays = []
    while forwarder.outbox.depth(exact=True) and len(delays) < limit:
        delays.append(forwarder.step())
    return delays


def meter_ids(standin: InfluxStandin) -> set[str]:
    return {dict(tags)["meter_id"] for _, tags, _ in standin.series_times("meter")}


# -- shipping --------------------------------------------------------------------------------------

def test_the_reading_arrives_as_influxdb_would_store_it(store, standin, make_forwarder):
    meter = build_paired(build_meter(meter_id="MTR-101", kwh_consumed_ac=1, voltage=400), vehicle_id="EV-101")
    vehicle = build_paired(build_vehicle(vehicle_id="EV-101", soc=50), meter_id="MTR-101")
    store.write([meter, vehicle])

    assert drain(make_forwarder()) == [0.0]

    time_ns = int(READING_TIME.timestamp()) * 1_000_000_000
    tags = (("meter_id", "MTR-101"), ("vehicle_id", "EV-101"))
    assert standin.points == {
        ("meter", tags, time_ns): {"kwh_consumed_ac": 1.0, "voltage": 400.0},
        ("vehicle", tags, time_ns): {"soc": 50.0, "kwh_delivered_dc": 1.1, "battery_temp": 28.5},
    }
    assert standin.field_types[("meter", "voltage")] == "float"
    assert store.outbox.depth(exact=True) == 0
    stats = store.outbox.stats()
    assert (stats.shipped_total, stats.forwarder_state, stats.failures) == (2, "shipping", {})


def test_the_body_is_gzip_line_protocol_with_millisecond_precision_and_the_token(store, standin, make_forwarder):
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


def test_batches_are_bounded_by_lines_and_ship_oldest_first(store, standin, make_forwarder):
    lines = queue(store, 250)
    forwarder = make_forwarder(batch_max_lines=100)

    forwarder.step()
    assert [row.line for row in store.outbox.oldest(1)] == [lines[100]]
    drain(forwarder)

    assert [(w.status, w.lines) for w in standin.writes] == [(204, 100), (204, 100), (204, 50)]
    assert len(standin.points) == 250


def test_a_partial_batch_waits_until_its_oldest_line_has_waited_the_maximum(store, standin, make_forwarder):
    clock = Clock()
    queue(store, 5, received_ms=int(clock.now * 1000))
    forwarder = make_forwarder(batch_max_lines=100, batch_max_wait_seconds=1.0, poll_seconds=0.2, clock=clock)

    assert forwarder.step() == pytest.approx(0.2)
    clock.now += 0.9
    assert forwarder.step() == pytest.approx(0.1)
    assert standin.writes == []
    clock.now += 0.1
    assert forwarder.step() == 0.0
    assert [w.lines for w in standin.writes] == [5]


def test_an_empty_outbox_is_polled_and_a_heartbeat_recorded(store, make_forwarder):
    clock = Clock()
    forwarder = make_forwarder(poll_seconds=0.25, clock=clock)
    assert forwarder.step() == 0.25
    assert store.outbox.stats().heartbeat_ms == int(clock.now * 1000)


# -- transient failures ------------------------------------------------------------------------------

def test_while_influxdb_refuses_connections_rows_are_kept_and_retries_back_off_exponentially(
    store, standin, make_forwarder
):
    queue(store, 10)
    forwarder = make_forwarder(backoff_base_seconds=1.0, backoff_max_seconds=8.0)
    standin.outage("refuse")

    delays = [forwarder.step() for _ in range(6)]

    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # jitter pinned to its top; capped at the maximum
    assert store.outbox.depth(exact=True) == 10
    stats = store.outbox.stats()
    assert stats.failures == {"connection": 6}
    assert stats.forwarder_state == "retrying"
    assert "Connection refused" in stats.last_error

    standin.recover()
    assert forwarder.step() == 0.0
    assert len(standin.points) == 10 and forwarder.failures == 0
    assert store.outbox.stats().forwarder_state == "shipping"


def test_jitter_spreads_the_backoff_between_half_and_the_whole_delay(store, standin, make_forwarder):
    queue(store, 1)
    standin.outage("500")
    low = make_forwarder(jitter=lambda: 0.0)
    assert [low.step() for _ in range(3)] == [0.5, 1.0, 2.0]


def test_500_is_retried_and_the_resend_is_an_identical_rewrite_at_worst(store, standin, make_forwarder):
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


def test_a_hanging_influxdb_times_out_and_the_late_write_makes_the_resend_an_identical_rewrite(
    store, standin, make_forwarder
):
    queue(store, 3)
    forwarder = make_forwarder(timeout_seconds=0.3)
    standin.outage("hang")

    assert forwarder.step() == 1.0
    assert store.outbox.stats().failures == {"timeout": 1}
    standin.recover()  # the hung request is processed now: its points are written, unacknowledged
    assert forwarder.step() == 0.0

    _wait_for(lambda: standin.points_received == 6)
    assert len(standin.points) == 3
    assert (standin.identical_rewrites, standin.changed_rewrites) == (3, 0)


# -- 400: the whole request refused ------------------------------------------------------------------

def test_lines_a_400_names_are_dead_lettered_and_the_rest_ships_behind_them(store, standin, make_forwarder):
    queue(store, 50)
    standin.reject_line = lambda line: "invalid field format" if line.tags["meter_id"] in ("MTR-7", "MTR-30") else None

    assert drain(make_forwarder()) == [0.0]

    assert [w.status for w in standin.writes] == [400, 204]  # named lines: no bisecting needed
    assert meter_ids(standin) == {f"MTR-{i}" for i in range(50)} - {"MTR-7", "MTR-30"}
    letters = store.outbox.dead_letters()
    assert [(d.status, "MTR-7" in d.line) for d in letters] == [(400, True), (400, False)]
    assert letters[0].error.startswith("unable to parse 'meter,meter_id=MTR-7 ")
    assert letters[0].error.endswith("': invalid field format")
    assert store.outbox.stats().failures == {"rejected": 1}


def test_a_400_whose_lines_cannot_be_matched_is_bisected_down_to_the_bad_line(store, standin, make_forwarder):
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


def test_a_400_about_the_request_not_a_line_stops_shipping_and_keeps_every_row(store, standin, make_forwarder):
    queue(store, 5)
    standin.add_route("POST", "/api/v2/write", lambda request: StandinResponse.error(
        400, "invalid", "invalid precision; valid precision units are ns, us, ms, and s"))

    assert make_forwarder(config_error_retry_seconds=45).step() == 45
    assert store.outbox.depth(exact=True) == 5 and store.outbox.dead_letters() == []
    stats = store.outbox.stats()
    assert (stats.forwarder_state, stats.failures) == ("config_error", {"bad_request": 1})


# -- 422: a partial write --------------------------------------------------------------------------

def test_a_422_is_bisected_so_only_the_dropped_line_is_dead_and_the_rest_is_rewritten_identically(
    store, standin, make_forwarder
):
    queue(store, 32)
    standin.drop_line = lambda line: ('field type conflict: input field "voltage" on measurement "meter" is type '
                                      'string, already exists as type float') if line.tags["meter_id"] == "MTR-21" else None

    assert drain(make_forwarder()) == [0.0]

    assert meter_ids(standin) == {f"MTR-{i}" for i in range(32)} - {"MTR-21"}
    (letter,) = store.outbox.dead_letters()
    assert "MTR-21 " in letter.line and letter.status == 422
    assert "partial write: field type conflict" in letter.error and letter.error.endswith("dropped=1")
    assert standin.changed_rewrites == 0 and standin.identical_rewrites > 0  # re-sent halves only rewrote
    assert store.outbox.depth(exact=True) == 0
    assert store.outbox.stats().failures["partial_write"] == 1 + 5  # the batch, then one per level of 32


def test_when_a_422_dropped_every_line_they_are_dead_lettered_without_bisecting(store, standin, make_forwarder):
    queue(store, 20)
    standin.field_types[("meter", "voltage")] = "integer"  # the field was first written as an int

    drain(make_forwarder())

    assert [w.status for w in standin.writes] == [422]
    letters = store.outbox.dead_letters()
    assert len(letters) == 20
    assert 'input field "voltage" on measurement "meter" is type float, already exists as type integer' in letters[0].error


def test_dead_letters_do_not_block_the_queue(store, standin, make_forwarder):
    queue(store, 10, prefix="A-")
    standin.drop_line = lambda line: "outside retention" if line.tags["meter_id"] == "A-0" else None
    forwarder = make_forwarder(batch_max_lines=5)
    forwarder.step()
    queue(store, 10, prefix="B-")
    drain(forwarder)
    assert len(standin.points) == 19
    assert len(store.outbox.dead_letters()) == 1


def test_a_transient_failure_in_the_middle_of_a_bisect_keeps_the_unsettled_rows(store, standin, make_forwarder):
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
    queue(store, 8)
    write = standin.routes[("POST", "/api/v2/write")]
    standin.add_route("POST", "/api/v2/write", lambda request: (
        StandinResponse.error(413, "request too large", "unable to read data: points batch is too large")
        if request.body().count(b"\n") >= 3 else write(request)))

    drain(make_forwarder())

    assert len(standin.points) == 8 and store.outbox.dead_letters() == []


# -- configuration errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("problem, reason", [("token", "unauthorized"), ("bucket", "not_found"), ("org", "not_found")])
def test_a_configuration_error_keeps_every_row_and_retries_slowly(store, standin, make_forwarder, problem, reason):
    queue(store, 5)
    if problem == "token":
        forwarder = make_forwarder(token="wrong", config_error_retry_seconds=60)
    else:
        forwarder = make_forwarder(config_error_retry_seconds=60)
        forwarder.client.params[problem] = "missing"

    assert [forwarder.step() for _ in range(2)] == [60, 60]

    assert store.outbox.depth(exact=True) == 5 and store.outbox.dead_letters() == []
    stats = store.outbox.stats()
    assert stats.forwarder_state == "config_error"
    assert stats.failures == {reason: 2}
    assert standin.points == {}


def test_403_is_a_configuration_error_too(store, standin, make_forwarder):
    queue(store, 1)
    standin.add_route("POST", "/api/v2/write", lambda request: StandinResponse.error(
        403, "forbidden", "insufficient permissions for write"))
    assert make_forwarder(config_error_retry_seconds=20).step() == 20
    assert store.outbox.stats().failures == {"forbidden": 1}


def test_shipping_resumes_once_the_configuration_is_fixed(store, standin, make_forwarder):
    queue(store, 3)
    forwarder = make_forwarder(token="wrong")
    forwarder.step()
    forwarder.client.session.headers["Authorization"] = f"Token {standin.token}"
    assert forwarder.step() == 0.0
    assert len(standin.points) == 3
    assert store.outbox.stats().forwarder_state == "shipping"


# -- the process ----------------------------------------------------------------------------------

def test_run_ships_until_stopped_and_records_the_stop(store, standin, make_forwarder):
    queue(store, 30)
    stopping = threading.Event()
    forwarder = make_forwarder(poll_seconds=0.01)
    thread = threading.Thread(target=forwarder.run, args=(stopping.wait,))
    thread.start()
    try:
        _wait_for(lambda: len(standin.points) == 30)
    finally:
        stopping.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert store.outbox.stats().forwarder_state == "stopped"


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


def _wait_for(condition, timeout_seconds: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
