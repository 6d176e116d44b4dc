"""Pacing deliveries: real and scaled time on a fake clock, backfill batches, and the spans each mode covers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import pytest

from chargewatch.readings import AnyReading
from simulator.cli import configure, duration_seconds, simulated_span
from simulator.devices import Courier, DeliveryFaults, Fleet, FleetConfig, GroundTruth, stream_deliveries
from simulator.modes import run_backfill, run_realtime

START = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


class FakeClock:
    """Monotonic seconds that move only when the code under test sleeps."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.seconds += seconds


def _fleet_stream(hours: float, faults: DeliveryFaults, pairs: int = 3):
    fleet = Fleet(FleetConfig(pairs=pairs, seed=2), START)
    truth = GroundTruth(fleet, keep_readings=True)
    end = START + timedelta(hours=hours)
    return stream_deliveries(fleet, Courier(faults, seed=2), end, truth), truth, end


@pytest.mark.parametrize("speed", [1.0, 60.0])
def test_realtime_sends_each_reading_when_simulated_time_reaches_its_due_time(speed: float) -> None:
    deliveries, truth, end = _fleet_stream(0.5, DeliveryFaults.none())
    clock = FakeClock()
    sent_at: list[tuple[datetime, AnyReading]] = []

    def send(reading) -> None:
        sent_at.append((START + timedelta(seconds=clock() * speed), reading))

    timing = run_realtime(deliveries, send, truth, simulated_start=START, simulated_end=end, speed=speed,
                          concurrency=1, clock=clock, sleep=clock.sleep)
    assert len(sent_at) == 3 * 2 * 30
    due = {d.generated.key: d.due for d in truth.sent}
    for moment, reading in sent_at:
        assert timedelta(0) <= moment - due[(reading.device_id, reading.time_ms)] < timedelta(milliseconds=1)
    assert clock() == pytest.approx((truth.sent[-1].due - START).total_seconds() / speed, abs=1e-6)
    assert timing.max_lag_seconds < 1e-6


def test_realtime_sends_what_is_due_after_the_end_at_once() -> None:
    deliveries, truth, end = _fleet_stream(0.25, DeliveryFaults(loss_rate=0, duplicate_rate=0, late_rate=0.5))
    clock = FakeClock()
    sent: list[AnyReading] = []
    run_realtime(deliveries, sent.append, truth, simulated_start=START, simulated_end=end, speed=10.0,
                 concurrency=1, clock=clock, sleep=clock.sleep)
    assert any(d.due > end for d in truth.sent)  # late readings of the last minutes
    assert clock() <= (end - START).total_seconds() / 10.0
    assert len(sent) == len(truth.readings)


def test_backfill_sends_everything_in_send_order_as_lists() -> None:
    deliveries, truth, _ = _fleet_stream(2, DeliveryFaults())
    batches: list[Sequence[AnyReading]] = []
    run_backfill(deliveries, batches.append, truth, batch_size=100, concurrency=1)
    assert all(1 <= len(batch) <= 100 for batch in batches) and len(batches[0]) == 100
    assert [r for batch in batches for r in batch] == [d.reading for d in truth.sent]
    distinct = {(r.device_id, r.time_ms) for batch in batches for r in batch}
    assert distinct == {g.key for g in truth.readings if truth.fates[g.key].value != "lost"}


def test_backfill_with_several_threads_sends_every_batch() -> None:
    deliveries, truth, _ = _fleet_stream(2, DeliveryFaults())
    batches: list[Sequence[AnyReading]] = []
    run_backfill(deliveries, batches.append, truth, batch_size=50, concurrency=4)
    assert sorted(id(r) for batch in batches for r in batch) == sorted(id(d.reading) for d in truth.sent)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv)


NOW = datetime(2026, 11, 23, 6, 30, 15, 123456, tzinfo=timezone.utc)


def test_backfill_covers_the_hours_before_now_and_never_reaches_the_future() -> None:
    start, end, _ = simulated_span(_args("backfill", "--hours", "24"), NOW, retention_days=30)
    assert end - start == timedelta(hours=24)
    # A step's readings are stamped up to 60 s (phase) + 30 s (clock drift) after the step.
    assert end + timedelta(seconds=90) <= NOW
    assert NOW - end < timedelta(minutes=2)


def test_backfill_longer_than_retention_is_refused() -> None:
    with pytest.raises(SystemExit, match="retention"):
        simulated_span(_args("backfill", "--hours", str(30 * 24)), NOW, retention_days=30)


def test_accelerated_replays_speed_times_duration_ending_now() -> None:
    start, end, speed = simulated_span(_args("accelerated", "--speed", "120", "--duration", "30s"), NOW, 30)
    assert speed == 120 and end - start == timedelta(hours=1)
    assert end + timedelta(seconds=90) <= NOW


def test_live_starts_now_and_runs_until_stopped_unless_given_a_duration() -> None:
    start, end, speed = simulated_span(_args("live", "--duration", "10m"), NOW, 30)
    assert (start, end - start, speed) == (NOW.replace(microsecond=0), timedelta(minutes=10), 1.0)
    _, forever, _ = simulated_span(_args("live"), NOW, 30)
    assert forever - NOW > timedelta(days=365)


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("1d", 86400)])
def test_durations_are_read_with_units(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5s", "10 minutes", "1w"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration_seconds(text)
