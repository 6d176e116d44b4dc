"""How deliveries reach the sender: in real (or scaled) time, or all at once as a backfill.

Both take the delivery stream of :func:`simulator.devices.stream_deliveries` and a send function,
and record each delivery in the ground truth when it is handed over. Time is injected (``clock``
and ``sleep``) so a test can run an hour of real time in an instant.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta

from chargewatch.readings import AnyReading
from simulator.devices import Delivery, GroundTruth
from simulator.progress import ProgressBar

MAX_SLEEP_SECONDS = 0.5  # wake up this often to redraw progress and notice Ctrl-C


class _Dispatcher:
    """Runs sends on a pool of threads, at most ``2 * concurrency`` outstanding (inline for 1).

    The first exception a send raises (SendRefused) is re-raised to the caller at the next submit.
    """

    def __init__(self, concurrency: int) -> None:
        self._limit = 2 * concurrency
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="sender") if concurrency > 1 else None
        self._pending: set[Future] = set()

    def submit(self, function: Callable, *args: object) -> None:
        if self._pool is None:
            function(*args)
            return
        while len(self._pending) >= self._limit:
            done, self._pending = wait(self._pending, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
        self._pending.add(self._pool.submit(function, *args))

    def __enter__(self) -> _Dispatcher:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        # Ctrl-C: what was handed over (and recorded as sent) still goes out; any other error
        # drops the sends still queued.
        self.finish(cancel=exc_type is not None and not issubclass(exc_type, KeyboardInterrupt))

    def finish(self, *, cancel: bool = False) -> None:
        """Wait for every outstanding send (or drop the queued ones) and re-raise the first error."""
        if self._pool is None:
            return
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        pending, self._pending = self._pending, set()
        for future in pending:
            if not future.cancelled():
                future.result()


@dataclass
class RunTiming:
    elapsed_seconds: float
    max_lag_seconds: float = 0.0  # how far sends fell behind their due time (real seconds)


def run_backfill(
    deliveries: Iterable[Delivery],
    send_many: Callable[[Sequence[AnyReading]], None],
    truth: GroundTruth,
    *,
    batch_size: int = 500,
    concurrency: int = 4,
    progress: ProgressBar | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RunTiming:
    """Send every delivery, in send order, as lists of ``batch_size`` with ``concurrency`` requests in flight."""
    started = clock()
    handed = 0
    with _Dispatcher(concurrency) as dispatcher:
        iterator = iter(deliveries)
        while batch := list(itertools.islice(iterator, batch_size)):
            for delivery in batch:
                truth.record_sent(delivery)
            dispatcher.submit(send_many, [delivery.reading for delivery in batch])
            handed += len(batch)
            if progress:
                progress.update(_generated(truth), f"sent {handed:,}")
    if progress:
        progress.update(_generated(truth), f"sent {handed:,}", force=True)
    return RunTiming(clock() - started)


def run_realtime(
    deliveries: Iterable[Delivery],
    send_one: Callable[[AnyReading], None],
    truth: GroundTruth,
    *,
    simulated_start: datetime,
    simulated_end: datetime,
    speed: float = 1.0,
    concurrency: int = 8,
    progress: ProgressBar | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    stop: threading.Event | None = None,
) -> RunTiming:
    """Send each delivery when simulated time reaches its due time; simulated time runs ``speed``
    times as fast as ``clock`` from ``simulated_start``. Deliveries due after ``simulated_end`` (late
    readings and resends of the last minutes) are sent at the end without waiting."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    started = clock()
    max_lag = 0.0
    sent = 0

    def simulated_now() -> datetime:
        return simulated_start + timedelta(seconds=(clock() - started) * speed)

    with _Dispatcher(concurrency) as dispatcher:
        for delivery in deliveries:
            if delivery.due <= simulated_end:
                while (wait_seconds := (delivery.due - simulated_now()).total_seconds() / speed) > 0:
                    if stop is not None and stop.is_set():
                        raise KeyboardInterrupt
                    if progress:
                        progress.update(sent, f"simulated {simulated_now():%Y-%m-%d %H:%M:%S}")
                    sleep(min(wait_seconds, MAX_SLEEP_SECONDS))
                max_lag = max(max_lag, -wait_seconds)
            truth.record_sent(delivery)
            dispatcher.submit(send_one, delivery.reading)
            sent += 1
            if progress:
                progress.update(sent, f"simulated {simulated_now():%Y-%m-%d %H:%M:%S}")
    return RunTiming(clock() - started, max_lag)


def _generated(truth: GroundTruth) -> int:
    return truth.fleet.step * len(truth.fleet.pairs) * 2
