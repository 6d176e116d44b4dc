"""``chargewatch influx backfill``: efficiency windows for telemetry older than the task's trailing windows.

The efficiency task recomputes only the last ``recompute_windows`` windows on each run, so readings
written long after their time (a gateway's buffered day, a migration, the simulator's backfill) get
no windows from it. A backfill runs the task's own Flux (the script ``influx setup`` installs, same
options) as a query, once per chunk of the range, as if scheduled at the chunk's stop with the chunk's
windows to recompute. Rewriting a window overwrites it, so a backfill can be rerun or overlap the
task's own runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from chargewatch.influx import flux
from chargewatch.influx.setup import SetupError, _call, open_client
from chargewatch.settings import Settings

if TYPE_CHECKING:
    from influxdb_client import InfluxDBClient

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class BackfillChunk:
    """One chunk done: windows with stop in (start, stop], and how many the task wrote."""

    start: datetime
    stop: datetime
    windows_written: int


def aligned_range(settings: Settings, start: datetime, stop: datetime) -> tuple[datetime, datetime]:
    """``[start, stop)`` widened to whole windows: start rounded down, stop rounded up."""
    if start.tzinfo is None or stop.tzinfo is None:
        raise ValueError("backfill times must carry a timezone")
    window = timedelta(seconds=settings.efficiency.window_seconds)
    start_aligned = _EPOCH + (start - _EPOCH) // window * window
    stop_aligned = _EPOCH + -(-(stop - _EPOCH) // window) * window
    if stop_aligned <= start_aligned:
        raise ValueError(f"nothing to backfill: {start.isoformat()} is not before {stop.isoformat()}")
    return start_aligned, stop_aligned


def backfill_windows(settings: Settings, start: datetime, stop: datetime, *, chunk: timedelta = timedelta(hours=6),
                     client: InfluxDBClient | None = None, timeout_seconds: float = 600.0,
                     progress: Callable[[BackfillChunk], None] | None = None) -> list[BackfillChunk]:
    """Compute and write the efficiency windows of ``[start, stop)`` (whole windows), chunk by chunk.

    One chunk is one query that may run for minutes on a large fleet (10,000 pairs take seconds per
    window on 2 cores), so it gets ``timeout_seconds``, not the write timeout of the settings.
    Raises SetupError (with the setting to check) when InfluxDB refuses or cannot be reached.
    """
    window = timedelta(seconds=settings.efficiency.window_seconds)
    if chunk < window or chunk % window:
        raise ValueError(f"the chunk ({chunk}) must be a whole number of windows ({window})")
    begin, end = aligned_range(settings, start, stop)
    owned = client is None
    client = client or open_client(settings, timeout_seconds)
    try:
        query_api = client.query_api()
        done = []
        chunk_start = begin
        while chunk_start < end:
            chunk_stop = min(chunk_start + chunk, end)
            windows = (chunk_stop - chunk_start) // window
            source = flux.task_as_query(flux.efficiency_task(settings, recompute_windows=windows), chunk_stop,
                                        write=True, count_written=True)
            tables = _call(settings, f"backfill windows up to {chunk_stop.isoformat()}",
                           lambda source=source: query_api.query(source, org=settings.influx.org))
            written = sum(int(record.values.get("ac_kwh") or 0) for table in tables for record in table.records)
            step = BackfillChunk(chunk_start, chunk_stop, written)
            done.append(step)
            if progress is not None:
                progress(step)
            chunk_start = chunk_stop
        return done
    finally:
        if owned:
            client.close()


__all__ = ["BackfillChunk", "SetupError", "aligned_range", "backfill_windows"]
