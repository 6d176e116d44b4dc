"""InfluxDB outage under steady ingest (influx mode): readings lost, drain rate, ingest latency.

Starts a real ``influxd`` (the one ``tools/engines/build`` builds, or ``CHARGEWATCH_ENGINE_INFLUXD``;
its own data directory, on 127.0.0.1), ``chargewatch serve ingest`` with ``CHARGEWATCH_STORE=influx``
and ``chargewatch forward`` with default forwarder settings, then a steady load of devices (default
400 readings/s: 4 gateways posting 5 meter + 5 vehicle readings ten times a second). Phases:
warm-up; the outage (influxd killed with SIGKILL, so connections are refused; then restarted and
SIGSTOPped for the last ``--hang`` seconds, so it accepts requests without answering them and the
forwarder times out); recovery (SIGCONT) under the same load until the outbox has drained. Then
every acknowledged reading is looked up in what InfluxDB stored.

Figures:
- readings_lost: acknowledged (HTTP 200) readings missing in InfluxDB. Target: 0. Also the points
  InfluxDB holds, and any reading stored twice (as a second series).
- drain: lines queued when InfluxDB came back, seconds until the backlog was gone (the outbox back
  at its steady level), lines/s shipped meanwhile (the load keeps adding), and the delay to the
  first acknowledged write (the forwarder's backoff, at most CHARGEWATCH_INFLUX__BACKOFF_MAX_SECONDS).
- ingest latency p50/p99/max before, during and after the outage, as the devices saw it.
- CPU seconds of ingest, forwarder and influxd (the process started at the restart).

    .venv/bin/python benchmarks/influx_outage.py --outage 180 --output benchmarks/results/influx_outage.json
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import harness

REPO = harness.BENCH_DIR.parent
sys.path.insert(0, str(REPO))

from tests.e2e.influx_mode import SteadyLoad  # noqa: E402  (the e2e suite's load, so both measure the same)
from tests.live.engines import BUILD_HINT, Influxd, find_engine  # noqa: E402  (the live suite's influxd)


def start_influxd(data_dir: Path) -> Influxd:
    """A real influxd in ``data_dir/influxd`` with a ``telemetry`` bucket; exits when it is not built."""
    if find_engine("influxd") is None:
        sys.exit(f"influxd not found: {BUILD_HINT} (or set CHARGEWATCH_ENGINE_INFLUXD)")
    influxd = Influxd(data_dir / "influxd").start()
    influxd.create_bucket("telemetry")
    return influxd


def engine_pid(influxd: Influxd) -> int:
    """The pid of the influxd process that ``influxd`` runs now (started or restarted)."""
    engine = influxd.engine
    assert engine is not None and engine.process is not None
    return engine.process.pid


def stored_readings(influxd: Influxd) -> tuple[set[tuple[str, str, int]], int]:
    """(the readings InfluxDB holds as (kind, device id, time ms), how many points that is, duplicates kept)."""
    rows = influxd.query('from(bucket: "telemetry") |> range(start: 0) '
                         '|> filter(fn: (r) => r._field == "kwh_consumed_ac" or r._field == "kwh_delivered_dc") '
                         '|> keep(columns: ["_time", "_measurement", "meter_id", "vehicle_id"]) |> group()')
    readings = [(r["_measurement"], r[f"{r['_measurement']}_id"], int(r["_time"].timestamp() * 1000)) for r in rows]
    return set(readings), len(readings)


def outbox_state(db_path: Path) -> tuple[int, int]:
    """(rows waiting, lines shipped so far), read-only beside the writers (WAL)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        depth = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        shipped = conn.execute("SELECT value FROM forwarder_state WHERE key = 'shipped_total'").fetchone()
        return depth, int(shipped[0]) if shipped else 0
    finally:
        conn.close()


