"""List ingest: readings/s of ``POST /v1/ingest`` with lists of 1,000 readings (or of
``POST /api/v2/write`` with bodies of 5,000 lines, ``--format lines``), vs raw SQLite.

wrk posts JSON lists of 1,000 meter readings, every reading new (ids built in Lua from a
per-thread request counter, so no insert is a no-op duplicate); with ``--format lines``, line
protocol bodies of 5,000 meter lines as Telegraf's influxdb_v2 output sends them (precision ns).
The baseline is a pure-Python
sqlite3 loop inserting the same rows in the same 1,000-row batches into the same schema
(chargewatch.stores.sqlite's day table, ``_INSERT`` and the current_state upsert), WAL,
synchronous=FULL, one transaction per batch: the storage cost alone, with no HTTP, JSON or
validation. Its rate counts only the time spent inside the transactions.

Target: >= 100,000 readings/s and >= 0.7 of the raw SQLite rate, for both formats.

    .venv/bin/python benchmarks/ingest_lists.py --duration 10 --output lists.json
    .venv/bin/python benchmarks/ingest_lists.py --format lines --output lines.json
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import harness

TARGET_READINGS_PER_S = 100_000
TARGET_RATIO = 0.7
# format -> (wrk scenario, path, default readings per request)
FORMATS = {"json": ("ingest_list", "/v1/ingest", 1000),
           "lines": ("ingest_lines", "/api/v2/write?bucket=telemetry&precision=ns", 5000)}


def raw_sqlite_rate(db_path: Path, *, duration_s: float, size: int, synchronous: str) -> dict[str, Any]:
    """Insert 1,000-row batches like the server would, for ``duration_s``; rows/s inside SQLite."""
    from chargewatch.stores.sqlite import (
        _DAY_SCHEMA,
        _INSERT,
        _UPSERT_CURRENT,
        MS_PER_DAY,
        SqliteReadingStore,
        day_table,
    )

    store = SqliteReadingStore(db_path, synchronous=synchronous)  # schema, WAL
    conn = store.database.connect()  # the store's own pragmas (synchronous, cache size, temp store)
    try:
        start_ms = (int(time.time()) - 3600) * 1000
        table = day_table("meter", start_ms // MS_PER_DAY)
        for statement in _DAY_SCHEMA["meter"].format(table=table).split(";"):
            if statement.strip():
                conn.execute(statement)
        insert = _INSERT["meter"].format(table=table)
        tag = harness.run_tag()
        # What wrk's two threads send (lua/ingest_list.lua): each thread's fixed meters
        # BL-<tag>-<thread>-<i>, one second later on every request, threads interleaved.
        ids_by_thread = {t: [f"BL-{tag}-{t}-{i}" for i in range(1, size + 1)] for t in (1, 2)}
        inside_s, inside_cpu_s, rows, batches, duplicates = 0.0, 0.0, 0, 0, 0
        started = time.perf_counter()
        deadline = started + duration_s
        while time.perf_counter() < deadline:
            batches += 1
            thread, request = 1 + batches % 2, (batches + 1) // 2
            received_ms = int(time.time() * 1000)
            ids = ids_by_thread[thread]
            time_ms = start_ms + request * 1000
            history = [(i, time_ms, None, 0.25, 230.0, received_ms) for i in ids]
            current = [("meter", i, time_ms, received_ms, None, i, 0.25, 230.0, None, None) for i in ids]
            t0, cpu0 = time.perf_counter(), time.process_time()
            conn.execute("BEGIN IMMEDIATE")
            stored = conn.executemany(insert, history).rowcount
            conn.executemany(_UPSERT_CURRENT, current)
            conn.execute("COMMIT")
            inside_s += time.perf_counter() - t0
            inside_cpu_s += time.process_time() - cpu0
            rows += stored
            duplicates += size - stored
        wall_s = time.perf_counter() - started
    finally:
        conn.close()
        store.close()
    return {
        "readings_per_s": round(rows / inside_s, 1),
        "readings_per_s_wall": round(rows / wall_s, 1),
        "rows": rows,
        "batches": batches,
        "duplicates": duplicates,
        "seconds_in_sqlite": round(inside_s, 3),
        "cpu_us_per_reading": round(1e6 * inside_cpu_s / rows, 2) if rows else None,
        "seconds_wall": round(wall_s, 3),
        "commit_ms_mean": round(1000 * inside_s / batches, 3) if batches else None,
    }


def post_lists(server: harness.Server, data_dir: Path, body_format: str, *, size: int, connections: int = 8,
               wrk_threads: int = 2, warmup_s: float = 2, duration_s: float) -> list[harness.WrkResult]:
    """wrk posting bodies of ``size`` new readings: the warm-up run (if any), then the measured one."""
    scenario, path, _ = FORMATS[body_format]
    script = harness.lua_script(scenario, data_dir)
    return [harness.run_wrk(server.url + path, script, duration_s=seconds, connections=connections,
                            threads=wrk_threads, timeout_s=30,
                            args=[harness.run_tag(), server.write_token, str(size)], server=server)
            for seconds in ([warmup_s] if warmup_s > 0 else []) + [duration_s]]


def server_rate(args, repeat: int) -> dict[str, Any]:
    data_dir = harness.make_data_dir(f"lists-{repeat}")
    server = None
    try:
        server = harness.start_chargewatch(data_dir, workers=args.workers, threads=args.threads,
                                           synchronous=args.synchronous, source_dir=args.source)
        runs = post_lists(server, data_dir, args.format, size=args.size, connections=args.connections,
                          wrk_threads=args.wrk_threads, warmup_s=args.warmup, duration_s=args.duration)
        answered = sum(run.requests for run in runs)
        server.stop()
        stored = harness.count_rows(data_dir / "chargewatch.db", "meter_[0-9]*")
        measured = runs[-1]
        return {
            "readings_per_s": round(measured.requests_per_s * args.size, 1),
            "server_cpu_us_per_reading": round(1e6 * measured.server_cpu_s / (measured.requests * args.size), 2)
            if measured.requests else None,
            "run": measured.as_dict(),
            "integrity": {
                "readings_answered_incl_warmup": answered * args.size,
                "rows_stored": stored,
                # Every answered request stored size new rows; requests in flight when wrk stops
                # (at most one per connection per run) may be stored but not counted.
                "consistent": answered * args.size <= stored
                <= (answered + args.connections * len(runs)) * args.size,
            },
            "gunicorn_options": server.gunicorn_options,
        }
    finally:
        harness.stop(server.process if server else None)
        harness.remove_data_dir(data_dir, args.keep_data)


def main() -> int:
    parser = harness.base_parser(__doc__)
    parser.add_argument("--format", choices=tuple(FORMATS), default="json",
                        help="json: lists to /v1/ingest; lines: line protocol to /api/v2/write (default %(default)s)")
    parser.add_argument("--size", type=int, help="readings per request (default 1,000 for json, 5,000 for lines)")
    harness.add_source_argument(parser)
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default %(default)s)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default %(default)s)")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: chargewatch's default)")
    parser.add_argument("--threads", type=int, help="threads per worker (default: chargewatch's default)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="server and raw runs, alternated, each on a fresh database; medians "
                             "reported (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured warm-up seconds (default %(default)s)")
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full",
                        help="SQLite synchronous for both the server and the raw loop (default %(default)s)")
    args = parser.parse_args()
    if args.size is None:
        args.size = FORMATS[args.format][2]

    started = time.monotonic()
    what = (f"POST /v1/ingest with lists of {args.size} new meter readings" if args.format == "json" else
            f"POST /api/v2/write with {args.size} lines of new meter readings")
    result: dict[str, Any] = {
        "benchmark": "ingest_lists" if args.format == "json" else "ingest_lines",
        "measures": f"readings/s of {what}, vs a raw sqlite3 loop inserting the same rows in the same batches",
        "target": {"readings_per_s": TARGET_READINGS_PER_S, "ratio_to_raw_sqlite": TARGET_RATIO},
        "config": {"format": args.format, "duration_s": args.duration, "size": args.size,
                   "connections": args.connections, "wrk_threads": args.wrk_threads, "repeats": args.repeats,
                   "warmup_s": args.warmup,
                   "synchronous": args.synchronous},
        "machine": harness.machine_info(),
    }
    servers, raws = [], []
    for repeat in range(args.repeats):
        servers.append(server_rate(args, repeat))
        raw_dir = harness.make_data_dir(f"raw-{repeat}")
        try:
            raws.append(raw_sqlite_rate(raw_dir / "raw.db", duration_s=args.duration, size=args.size,
                                        synchronous=args.synchronous))
        finally:
            harness.remove_data_dir(raw_dir, args.keep_data)

    server_rate_median = statistics.median(s["readings_per_s"] for s in servers)
    raw_median = statistics.median(r["readings_per_s"] for r in raws)
    latency = {k: statistics.median(s["run"]["latency_us"][k] for s in servers)
               for k in servers[0]["run"]["latency_us"]}
    ratio = server_rate_median / raw_median if raw_median else 0.0
    result["chargewatch"] = {
        "readings_per_s": server_rate_median,
        "requests_per_s": round(server_rate_median / args.size, 1),
        "latency_ms": {k: round(v / 1000, 2) for k, v in latency.items()},
        "server_cpu_us_per_reading": statistics.median(s["server_cpu_us_per_reading"] or 0 for s in servers),
        "error_count": sum(s["run"]["error_count"] for s in servers),
        "runs": [s["run"] for s in servers],
        "integrity": [s["integrity"] for s in servers],
        "gunicorn_options": servers[0]["gunicorn_options"],
    }
    raw_cpu = statistics.median(r["cpu_us_per_reading"] or 0 for r in raws)
    result["raw_sqlite"] = {"readings_per_s": raw_median, "cpu_us_per_reading": raw_cpu, "runs": raws}
    result["ratio_to_raw_sqlite"] = round(ratio, 3)
    server_cpu = result["chargewatch"]["server_cpu_us_per_reading"]
    # CPU per reading, raw / server: robust to other jobs' load on the machine.
    result["cpu_ratio_to_raw_sqlite"] = round(raw_cpu / server_cpu, 3) if raw_cpu and server_cpu else None
    result["meets_target"] = {
        "readings_per_s": server_rate_median >= TARGET_READINGS_PER_S,
        "ratio_to_raw_sqlite": ratio >= TARGET_RATIO,
        "no_errors": result["chargewatch"]["error_count"] == 0,
    }
    result["notes"] = [
        harness.CPU_SHARING_NOTE.format(cpus=result["machine"]["cpus_usable"]),
        "raw_sqlite.readings_per_s counts only time inside BEGIN..COMMIT (building the row tuples in "
        "Python is excluded); readings_per_s_wall includes it. The raw loop runs in one process "
        "with the machine otherwise idle, so it also has more CPU than the server gets beside wrk.",
        f"Latency is per {args.size:,}-reading request at the given connection count (includes queueing).",
        "The ids of one request are spread over the whole (meter_id, time_ms) key space, like a "
        "gateway's batch of 1,000 devices whose day tables already hold many readings: each reading "
        "lands in a different B-tree leaf, so a commit writes about one 4 KiB page per reading to "
        "the WAL once the table is large. Both figures therefore fall as the day table grows; "
        "compare them at the same duration.",
        *harness.disturbance_notes(result),
    ]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    harness.emit(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
