"""``chargewatch influx ...``: prepare an InfluxDB 2.x for chargewatch (``influx setup``) and compute
efficiency windows for old telemetry (``influx backfill``)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``influx`` and its subcommands on the top-level ``chargewatch`` parser."""
    influx: argparse.ArgumentParser = subparsers.add_parser(
        "influx", help="prepare an InfluxDB 2.x (buckets, Flux tasks)",
        description="Prepare the InfluxDB 2.x that CHARGEWATCH_INFLUX__* names.")
    actions = influx.add_subparsers(dest="influx_action", required=True, metavar="ACTION")
    setup = actions.add_parser(
        "setup", help="create missing buckets, create or update the Flux tasks (idempotent: run it on every deploy)",
        description="Create the telemetry and efficiency buckets if missing (with retention), and create or "
        "update the Flux tasks chargewatch ships by name, from CHARGEWATCH_INFLUX__* and "
        "CHARGEWATCH_EFFICIENCY__* settings. Prints one line per bucket and task: created, updated, unchanged "
        "or exists.",
    )
    setup.add_argument("--dry-run", action="store_true", help="print the buckets and the Flux it would install")
    setup.set_defaults(func=cmd_setup)

    backfill = actions.add_parser(
        "backfill", help="compute efficiency windows for telemetry older than the task's trailing windows",
        description="Run the efficiency task's Flux (as `influx setup` installs it) over a past range, chunk by "
        "chunk, writing its windows to the efficiency bucket. The task itself recomputes only the last "
        "CHARGEWATCH_EFFICIENCY__RECOMPUTE_WINDOWS windows, so readings written long after their time (a "
        "buffered gateway, a migration, `chargewatch simulate backfill`) need this. Rerunning it, or "
        "overlapping the task's runs, rewrites the same windows with the same values.",
    )
    backfill.add_argument("--start", required=True, type=_rfc3339,
                          help="RFC 3339 time with offset, e.g. 2026-11-30T00:00:00Z (rounded down to a window)")
    backfill.add_argument("--stop", type=_rfc3339, default=None,
                          help="RFC 3339 time with offset (rounded up to a window; default: now)")
    backfill.add_argument("--chunk-hours", type=float, default=6.0,
                          help="hours of windows computed per query (default 6; smaller for large fleets)")
    backfill.add_argument("--timeout-seconds", type=float, default=600.0,
                          help="how long one chunk's query may take (default 600)")
    backfill.set_defaults(func=cmd_backfill)
    return influx


def _rfc3339(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time (e.g. 2026-11-30T00:00:00Z)") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no offset: add Z or +HH:MM")
    return moment.astimezone(timezone.utc)


def cmd_backfill(args: argparse.Namespace) -> int:
    from chargewatch.influx.backfill import BackfillChunk, aligned_range, backfill_windows
    from chargewatch.influx.setup import SetupError
    from chargewatch.settings import load_settings

    settings = load_settings()
    stop = args.stop or datetime.now(timezone.utc)
    window = timedelta(seconds=settings.efficiency.window_seconds)
    chunk_windows = max(1, round(timedelta(hours=args.chunk_hours) / window))
    try:
        start, stop = aligned_range(settings, args.start, stop)
    except ValueError as err:
        print(f"chargewatch: {err}", file=sys.stderr)
        return 2
    total = (stop - start) // window
    print(f"backfilling {total} windows of {window} from {start.isoformat()} to {stop.isoformat()} into "
          f"bucket {settings.influx.efficiency_bucket!r}", file=sys.stderr)
    done = [0]

    def report(chunk: BackfillChunk) -> None:
        done[0] += (chunk.stop - chunk.start) // window
        print(f"  up to {chunk.stop.isoformat()}: {chunk.windows_written} vehicle windows written "
              f"({done[0]}/{total} windows, {100 * done[0] // total} %)", file=sys.stderr)

    try:
        chunks = backfill_windows(settings, start, stop, chunk=chunk_windows * window,
                                  timeout_seconds=args.timeout_seconds, progress=report)
    except SetupError as err:
        print(f"chargewatch: {err}", file=sys.stderr)
        return 1
    print(f"{sum(c.windows_written for c in chunks)} vehicle windows written")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from chargewatch.influx.setup import SetupError, describe_plan, setup_influx
    from chargewatch.settings import load_settings

    settings = load_settings()
    if args.dry_run:
        print(describe_plan(settings))
        return 0
    try:
        steps = setup_influx(settings)
    except SetupError as err:
        print(f"chargewatch: {err}", file=sys.stderr)
        return 1
    for step in steps:
        print(step)
    return 0
