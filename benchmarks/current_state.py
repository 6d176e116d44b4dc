"""Current-state reads: ``GET /v1/ingest/{meter|vehicle}/<id>/current`` latency and req/s.

Preloads N devices (default 100,000: half meters METER_000001.., half vehicles VEHICLE_000001..,
paired by number) into the last-value cache through the store API (SqliteReadingStore.write, the
same code path the ingest service uses), then starts the service and has wrk read random devices
with a read token, at two concurrencies: the default (-c32, latency includes queueing behind the
other connections on 2 cores) and a low one (-c4, where p99 is close to service time).

At the low concurrency, runs alternate with the same load on benchmarks/bare_flask.py's GET route
under the same gunicorn options (``--repeats`` of each, medians): Flask + gunicorn's own latency on
this machine, the floor under chargewatch's.

Target: p99 <= 2 ms (judged at the low concurrency; the high one is reported for capacity).

    .venv/bin/python benchmarks/current_state.py --duration 10 --output current.json
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import harness

TARGET_P99_MS = 2.0
PRELOAD_BATCH = 5000


def preload(db_path: Path, devices: int) -> dict[str, Any]:
    """Write one reading per device through the store (group commit, durable)."""
    from chargewatch.readings import MeterReading, VehicleReading
    from chargewatch.stores import PairedReading
    from chargewatch.stores.sqlite import SqliteReadingStore

    meters = devices - devices // 2
    vehicles = devices // 2
    now = datetime.now(timezone.utc)
    received_ms = int(now.timestamp() * 1000)
    rng = random.Random(42)
    started = time.perf_counter()
    store = SqliteReadingStore(db_path)
    try:
        batch: list[PairedReading] = []
        for kind, count in (("meter", meters), ("vehicle", vehicles)):
            for n in range(1, count + 1):
                meter_id, vehicle_id = f"METER_{n:06d}", f"VEHICLE_{n:06d}"
                stamp = now - timedelta(seconds=rng.randint(1, 3600))
                reading: MeterReading | VehicleReading
                if kind == "meter":
                    reading = MeterReading(meter_id=meter_id, kwh_consumed_ac=rng.uniform(0, 0.2),
                                           voltage=rng.uniform(220, 240), timestamp=stamp)
                else:
                    reading = VehicleReading(vehicle_id=vehicle_id, soc=rng.uniform(10, 90),
                                             kwh_delivered_dc=rng.uniform(0, 0.18),
                                             battery_temp=rng.uniform(15, 40), timestamp=stamp)
                batch.append(PairedReading(reading, vehicle_id if n <= vehicles else None,
                                           meter_id if n <= meters else None, received_ms))
                if len(batch) >= PRELOAD_BATCH:
                    store.write(batch)
                    batch = []
        if batch:
            store.write(batch)
    finally:
        store.close()
    return {"meters": meters, "vehicles": vehicles, "seconds": round(time.perf_counter() - started, 2)}


def check_sample(server: harness.Server) -> int:
    """One real request before the load, so a wrong path or token fails loudly."""
    request = urllib.request.Request(server.url + "/v1/ingest/meter/METER_000001/current",
                                     headers={"Authorization": f"Token {server.read_token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = json.loads(response.read())
    assert body, "empty current-state body"
    return response.status


def main() -> int:
    parser = harness.base_parser(__doc__)
    parser.add_argument("--devices", type=int, default=100_000,
                        help="devices preloaded, half meters and half vehicles (default %(default)s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default %(default)s)")
    parser.add_argument("--low-connections", type=int, default=4,
                        help="wrk connections for the service-time run (default %(default)s)")
    parser.add_argument("--serial-connections", type=int, default=1,
                        help="wrk connections for the service-time run, no queueing at all; 0 skips "
                             "it (default %(default)s)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default %(default)s)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: chargewatch's default)")
    parser.add_argument("--threads", type=int, help="threads per worker (default: chargewatch's default)")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured warm-up seconds (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="low-concurrency runs of chargewatch and of bare Flask, alternating (default %(default)s)")
    args = parser.parse_args()
    if args.devices < 2:
        parser.error("--devices must be at least 2")

    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "current_state",
        "measures": "req/s and latency of GET /v1/ingest/{kind}/<id>/current over random preloaded devices",
        "target": {"p99_ms_at_low_concurrency": TARGET_P99_MS},
        "config": {"duration_s": args.duration, "devices": args.devices, "connections": args.connections,
                   "low_connections": args.low_connections, "serial_connections": args.serial_connections,
                   "wrk_threads": args.wrk_threads, "warmup_s": args.warmup},
        "machine": harness.machine_info(),
    }
    data_dir = harness.make_data_dir("current")
    server = bare = None
    try:
        result["preload"] = preload(data_dir / "chargewatch.db", args.devices)
        result["preload"]["current_state_rows"] = harness.count_rows(data_dir / "chargewatch.db", "current_state")
        server = harness.start_chargewatch(data_dir, workers=args.workers, threads=args.threads)
        check_sample(server)
        script = harness.lua_script("current_state", data_dir)
        meters, vehicles = result["preload"]["meters"], result["preload"]["vehicles"]
        lua_args = [server.read_token, str(meters), str(vehicles)]

        bare = harness.start_bare_flask(server.gunicorn_options, data_dir)

        def load(target: harness.Server, connections: int, seconds: float) -> harness.WrkResult:
            # wrk needs a URL; the script sets every path
            return harness.run_wrk(target.url + "/v1/ingest/devices", script, duration_s=seconds,
                                   connections=connections, threads=min(args.wrk_threads, connections),
                                   args=lua_args, server=target)

        if args.warmup > 0:
            load(server, args.connections, args.warmup)
            load(bare, args.low_connections, args.warmup)
        runs: dict[str, list[harness.WrkResult]] = {"high_concurrency": [load(server, args.connections, args.duration)]}
        for _ in range(args.repeats):
            runs.setdefault("low_concurrency", []).append(load(server, args.low_connections, args.duration))
            runs.setdefault("bare_flask_low_concurrency", []).append(load(bare, args.low_connections, args.duration))
        if args.serial_connections:
            runs["serial"] = [load(server, args.serial_connections, args.duration)]
        levels = {"high_concurrency": args.connections, "low_concurrency": args.low_connections,
                  "bare_flask_low_concurrency": args.low_connections, "serial": args.serial_connections}
        for label, level_runs in runs.items():
            result[label] = {"connections": levels[label], **harness.median_result(level_runs)}
        cw_low, bare_low = result["low_concurrency"], result["bare_flask_low_concurrency"]
        result["low_concurrency_vs_bare_flask"] = {
            "p50_ratio": round(cw_low["latency_ms"]["p50"] / bare_low["latency_ms"]["p50"], 2),
            "p99_ratio": round(cw_low["latency_ms"]["p99"] / bare_low["latency_ms"]["p99"], 2),
            "requests_per_s_ratio": round(cw_low["requests_per_s"] / bare_low["requests_per_s"], 2),
        }
        result["gunicorn_options"] = server.gunicorn_options
        # Reads fill each thread's SQLite page cache; how much memory that costs per worker.
        result["worker_memory_mb_after_reads"] = [{"pid": pid, **harness.memory_status(pid)}
                                                  for pid in server.workers()]
    finally:
        harness.stop(server.process if server else None)
        harness.stop(bare.process if bare else None)
        harness.remove_data_dir(data_dir, args.keep_data)

    low, high = result["low_concurrency"], result["high_concurrency"]
    result["meets_target"] = {
        "p99_ms_at_low_concurrency": low["latency_ms"]["p99"] <= TARGET_P99_MS,
        "p99_ms_at_high_concurrency": high["latency_ms"]["p99"] <= TARGET_P99_MS,
        "no_errors": all(result[k]["error_count"] == 0 if k in result else True
                         for k in ("high_concurrency", "low_concurrency", "bare_flask_low_concurrency", "serial")),
    }
    result["notes"] = [
        harness.CPU_SHARING_NOTE.format(cpus=result["machine"]["cpus_usable"]),
        f"At -c{high['connections']} wrk's latency includes queueing: with 2 cores, a request waits "
        "for the ones ahead of it, so p99 there is about connections / throughput, not service time. "
        f"At -c{low['connections']} the queue is short and p99 is close to the service time; "
        "'serial' (one connection, one request at a time) is the service time itself.",
        "Two requests in one worker take turns on the GIL; a thread waiting for it can wait up to "
        "sys.getswitchinterval() (5 ms), which shows in the tail as soon as requests overlap.",
        *harness.disturbance_notes(result),
    ]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    harness.emit(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
