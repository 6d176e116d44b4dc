"""Alert replay over a day of windows of a 10,000-vehicle fleet: what the task runner's first run
(or ``chargewatch alerts replay --since 24h``) costs.

The dataset is benchmarks/console_overview.py's: a day of 5-minute windows written straight into
the store, every vehicle charging two hours in six, a tenth of them below 85 %.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone

import harness
from console_overview import load_windows

from analytics import replay
from analytics.runner import TaskRunner
from chargewatch.settings import Settings
from chargewatch.stores.sqlite import SqliteReadingStore
from chargewatch.stores.sqlite_efficiency import SqliteEfficiencyStore


def main() -> int:
    parser = harness.base_parser(__doc__)
    parser.add_argument("--vehicles", type=int, default=10_000, help="fleet size (default %(default)s)")
    parser.add_argument("--hours", type=int, default=24, help="hours replayed (default %(default)s)")
    args = parser.parse_args()
    data_dir = harness.make_data_dir("replay")
    day_start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    day_start_ms = int(day_start.timestamp() * 1000)
    settings = Settings(data_dir=data_dir, sqlite={"synchronous": "normal"})
    try:
        print(f"writing a day of windows for {args.vehicles} vehicles ...", file=sys.stderr)
        dataset = load_windows(settings, args.vehicles, day_start_ms)
        store = SqliteReadingStore.from_settings(settings)
        runner = TaskRunner(SqliteEfficiencyStore(store), settings)
        end_ms = day_start_ms + 24 * 3_600_000
        started = time.perf_counter()
        report = replay.replay(runner, end_ms - args.hours * 3_600_000, end_ms, end_ms)
        seconds = time.perf_counter() - started
        firing = sum(1 for a in report.alerts if a.state == "firing")
        store.close()
        harness.emit({
            "benchmark": "alert_replay", "machine": harness.machine_info(), "dataset": dataset,
            "hours_replayed": args.hours, "window_stops": report.stops, "seconds": round(seconds, 1),
            "ms_per_stop": round(1000 * seconds / report.stops, 1), "alerts_found": len(report.alerts),
            "firing_at_end": firing, "vehicles_below_threshold_by_construction": args.vehicles // 10,
        }, args.output)
    finally:
        harness.remove_data_dir(data_dir, args.keep_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
