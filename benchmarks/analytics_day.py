"""Analytics over one full day of a 10,000-pair fleet (28.8 million readings).

Measures, in one run against 127.0.0.1:
- the task runner: computing one 5-minute window for the whole fleet, a whole normal run (the
  newest window, 1 % of the vehicles marked late in each of the six windows before it, alert
  evaluation), and the day's catch-up;
- ``GET /v1/analytics/performance/{vehicleId}`` (24 h, random vehicles) p50/p99 with wrk;
- ``GET /v1/analytics/fleet/summary`` (24 h) latency over repeated requests.

Then lists of 1,000 new meter readings are posted to the ingest service on the same store
(8 connections), for ingest throughput with that history retained.

Targets (issues 3 and 12): per-vehicle report p99 <= 10 ms at 4 connections, fleet summary of
10,000 vehicles p99 <= 100 ms, one window <= 1 s, a normal run <= 1.5 s, the catch-up no slower;
with ``--days`` 1, 10 and 30, ingest and report figures flat within noise (the days before the
measured one are copies of it, shifted, written in minutes rather than computed for hours).

The dataset is written straight into the store's day tables (as the issue allows, so it loads in
minutes): every pair reports every minute, charging two hours in six at a power and efficiency
drawn from its number, each device's clock offset within +-30 s. ``--keep-data`` keeps it and
``--reuse DIR`` measures again on it, without the load and the catch-up (the measured day is the
newest one there). The figures in-process (the runner's) come from the chargewatch on
``PYTHONPATH``, as do the servers, so ``PYTHONPATH=/tmp/before`` measures another checkout.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sqlite3
import statistics
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import harness
import ingest_lists

from chargewatch.bootstrap import open_reading_store, sqlite_efficiency_stores
from chargewatch.settings import Settings
from chargewatch.stores.sqlite import _DAY_SCHEMA, MS_PER_DAY, _execute_script, day_table
from simulator.devices import pair_ids
from taskrunner.runner import TaskRunner

MS_PER_MINUTE = 60_000
POWERS_KW = (7.4, 11.0, 22.0, 50.0)


def load_day(settings: Settings, pairs: int, day_start_ms: int) -> dict[str, Any]:
    """Write a day of readings for ``pairs`` pairs straight into the day tables."""
    store = open_reading_store(settings)  # creates the schema
    store.close()
    day = day_start_ms // 86_400_000
    meters, vehicles = day_table("meter", day), day_table("vehicle", day)
    conn = sqlite3.connect(settings.sqlite_path)
    conn.execute("PRAGMA synchronous = OFF")  # a bulk load; the benchmark measures reads
    conn.execute("PRAGMA cache_size = -262144")
    _execute_script(conn, _DAY_SCHEMA["meter"].format(table=meters))
    _execute_script(conn, _DAY_SCHEMA["vehicle"].format(table=vehicles))
    traits = []
    for number in range(1, pairs + 1):
        rng = random.Random(number)
        vehicle_id, meter_id = pair_ids(number)
        traits.append((vehicle_id, meter_id, rng.choice(POWERS_KW) / 60, rng.uniform(0.75, 0.97),
                       rng.randint(-30_000, 30_000), rng.randint(-30_000, 30_000), rng.randrange(360)))
    started = time.perf_counter()
    insert_m = f"INSERT INTO {meters} VALUES (?, ?, ?, ?, ?, ?)"
    insert_v = f"INSERT INTO {vehicles} VALUES (?, ?, ?, ?, ?, ?, ?)"
    for minute in range(1440):
        at = day_start_ms + minute * MS_PER_MINUTE + 30_000
        meter_rows, vehicle_rows = [], []
        for vehicle_id, meter_id, kwh_per_minute, efficiency, v_off, m_off, phase in traits:
            dc = kwh_per_minute if (minute + phase) % 360 < 120 else 0.0
            vehicle_rows.append((vehicle_id, at + v_off, meter_id, 50.0, dc, 25.0, at))
            meter_rows.append((meter_id, at + m_off, vehicle_id, dc / efficiency, 230.0, at))
        conn.executemany(insert_m, meter_rows)
        conn.executemany(insert_v, vehicle_rows)
        if minute % 60 == 59:
            conn.commit()
            print(f"  loaded {minute + 1:4d}/1440 minutes", file=sys.stderr, flush=True)
    conn.commit()
    conn.close()
    return {"readings": pairs * 1440 * 2, "load_seconds": round(time.perf_counter() - started, 1)}


def catch_up(settings: Settings, day_start_ms: int) -> float:
    """Compute the day's windows as the runner's catch-up does, an hour at a time; seconds taken."""
    store = open_reading_store(settings)
    runner = TaskRunner(sqlite_efficiency_stores(store.database), settings)
    started = time.perf_counter()
    for hour in range(24):
        runner.compute(day_start_ms + hour * 3_600_000, day_start_ms + (hour + 1) * 3_600_000,
                       day_start_ms + 86_400_000)
    store.close()
    return time.perf_counter() - started


def copy_history(settings: Settings, day_start_ms: int, days: int) -> dict[str, Any]:
    """Retain ``days`` days in all: the loaded day's readings, windows and hourly rollups copied to
    each of the ``days - 1`` days before it, shifted by whole days (same fleet, same shape)."""
    day = day_start_ms // MS_PER_DAY
    conn = sqlite3.connect(settings.sqlite_path)
    conn.execute("PRAGMA synchronous = OFF")  # a bulk load; the benchmark measures what follows
    conn.execute("PRAGMA cache_size = -262144")
    started = time.perf_counter()
    day_end_ms = day_start_ms + MS_PER_DAY
    for back in range(1, days):
        shift = back * MS_PER_DAY
        for kind, columns in (("meter", "meter_id, time_ms - ?, vehicle_id, kwh_consumed_ac, voltage, received_ms - ?"),
                              ("vehicle", "vehicle_id, time_ms - ?, meter_id, soc, kwh_delivered_dc, battery_temp, "
                                          "received_ms - ?")):
            source, target = day_table(kind, day), day_table(kind, day - back)
            _execute_script(conn, _DAY_SCHEMA[kind].format(table=target))
            conn.execute(f"INSERT INTO {target} SELECT {columns} FROM {source} ORDER BY time_ms", (shift, shift))
        conn.execute("INSERT INTO efficiency SELECT window_ms, vehicle_id, stop_ms - ?, meter_id, ac_kwh, dc_kwh, "
                     "ac_readings, dc_readings, avg_battery_temp, efficiency, computed_ms - ? FROM efficiency "
                     "WHERE stop_ms > ? AND stop_ms <= ?", (shift, shift, day_start_ms, day_end_ms))
        conn.execute("INSERT INTO efficiency_hourly SELECT window_ms, hour_stop_ms - ?, vehicle_id, ac_kwh, dc_kwh, "
                     "ac_readings, dc_readings, windows, battery_temp_sum, battery_temp_readings "
                     "FROM efficiency_hourly WHERE hour_stop_ms > ? AND hour_stop_ms <= ?",
                     (shift, day_start_ms, day_end_ms))
        conn.commit()
        print(f"  copied day {back + 1}/{days}", file=sys.stderr, flush=True)
    (windows,), = conn.execute("SELECT count(*) FROM efficiency").fetchall()
    conn.close()
    return {"days": days, "windows": windows, "copy_seconds": round(time.perf_counter() - started, 1),
            "database_gb": round(settings.sqlite_path.stat().st_size / 1e9, 2)}


def newest_day_ms(settings: Settings) -> int:
    """The start of the newest day a kept dataset holds windows of (the day it measured; its ingest
    phase adds readings of today, without windows)."""
    conn = sqlite3.connect(f"file:{settings.sqlite_path}?mode=ro", uri=True)
    try:
        (newest_stop_ms,), = conn.execute("SELECT max(stop_ms) FROM efficiency").fetchall()
    finally:
        conn.close()
    if newest_stop_ms is None:
        raise SystemExit(f"{settings.sqlite_path} holds no windows: not a dataset kept by --keep-data")
    return (newest_stop_ms - 1) // MS_PER_DAY * MS_PER_DAY


def measure_runner(settings: Settings, day_start_ms: int) -> dict[str, Any]:
    store = open_reading_store(settings)
    efficiency = sqlite_efficiency_stores(store.database)
    runner = TaskRunner(efficiency, settings)
    window_ms = runner.window_ms
    day_end_ms = day_start_ms + 86_400_000
    one_window = []
    stop = day_start_ms + 12 * 3_600_000
    for _ in range(5):
        t = time.perf_counter()
        runner.compute(stop - window_ms, stop, day_end_ms)
        one_window.append(time.perf_counter() - t)
    # A normal run at the end of the day, as the runner does live: the newest window, the windows
    # late readings marked, alert evaluation. Late data as the simulator's 1 % late deliveries
    # would leave it: 1 % of the vehicles marked in each of the six windows before the newest.
    vehicle_ids = [row[0] for row in store.read("SELECT DISTINCT vehicle_id FROM efficiency WHERE window_ms = ? "
                                                 "AND stop_ms = ?", (window_ms, stop))]
    late = random.Random(7)
    runs, marked = [], 0
    for _ in range(3):
        efficiency.runner_state.update({"last_stop_ms": day_end_ms - window_ms})
        marks = [(window_ms, day_end_ms - back * window_ms, vehicle_id, 1)
                 for back in range(1, 7) for vehicle_id in late.sample(vehicle_ids, max(1, len(vehicle_ids) // 100))]
        store.database.write([("INSERT OR REPLACE INTO stale_windows VALUES (?, ?, ?, ?)", mark) for mark in marks])
        marked = len(marks)
        report = runner.run_once(day_end_ms + settings.efficiency.offset_seconds * 1000)
        runs.append(report.duration_s)
    # Two parts of a run alone: the live alert verdicts at the newest stop (every vehicle charging in
    # the span), and the day of windows a replay of 600 vehicles reads.
    verdicts, history = [], []
    replayed = late.sample(vehicle_ids, min(600, len(vehicle_ids)))
    for _ in range(5):
        t = time.perf_counter()
        judged = len(runner.verdicts_at(day_end_ms))
        verdicts.append(time.perf_counter() - t)
        t = time.perf_counter()
        runner.history(day_start_ms, day_end_ms, replayed)
        history.append(time.perf_counter() - t)
    (windows,), = store.read("SELECT count(*) FROM efficiency")
    store.close()
    return {
        "windows_stored": windows,
        "one_window_seconds_median": round(statistics.median(one_window), 3),
        "one_window_seconds_runs": [round(x, 3) for x in one_window],
        "normal_run_seconds_median": round(statistics.median(runs), 3),
        "normal_run_seconds_runs": [round(x, 3) for x in runs],
        "normal_run_recomputes": f"the newest window for every vehicle + {marked} (window, vehicle) marks",
        "alert_verdicts_seconds_median": round(statistics.median(verdicts), 3),
        "alert_verdicts_vehicles": judged,
        "replay_history_seconds_median": round(statistics.median(history), 3),
        "replay_history_vehicles": len(replayed),
    }


def _source_dir() -> Path | None:
    """The checkout on ``PYTHONPATH``, whose chargewatch the servers run too: ``python -m`` puts its
    working directory first on the path, so they start there (else the checkout they were started
    from would win)."""
    first = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    return Path(first).resolve() if first else None


def measure_ingest(data_dir: Path, duration_s: float) -> dict[str, Any]:
    """Lists of 1,000 new meter readings into the same store (8 connections, as ingest_lists.py)."""
    server = harness.start_chargewatch(data_dir, source_dir=_source_dir())
    try:
        run = ingest_lists.post_lists(server, data_dir, "json", size=1000, duration_s=duration_s)[-1]
    finally:
        server.stop()
    return {"readings_per_s": round(run.requests_per_s * 1000, 1), "errors": run.error_count,
            "server_cpu_us_per_reading": round(1e6 * run.server_cpu_s / (run.requests * 1000), 2) if run.requests
            else None, "latency_ms_p99": round(run.latency_us["p99"] / 1000, 1)}


def start_analytics(data_dir: Path, read_token: str) -> harness.Server:
    port = harness.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEWATCH_")}
    env.update({"CHARGEWATCH_DATA_DIR": str(data_dir), "CHARGEWATCH_ANALYTICS__HOST": harness.HOST,
                "CHARGEWATCH_ANALYTICS__PORT": str(port), "CHARGEWATCH_AUTH__READ_TOKENS": read_token,
                "CHARGEWATCH_AUTH__WRITE_TOKENS": "bench-unused-" + secrets.token_hex(4),
                "CHARGEWATCH_LOG_LEVEL": "WARNING"})
    log_path = data_dir / "analytics.log"
    process = harness.spawn([sys.executable, "-m", "chargewatch", "serve", "analytics"], env=env, log_path=log_path,
                            cwd=_source_dir())
    server = harness.Server("analytics", process, port, log_path, data_dir, "", read_token, {"workers": 2})
    harness.wait_until_answering(server, "/health")
    return server


def timed_get(url: str, token: str) -> tuple[float, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    return time.perf_counter() - started, body


def main() -> int:
    parser = harness.base_parser(__doc__, default_duration=10.0)
    parser.add_argument("--pairs", type=int, default=10_000, help="vehicle+meter pairs (default %(default)s)")
    parser.add_argument("--summary-requests", type=int, default=20, help="fleet summary requests to time")
    parser.add_argument("--days", type=int, default=1,
                        help="days retained, the measured day the newest; the others are copies of it (default "
                             "%(default)s; growth: run with 1, 10, 30 and compare)")
    parser.add_argument("--reuse", type=Path, metavar="DIR",
                        help="measure on the dataset an earlier run kept (--keep-data) in DIR: no load, no catch-up")
    args = parser.parse_args()
    data_dir = args.reuse or harness.make_data_dir("analytics")
    settings = Settings(data_dir=data_dir, sqlite={"synchronous": "normal"})
    # The newest day a kept dataset measured, or yesterday (UTC).
    day_start_ms = newest_day_ms(settings) if args.reuse else (int(time.time() * 1000) // MS_PER_DAY - 1) * MS_PER_DAY
    day_start = datetime.fromtimestamp(day_start_ms / 1000, timezone.utc)
    server = None
    try:
        if args.reuse:
            load: dict[str, Any] = {"reused": str(args.reuse)}
            history: dict[str, Any] = {"days": "as kept"}
            runner = measure_runner(settings, day_start_ms)
        else:
            print(f"loading {args.pairs} pairs x 1440 minutes x 2 ...", file=sys.stderr)
            load = load_day(settings, args.pairs, day_start_ms)
            print("computing windows ...", file=sys.stderr)
            day_catch_up = catch_up(settings, day_start_ms)
            history = copy_history(settings, day_start_ms, args.days) if args.days > 1 else {"days": 1}
            runner = {"day_catch_up_seconds": round(day_catch_up, 1), **measure_runner(settings, day_start_ms)}
        read_token = "bench-r-" + secrets.token_hex(8)
        server = start_analytics(data_dir, read_token)
        period = f"start={day_start.isoformat().replace('+00:00', 'Z')}&stop=" \
                 f"{(day_start + timedelta(days=1)).isoformat().replace('+00:00', 'Z')}"
        _, sample = timed_get(f"{server.url}/v1/analytics/performance/VEHICLE_001?{period}", read_token)
        assert sample["windows"] == 288, sample
        script = harness.lua_script("analytics_performance", data_dir)
        runs = [harness.run_wrk(f"{server.url}/v1/analytics/performance/VEHICLE_001", script,
                                duration_s=args.duration, connections=4, server=server,
                                args=[str(args.pairs), read_token, period]) for _ in range(3)]
        report = harness.median_result(runs)
        timings = []
        for _ in range(args.summary_requests):
            seconds, summary = timed_get(f"{server.url}/v1/analytics/fleet/summary?{period}", read_token)
            timings.append(seconds)
        timings.sort()
        server.stop()
        server = None
        ingest = measure_ingest(data_dir, args.duration)
        result = {
            "benchmark": "analytics_day",
            "machine": harness.machine_info(),
            "pairs": args.pairs,
            "dataset": load,
            "history": history,
            "runner": runner,
            "performance_report": {
                "requests_per_s": report["requests_per_s"], "latency_ms": report["latency_ms"],
                "errors": report["error_count"], "connections": 4,
            },
            "fleet_summary": {
                "median_ms": round(1000 * statistics.median(timings), 1),
                "p99_ms": round(1000 * timings[min(len(timings) - 1, int(0.99 * len(timings)))], 1),
                "max_ms": round(1000 * timings[-1], 1),
                "vehicles": summary["vehicles"],
            },
            "ingest_lists": ingest,
            "targets": {"performance_p99_ms": 10, "fleet_summary_p99_ms": 100, "one_window_s": 1.0,
                        "normal_run_s": 1.5},
        }
        harness.emit(result, args.output)
    finally:
        if server is not None:
            server.stop()
        harness.remove_data_dir(data_dir, args.keep_data or args.reuse is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