def main() -> int:
    parser = harness.base_parser(__doc__)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the outage")
    parser.add_argument("--outage", type=float, default=180.0, help="seconds InfluxDB is unavailable")
    parser.add_argument("--hang", type=float, default=20.0,
                        help="of those, the last seconds InfluxDB accepts but does not answer")
    parser.add_argument("--max-drain", type=float, default=600.0, help="give up draining after this long")
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=5, help="meter + vehicle pairs per request")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second per gateway")
    args = parser.parse_args()

    load_rate = args.gateways * args.pairs * 2 * args.rate
    result: dict[str, Any] = {
        "benchmark": "influx_outage",
        "measures": "readings lost, drain rate and ingest latency across an InfluxDB outage (influx mode)",
        "target": {"readings_lost": 0},
        "config": {"warmup_s": args.warmup, "outage_s": args.outage, "hang_s": args.hang,
                   "load_readings_per_s": load_rate, "forwarder": "defaults (CHARGEWATCH_INFLUX__*)"},
        "machine": harness.machine_info(),
    }
    data_dir = harness.make_data_dir("influx-outage")
    db_path = data_dir / "chargewatch.db"
    influxd = server = forwarder = load = None
    suspended = False
    try:
        influxd = start_influxd(data_dir)
        result["influxd"] = str(find_engine("influxd"))
        influx_env = {"CHARGEWATCH_STORE": "influx", "CHARGEWATCH_INFLUX__URL": influxd.url,
                      "CHARGEWATCH_INFLUX__TOKEN": influxd.token, "CHARGEWATCH_INFLUX__ORG": influxd.org}
        server = harness.start_chargewatch(data_dir, extra_env=influx_env)
        forwarder_env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHARGEWATCH_")},
                         "CHARGEWATCH_DATA_DIR": str(data_dir), "CHARGEWATCH_LOG_LEVEL": "INFO", **influx_env}
        forwarder = harness.spawn([sys.executable, "-m", "chargewatch", "forward"], env=forwarder_env,
                                  log_path=data_dir / "forwarder.log")
        result["gunicorn_options"] = server.gunicorn_options

        load = SteadyLoad(server.url, threads=args.gateways, pairs=args.pairs, rate_per_thread=args.rate,
                          token=server.write_token).start()
        series: list[dict[str, Any]] = []
        begin = time.monotonic()

        def sample(phase: str) -> tuple[int, int]:
            depth, shipped = outbox_state(db_path)
            series.append({"t": round(time.monotonic() - begin, 1), "phase": phase, "depth": depth,
                           "shipped": shipped})
            return depth, shipped

        def run_for(seconds: float, phase: str) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sample(phase)
                time.sleep(min(1.0, max(0.0, end - time.monotonic())))

        print(f"warm-up {args.warmup:.0f} s at {load_rate:.0f} readings/s", file=sys.stderr)
        run_for(args.warmup, "warmup")
        steady_depth = max(s["depth"] for s in series[len(series) // 2:])
        outage_start = time.monotonic()
        print(f"outage: influxd killed, connections refused for {args.outage - args.hang:.0f} s", file=sys.stderr)
        influxd.kill9()
        run_for(args.outage - args.hang, "outage_refuse")
        restart_started = time.monotonic()
        influxd.restart()
        os.killpg(engine_pid(influxd), signal.SIGSTOP)  # accepting, not answering
        suspended = True
        result["config"]["restart_s"] = round(time.monotonic() - restart_started, 2)
        print(f"outage: influxd restarted and stopped (SIGSTOP) for {args.hang:.0f} s", file=sys.stderr)
        run_for(args.hang, "outage_hang")
        queued, shipped_at_recovery = sample("recovery")
        os.killpg(engine_pid(influxd), signal.SIGCONT)
        suspended = False
        outage_end = time.monotonic()
        print(f"recovered with {queued} lines queued; draining", file=sys.stderr)

        first_ack_s = drained_s = None
        before_first_ack = (0.0, shipped_at_recovery)  # (seconds since recovery, shipped) of the last sample without
        threshold = max(steady_depth, load_rate * 2)  # the outbox's usual level under this load
        while time.monotonic() - outage_end < args.max_drain:
            depth, shipped = sample("drain")
            elapsed = time.monotonic() - outage_end
            if first_ack_s is None:
                if shipped > shipped_at_recovery:
                    first_ack_s = elapsed
                else:
                    before_first_ack = (elapsed, shipped)
            if depth <= threshold:
                drained_s, drained_shipped = elapsed, shipped
                break
            time.sleep(0.05)
        run_for(10.0, "after")
        load.stop()
        after_stop = time.monotonic()
        while outbox_state(db_path)[0] and time.monotonic() - after_stop < 60:
            time.sleep(0.2)

        stored, points = stored_readings(influxd)
        acked = set(load.acked)
        lost = acked - stored
        result["readings"] = {
            "acknowledged": len(acked), "acknowledged_requests_duplicated": len(load.acked) - len(acked),
            "lost": len(lost), "lost_examples": sorted(lost)[:5], "rejected_requests": len(load.errors),
            "rejected_examples": load.errors[:3],
            "unanswered_requests": sum(1 for p in load.posts if p.status is None),
            "influx_readings": len(stored), "influx_readings_stored_twice": points - len(stored),
        }
        drain: dict[str, Any] = {"queued_at_recovery": queued, "steady_outbox_level": steady_depth,
                                 "first_ack_after_recovery_s": _round(first_ack_s)}
        if drained_s is not None:
            shipped_lines = drained_shipped - shipped_at_recovery
            shipping_s = drained_s - before_first_ack[0]  # from the last sample before the first ack
            drain.update({"drained_after_s": round(drained_s, 2), "lines_shipped_while_draining": shipped_lines,
                          "drain_lines_per_s_since_recovery": round(shipped_lines / drained_s),
                          "drain_lines_per_s_while_shipping": round(shipped_lines / max(0.05, shipping_s))})
        result["drain"] = drain
        result["ingest_latency_s"] = {
            "before_outage": _rounded(load.latency(begin, outage_start)),
            "during_outage": _rounded(load.latency(outage_start, outage_end)),
            "after_recovery": _rounded(load.latency(outage_end, after_stop)),
        }
        result["cpu_seconds"] = {
            "ingest": round(harness.cpu_seconds(server.pids), 1),
            "forwarder": round(harness.cpu_seconds([forwarder.pid]), 1),
            "influxd_after_restart": round(harness.cpu_seconds([engine_pid(influxd)]), 1),
        }
        result["outbox_series"] = [point for i, point in enumerate(series)
                                   if point["phase"] == "drain" or i % max(1, len(series) // 100) == 0]
        result["verdict"] = "pass" if not lost and not load.errors and points == len(stored) else "FAIL"
        result["notes"] = harness.disturbance_notes(result)
    finally:
        if load is not None:
            load.stop()
        harness.stop(forwarder)
        if server is not None:
            server.stop()
        if influxd is not None:
            if suspended:
                os.killpg(engine_pid(influxd), signal.SIGCONT)
            influxd.stop()
        harness.remove_data_dir(data_dir, args.keep_data)
    harness.emit(result, args.output)
    return 0 if result.get("verdict") == "pass" else 1


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _rounded(stats: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in stats.items()}


if __name__ == "__main__":
    sys.exit(main())
