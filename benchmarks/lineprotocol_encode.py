"""Line protocol speed: our encoder against the official client's ``Point``, and our decoder.

What it measures, on one core, in one process (time.perf_counter, median of --repeats runs):

- ``encode``: points/s turning N meter readings into line-protocol lines. Both sides start from the
  same plain values (meter_id, vehicle_id, kWh, volts, ms timestamp) and do what a caller has to:
  ours builds the tag and field dicts and calls ``encode_point``; the client builds
  ``Point("meter").tag(..).tag(..).field(..).field(..).time(ts, WritePrecision.MS)`` and calls
  ``to_line_protocol()``. The fleet has --devices meter/vehicle pairs, so tag sets repeat as they
  do in production (our encoder caches escaped tag sets); field values vary from point to point.
- ``encode_point_only``: points/s of ``encode_point`` alone, on tag and field dicts built
  beforehand (the cost for a caller that already holds them).
- ``parse``: lines/s of ``parse_lines(body, "ms")`` over the N lines our encoder produced (two
  tags, two float fields, a timestamp each), including building every ``Line``. The lines go in
  bodies of --batch-lines (default 5000), the size of a gateway's request (client libraries and
  Telegraf send 1000-5000 lines per write), and each body's lines are dropped before the next is
  parsed, as a request's are.

Prints one JSON object (also written to --output)::

    .venv/bin/python benchmarks/lineprotocol_encode.py --points 200000 --output lp.json

Targets: encode_point >= 500,000 points/s, parse >= 150,000 lines/s. The machine may be shared:
``background_cores_at_start`` records other load seen just before the run, and every figure in
``details`` also has ``per_cpu_s``, the rate over this process's CPU time alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chargewatch.lineprotocol import encode_point, parse_lines

Reading = tuple[str, str, float, float, int]

START_MS = 1_795_413_600_000
INTERVAL_MS = 60_000


def make_readings(points: int, devices: int) -> list[Reading]:
    """Meter readings of a fleet reporting every minute; every reading has its own values."""
    readings = []
    for n in range(points):
        device = n % devices
        minute = n // devices
        readings.append((
            f"METER_{device:03d}",
            f"VEHICLE_{device:03d}",
            round(0.005 + (n * 7919 % 10_000) / 100_000, 5),
            round(225.0 + (n * 104_729 % 1_000) / 100, 2),
            START_MS + minute * INTERVAL_MS + device,
        ))
    return readings


def encode_ours(readings: list[Reading]) -> list[str]:
    """Lines from plain values with chargewatch's encoder (dicts built per point, as a caller does)."""
    return [
        encode_point(
            "meter",
            {"meter_id": meter_id, "vehicle_id": vehicle_id},
            {"kwh_consumed_ac": kwh, "voltage": volts},
            timestamp,
        )
        for meter_id, vehicle_id, kwh, volts, timestamp in readings
    ]


def encode_with_client_point(readings: list[Reading]) -> list[str]:
    """Lines from the same values with the official client's ``Point`` builder."""
    from influxdb_client import Point, WritePrecision

    return [
        Point("meter")
        .tag("meter_id", meter_id)
        .tag("vehicle_id", vehicle_id)
        .field("kwh_consumed_ac", kwh)
        .field("voltage", volts)
        .time(timestamp, WritePrecision.MS)
        .to_line_protocol()
        for meter_id, vehicle_id, kwh, volts, timestamp in readings
    ]


def parse_bodies(bodies: list[str]) -> tuple[int, int]:
    """Parse each body and drop its lines before the next, as the ingest service does per request."""
    parsed = errors = 0
    for body in bodies:
        lines, bad = parse_lines(body, "ms")
        parsed += len(lines)
        errors += len(bad)
    return parsed, errors


def measure(work: Callable[[], Any], count: int, repeats: int) -> tuple[dict[str, Any], Any]:
    """Items/s of ``repeats`` runs of ``work`` (median), and the last run's result.

    ``per_s`` is wall time (perf_counter); ``per_cpu_s`` counts only this process's CPU time, so
    on a shared machine it shows what the code does when it is not waiting for a core.
    """
    wall_rates, cpu_rates = [], []
    result = None
    for _ in range(repeats):
        result = None  # free the previous run's output before timing the next
        gc.collect()
        cpu_started = time.process_time()
        started = time.perf_counter()
        result = work()
        wall_rates.append(count / (time.perf_counter() - started))
        cpu_rates.append(count / max(time.process_time() - cpu_started, 1e-9))
    summary = {
        "per_s": round(statistics.median(wall_rates)),
        "per_cpu_s": round(statistics.median(cpu_rates)),
        "samples_per_s": [round(rate) for rate in wall_rates],
    }
    return summary, result


