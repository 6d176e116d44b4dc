"""The InfluxDB path against a real influxd, side by side with the embedded store in the same run.

Starts its own influxd (tools/engines/build) on 127.0.0.1 with a temporary data directory and
measures:

1. forwarder: lines/s that the real ``chargewatch forward`` ships from a full outbox into influxd,
   by batch size (``CHARGEWATCH_INFLUX__BATCH_MAX_LINES``); beside it, the rate at which the
   embedded store itself stored the same readings (the outbox is filled in the same commit);
2. the efficiency task's run for ``--pairs`` pairs x 1 window (5 readings per device), run inside
   influxd as the task's own Flux, vs the embedded runner computing the same window from the same
   readings;
3. the per-vehicle 24 h performance report and the fleet summary, p50/p99 over repeated calls of
   the analytics use cases, on InfluxDB (the Flux queries) vs SQLite, over a day of windows for
   ``--report-pairs`` vehicles.

Usage: .venv/bin/python benchmarks/influx_engines.py [--pairs 10000] [--report-pairs 1000]
       [--lines 100000] [--output benchmarks/results/influx_engines.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

from analytics import queries  # noqa: E402
from chargewatch.bootstrap import alert_policy, open_reading_store, sqlite_efficiency_stores  # noqa: E402
from chargewatch.efficiency import EfficiencyWindow, efficiency_of  # noqa: E402
from chargewatch.influx import flux  # noqa: E402
from chargewatch.influx.setup import open_client, setup_influx  # noqa: E402
from chargewatch.lineprotocol import encode_point  # noqa: E402
from chargewatch.readings import MeterReading, VehicleReading  # noqa: E402
from chargewatch.settings import Settings  # noqa: E402
from chargewatch.stores import PairedReading  # noqa: E402
from chargewatch.stores.influx_windows import InfluxWindowSource  # noqa: E402
from chargewatch.stores.outbox import reading_line  # noqa: E402
from chargewatch.stores.sqlite_windows import SqliteWindowStore  # noqa: E402
from simulator.devices import pair_ids  # noqa: E402
from taskrunner.runner import TaskRunner  # noqa: E402
from tests.live.engines import Influxd  # noqa: E402

WINDOW_MS = 300_000
MS_PER_HOUR = 3_600_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quantiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    cut = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"n": len(ordered), "p50_ms": round(cut[49] * 1000, 2), "p99_ms": round(cut[98] * 1000, 2)}


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return seconds


def settings_for(influx: Influxd, data_dir: Path, **efficiency: Any) -> Settings:
    return Settings(data_dir=data_dir, store="influx", sqlite={"synchronous": "normal"},
                    influx={"url": influx.url, "token": influx.token, "org": influx.org,
                            "telemetry_retention_days": 0, "efficiency_retention_days": 0},
                    efficiency=efficiency)


def window_readings(pairs: int, window_stop_ms: int, seed: int = 1) -> list[PairedReading]:
    """Five readings per device in the window ending at ``window_stop_ms``, every pair charging."""
    rng = random.Random(seed)
    readings = []
    start = datetime.fromtimestamp((window_stop_ms - WINDOW_MS) / 1000, timezone.utc)
    for number in range(1, pairs + 1):
        vehicle_id, meter_id = pair_ids(number)
        efficiency = rng.uniform(0.75, 0.97)
        for minute in range(5):
            at = start + timedelta(minutes=minute, seconds=30)
            dc = rng.uniform(0.1, 0.8)
            readings.append(PairedReading(MeterReading(meter_id=meter_id, kwh_consumed_ac=dc / efficiency,
                                                       voltage=230.0, timestamp=at),
                                          vehicle_id=vehicle_id, meter_id=meter_id, received_ms=window_stop_ms))
            readings.append(PairedReading(VehicleReading(vehicle_id=vehicle_id, soc=50.0, kwh_delivered_dc=dc,
                                                         battery_temp=25.0, timestamp=at),
                                          vehicle_id=vehicle_id, meter_id=meter_id, received_ms=window_stop_ms))
    return readings


def measure_forwarder(influx: Influxd, work: Path, lines: int, batch_sizes: list[int]) -> dict[str, Any]:
    pairs = max(1, lines // 10)
    stop_ms = (int(time.time() * 1000) // WINDOW_MS - 12) * WINDOW_MS
    readings = window_readings(pairs, stop_ms)
    results = []
    for batch in batch_sizes:
        data_dir = work / f"forward-{batch}"
        bucket = f"forward_{batch}"
        influx.create_bucket(bucket)
        settings = settings_for(influx, data_dir)
        store = open_reading_store(settings)  # influx mode: with the outbox
        started = time.perf_counter()
        for i in range(0, len(readings), 1000):
            store.write(readings[i:i + 1000])
        stored_s = time.perf_counter() - started
        store.close()
        env = {"CHARGEWATCH_DATA_DIR": str(data_dir), "CHARGEWATCH_STORE": "influx",
               "CHARGEWATCH_INFLUX__URL": influx.url, "CHARGEWATCH_INFLUX__TOKEN": influx.token,
               "CHARGEWATCH_INFLUX__ORG": influx.org, "CHARGEWATCH_INFLUX__TELEMETRY_BUCKET": bucket,
               "CHARGEWATCH_INFLUX__BATCH_MAX_LINES": str(batch), "CHARGEWATCH_INFLUX__POLL_SECONDS": "0.05",
               "CHARGEWATCH_LOG_LEVEL": "WARNING"}
        started = time.perf_counter()
        process = harness.spawn([sys.executable, "-m", "chargewatch", "forward"], env=env,
                                log_path=data_dir / "forward.log")
        db = data_dir / "chargewatch.db"
        while harness.count_rows(db, "outbox") > 0:
            time.sleep(0.05)
        shipped_s = time.perf_counter() - started
        harness.stop(process)
        row = {"batch_max_lines": batch, "lines": len(readings), "forward_seconds": round(shipped_s, 2),
               "forward_lines_per_s": round(len(readings) / shipped_s),
               "embedded_store_readings_per_s": round(len(readings) / stored_s)}
        log(f"  forwarder batch {batch}: {row['forward_lines_per_s']} lines/s into influxd "
            f"(embedded store wrote {row['embedded_store_readings_per_s']} readings/s)")
        results.append(row)
    return {"includes_process_start": True, "runs": results}


def measure_task(influx: Influxd, work: Path, pairs: int, repeat: int) -> dict[str, Any]:
    stop_ms = (int(time.time() * 1000) // WINDOW_MS - 2) * WINDOW_MS
    settings = settings_for(influx, work / "task", recompute_windows=1)
    org_settings = settings
    client = open_client(org_settings, timeout_seconds=900)
    setup_influx(org_settings, client)
    readings = window_readings(pairs, stop_ms, seed=2)
    log(f"  writing {len(readings)} readings of one window to influxd and SQLite")
    body = [reading_line(p) for p in readings]
    for i in range(0, len(body), 10_000):
        influx.write(settings.influx.telemetry_bucket, "\n".join(body[i:i + 10_000]))
    store = open_reading_store(Settings(data_dir=work / "task-embedded", sqlite={"synchronous": "normal"}))
    for i in range(0, len(readings), 5000):
        store.write(readings[i:i + 5000])
    source = flux.task_as_query(flux.efficiency_task(settings, recompute_windows=1),
                                datetime.fromtimestamp(stop_ms / 1000, timezone.utc), write=True, count_written=True)
    query_api = client.query_api()

    def influx_run() -> None:
        written = sum(int(r.values["ac_kwh"]) for t in query_api.query(source, org=settings.influx.org)
                      for r in t.records)
        assert written == pairs, written

    runner = TaskRunner(sqlite_efficiency_stores(store.database), Settings(data_dir=work / "task-embedded"))

    def embedded_run() -> None:
        assert runner.compute(stop_ms - WINDOW_MS, stop_ms, stop_ms) == pairs

    influx_s = timed(influx_run, repeat)
    embedded_s = timed(embedded_run, repeat)
    store.close()
    client.close()
    result = {"pairs": pairs, "readings": len(readings), "repeat": repeat,
              "influx_task_median_s": round(statistics.median(influx_s), 3),
              "embedded_runner_median_s": round(statistics.median(embedded_s), 3)}
    result["ratio_influx_to_embedded"] = round(result["influx_task_median_s"] / result["embedded_runner_median_s"], 2)
    log(f"  one window of {pairs} pairs: influxd task {result['influx_task_median_s']} s, "
        f"embedded runner {result['embedded_runner_median_s']} s")
    return result


def day_windows(pairs: int, day_start_ms: int) -> list[EfficiencyWindow]:
    windows = []
    for number in range(1, pairs + 1):
        rng = random.Random(number)
        vehicle_id, meter_id = pair_ids(number)
        efficiency, phase = rng.uniform(0.75, 0.97), rng.randrange(72)
        for index in range(288):
            if (index + phase) % 72 >= 24:
                continue  # idle: two hours charging in six
            dc = rng.uniform(0.5, 4.0)
            ac = dc / efficiency
            windows.append(EfficiencyWindow(vehicle_id, meter_id, day_start_ms + (index + 1) * WINDOW_MS, ac, dc, 5, 5,
                                            25.0 + rng.random(), efficiency_of(ac, dc, 0.1)))
    return windows


def window_line(w: EfficiencyWindow) -> str:
    fields: dict[str, Any] = {"ac_kwh": w.ac_kwh, "dc_kwh": w.dc_kwh, "ac_readings": w.ac_readings,
                              "dc_readings": w.dc_readings, "avg_battery_temp": w.avg_battery_temp,
                              "efficiency": w.efficiency}
    return encode_point("efficiency", {"vehicle_id": w.vehicle_id, "meter_id": w.meter_id},
                        {k: v for k, v in fields.items() if v is not None}, w.stop_ms)


def measure_reports(influx: Influxd, work: Path, pairs: int, repeat: int) -> dict[str, Any]:
    day_start_ms = (int(time.time() * 1000) // 86_400_000 - 1) * 86_400_000
    day_end_ms = day_start_ms + 86_400_000
    windows = day_windows(pairs, day_start_ms)
    log(f"  writing {len(windows)} efficiency windows ({pairs} vehicles, 24 h) to influxd and SQLite")
    settings = settings_for(influx, work / "reports")
    settings.influx.efficiency_bucket = "report_efficiency"
    influx.create_bucket(settings.influx.efficiency_bucket)
    lines = [window_line(w) for w in windows]
    for i in range(0, len(lines), 20_000):
        influx.write(settings.influx.efficiency_bucket, "\n".join(lines[i:i + 20_000]))
    local = open_reading_store(settings)
    embedded = SqliteWindowStore(local.database)
    for hour in range(24):
        start = day_start_ms + hour * MS_PER_HOUR
        embedded.replace_windows(WINDOW_MS, start, start + MS_PER_HOUR,
                                 [w for w in windows if start < w.stop_ms <= start + MS_PER_HOUR], day_end_ms)
    settings.influx.request_timeout_seconds = 600
    on_influx = InfluxWindowSource.from_settings(settings)
    policy = alert_policy(settings)
    period = queries.Period(day_start_ms, day_end_ms)
    rng = random.Random(3)
    vehicles = [pair_ids(rng.randint(1, pairs))[0] for _ in range(repeat * 10)]
    result: dict[str, Any] = {"vehicles": pairs, "windows": len(windows)}
    stores: list[tuple[str, Any]] = [("sqlite", embedded), ("influx", on_influx)]
    for name, store in stores:
        picks = iter(vehicles)

        def report(store: Any = store, picks: Iterator[str] = picks) -> Any:
            return queries.performance_report(store, next(picks), period, WINDOW_MS, policy)

        def summary(store: Any = store) -> Any:
            return queries.fleet_summary(store, period, WINDOW_MS, policy, 10)

        report_s = timed(report, len(vehicles))
        summary_s = timed(summary, repeat)
        result[name] = {"performance_24h": quantiles(report_s), "fleet_summary_24h": quantiles(summary_s)}
        log(f"  {name}: 24 h report p50 {result[name]['performance_24h']['p50_ms']} ms "
            f"p99 {result[name]['performance_24h']['p99_ms']} ms; fleet summary p50 "
            f"{result[name]['fleet_summary_24h']['p50_ms']} ms p99 {result[name]['fleet_summary_24h']['p99_ms']} ms")
    on_influx.close()
    local.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10_000, help="pairs in the task-run measurement")
    parser.add_argument("--report-pairs", type=int, default=1000, help="vehicles with a day of windows for reports")
    parser.add_argument("--lines", type=int, default=100_000, help="lines per forwarder measurement")
    parser.add_argument("--batch-sizes", default="500,1000,5000,10000")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each timed step")
    parser.add_argument("--parts", default="forwarder,task,reports", help="which measurements to run")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/influx_engines.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cw-bench-influx-") as tmp:
        work = Path(tmp)
        influx = Influxd(work / "influxd")
        log(f"starting influxd in {work}")
        influx.start()
        try:
            result: dict[str, Any] = {"machine": harness.machine_info()}
            parts = args.parts.split(",")
            if "forwarder" in parts:
                log("1. forwarder into influxd")
                result["forwarder"] = measure_forwarder(influx, work, args.lines,
                                                        [int(b) for b in args.batch_sizes.split(",")])
            if "task" in parts:
                log("2. the efficiency task, one window")
                result["task_one_window"] = measure_task(influx, work, args.pairs, args.repeat)
            if "reports" in parts:
                log("3. reports")
                result["reports"] = measure_reports(influx, work, args.report_pairs, args.repeat * 4)
        finally:
            influx.stop()
    harness.emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