def background_cores(seconds: float = 0.5) -> float:
    """Cores other processes kept busy during ``seconds`` before the run (Linux; else 0)."""
    try:
        with open("/proc/stat") as handle:
            before = [int(value) for value in handle.readline().split()[1:]]
        time.sleep(seconds)
        with open("/proc/stat") as handle:
            after = [int(value) for value in handle.readline().split()[1:]]
    except OSError:
        return 0.0
    deltas = [a - b for a, b in zip(after, before, strict=True)]
    idle = deltas[3] + deltas[4]
    return round((os.cpu_count() or 1) * (sum(deltas) - idle) / max(1, sum(deltas)), 2)


def check_same_data(ours: list[str], theirs: list[str]) -> None:
    """Both encoders must describe the same points, or the comparison means nothing."""
    mine, mine_errors = parse_lines("\n".join(ours[:1000]), "ms")
    other, other_errors = parse_lines("\n".join(theirs[:1000]), "ms")
    if mine_errors or other_errors:
        raise SystemExit(f"unparsable output: {(mine_errors or other_errors)[0]}")
    for a, b in zip(mine, other, strict=True):
        if (a.measurement, a.tags, a.fields, a.timestamp_ns) != (
            b.measurement, b.tags, b.fields, b.timestamp_ns
        ):
            raise SystemExit(f"encoders disagree: {a.text!r} vs {b.text!r}")


def run(points: int, repeats: int, devices: int, batch_lines: int) -> dict[str, Any]:
    readings = make_readings(points, devices)
    result: dict[str, Any] = {
        "benchmark": "lineprotocol_encode",
        "points": points,
        "devices": devices,
        "repeats": repeats,
        "statistic": "median",
        "python": platform.python_version(),
        "cpus_online": os.cpu_count(),
        "background_cores_at_start": background_cores(),
    }

    encode, lines = measure(lambda: encode_ours(readings), points, repeats)
    result["encode_points_per_s"] = encode["per_s"]
    # encode_point alone, on mappings built beforehand: the cost a caller already holding dicts pays.
    mappings = [
        ("meter", {"meter_id": meter_id, "vehicle_id": vehicle_id},
         {"kwh_consumed_ac": kwh, "voltage": volts}, timestamp)
        for meter_id, vehicle_id, kwh, volts, timestamp in readings
    ]
    encode_only, only_lines = measure(lambda: [encode_point(*point) for point in mappings], points, repeats)
    mappings.clear()
    del only_lines
    result["encode_point_only_points_per_s"] = encode_only["per_s"]

    point = None
    try:
        import influxdb_client
    except ImportError:
        result["note"] = "influxdb-client is not installed: no Point comparison"
    else:
        point, point_lines = measure(lambda: encode_with_client_point(readings), points, repeats)
        check_same_data(lines, point_lines)
        del point_lines
        result["influxdb_client_version"] = influxdb_client.__version__
    result["point_points_per_s"] = point["per_s"] if point else None
    result["encode_speedup_vs_point"] = round(encode["per_s"] / point["per_s"], 1) if point else None

    bodies = ["\n".join(lines[start : start + batch_lines]) for start in range(0, points, batch_lines)]
    del lines
    parse, (parsed, errors) = measure(lambda: parse_bodies(bodies), points, repeats)
    if errors or parsed != points:
        raise SystemExit(f"parse failed: {parsed} lines, {errors} errors")
    result["parse_lines_per_s"] = parse["per_s"]
    result["parse_batch_lines"] = batch_lines
    result["parse_mean_line_bytes"] = round(sum(len(body.encode()) for body in bodies) / points, 1)
    result["details"] = {"encode": encode, "encode_point_only": encode_only, "point": point, "parse": parse}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--points", type=int, default=200_000, help="points per run (default 200000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure, median kept (default 5)")
    parser.add_argument("--devices", type=int, default=100, help="meter/vehicle pairs (default 100)")
    parser.add_argument("--batch-lines", type=int, default=5000, help="lines per parsed body (default 5000)")
    parser.add_argument("--output", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    if min(args.points, args.repeats, args.devices, args.batch_lines) < 1:
        parser.error("--points, --repeats, --devices and --batch-lines must be positive")

    result = run(args.points, args.repeats, args.devices, args.batch_lines)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
