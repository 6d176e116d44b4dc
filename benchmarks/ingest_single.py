"""Single-reading ingest: req/s of ``POST /v1/ingest`` (one meter reading per request).

Measures chargewatch (validation, auth, pairing, durable SQLite group commit with
synchronous=FULL, last-value cache, metrics) against benchmarks/bare_flask.py, a Flask app that
only reads the body and answers JSON, served by gunicorn with the same options
(chargewatch.cli.gunicorn_options: gthread, workers, threads, keepalive). wrk posts a different
valid reading per request (unique meterId, timestamp 30 s ago).

Target: >= 0.6 of bare Flask's req/s (aim at 0.7), which is >= 2,500 req/s on the 2-core machine
chargewatch is built on, with wrk on the same cores. ``--sweep`` runs chargewatch with workers
{2, 3} x threads {4, 8, 16} to justify the default gunicorn configuration.

    .venv/bin/python benchmarks/ingest_single.py --duration 10 --output single.json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import harness

TARGET_REQ_PER_S = 2500
TARGET_RATIO = 0.6


def measure(server: harness.Server, script: Path, args, *, duration: float, repeats: int,
            warmup: float) -> tuple[dict[str, Any], int]:
    """Warm up, then ``repeats`` wrk runs; returns (medians, requests sent including warm-up)."""
    sent = 0
    if warmup > 0:
        result = harness.run_wrk(server.url + "/v1/ingest", script, duration_s=warmup,
                                 connections=args.connections, threads=args.wrk_threads,
                                 args=[harness.run_tag(), server.write_token or "none"], server=server)
        sent += result.requests
    runs = []
    for _ in range(repeats):
        result = harness.run_wrk(server.url + "/v1/ingest", script, duration_s=duration,
                                 connections=args.connections, threads=args.wrk_threads,
                                 args=[harness.run_tag(), server.write_token or "none"], server=server)
        sent += result.requests
        runs.append(result)
    return harness.median_result(runs), sent


def compare(args) -> dict[str, Any]:
    data_dir = harness.make_data_dir("single")
    chargewatch = bare = None
    try:
        chargewatch = harness.start_chargewatch(data_dir, workers=args.workers, threads=args.threads,
                                                synchronous=args.synchronous, source_dir=args.source)
        bare = harness.start_bare_flask(chargewatch.gunicorn_options, data_dir)
        script = harness.lua_script("ingest_single", data_dir)
        # Interleave the two servers' runs so drift (thermal, noisy neighbours) hits both alike.
        cw_runs, bare_runs, cw_sent = [], [], 0
        for repeat in range(args.repeats):
            warmup = args.warmup if repeat == 0 else 0
            cw, sent = measure(chargewatch, script, args, duration=args.duration, repeats=1, warmup=warmup)
            cw_runs.append(cw)
            cw_sent += sent
            bf, _ = measure(bare, script, args, duration=args.duration, repeats=1, warmup=warmup)
            bare_runs.append(bf)
        chargewatch.stop()
        stored = harness.count_rows(data_dir / "chargewatch.db", "meter_[0-9]*")
        cw_result = _merge(cw_runs)
        bare_result = _merge(bare_runs)
        ratio = cw_result["requests_per_s"] / bare_result["requests_per_s"] if bare_result["requests_per_s"] else 0
        cw_cpu, bare_cpu = cw_result["server_cpu_ms_per_request"], bare_result["server_cpu_ms_per_request"]
        return {
            "chargewatch": cw_result,
            "bare_flask": bare_result,
            "ratio_to_bare_flask": round(ratio, 3),
            # The same comparison in server CPU per request: what the ratio of req/s would be if
            # both were CPU-bound on the same cores; robust to other jobs' load on the machine.
            "cpu_ratio_to_bare_flask": round(bare_cpu / cw_cpu, 3) if cw_cpu and bare_cpu else None,
            "integrity": {
                "requests_answered_incl_warmup": cw_sent,
                "rows_stored": stored,
                # Each answered request stored one new row; a request still in flight when wrk
                # stops (at most one per connection per wrk run) may be stored but not counted.
                "consistent": cw_sent <= stored <= cw_sent + args.connections * (args.repeats + (args.warmup > 0)),
            },
            "gunicorn_options": {"chargewatch": chargewatch.gunicorn_options, "bare_flask": bare.gunicorn_options},
        }
    finally:
        harness.stop(bare.process if bare else None)
        harness.stop(chargewatch.process if chargewatch else None)
        harness.remove_data_dir(data_dir, args.keep_data)


def _merge(single_run_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over results that each hold one run."""
    runs = [r for result in single_run_results for r in result["runs"]]
    objects = [harness.WrkResult(r["requests"], r["duration_s"], r["errors"], r["latency_us"],
                                 server_cpu_s=r["cpu"]["server_cpu_s"]) for r in runs]
    merged = harness.median_result(objects)
    merged["runs"] = runs
    return merged


def sweep(args) -> list[dict[str, Any]]:
    rows = []
    for workers in (2, 3):
        for threads in (4, 8, 16):
            data_dir = harness.make_data_dir(f"sweep-{workers}x{threads}")
            server = None
            try:
                server = harness.start_chargewatch(data_dir, workers=workers, threads=threads,
                                                   synchronous=args.synchronous)
                script = harness.lua_script("ingest_single", data_dir)
                result, _ = measure(server, script, args, duration=args.duration, repeats=1, warmup=args.warmup)
                run = result["runs"][0]
                rows.append({
                    "workers": workers, "threads": threads,
                    "requests_per_s": result["requests_per_s"],
                    "p50_ms": result["latency_ms"]["p50"], "p99_ms": result["latency_ms"]["p99"],
                    "errors": result["error_count"],
                    "server_cpu_ms_per_request": run["cpu"]["server_cpu_ms_per_request"],
                    "server_cores": run["cpu"]["server_cores"], "wrk_cores": run["cpu"]["wrk_cores"],
                    "other_cores": run["cpu"]["other_cores"],
                })
                print(f"sweep: workers={workers} threads={threads}: {result['requests_per_s']:.0f} req/s, "
                      f"p99 {result['latency_ms']['p99']:.1f} ms", flush=True)
            finally:
                harness.stop(server.process if server else None)
                harness.remove_data_dir(data_dir, args.keep_data)
    return rows


def main() -> int:
    parser = harness.base_parser(__doc__)
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: chargewatch's default)")
    parser.add_argument("--threads", type=int, help="threads per worker (default: chargewatch's default)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default %(default)s)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measured runs per server, interleaved; medians reported (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured warm-up seconds (default %(default)s)")
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full",
                        help="CHARGEWATCH_SQLITE__SYNCHRONOUS for chargewatch (default %(default)s)")
    harness.add_source_argument(parser)
    parser.add_argument("--sweep", action="store_true",
                        help="also run chargewatch with workers {2,3} x threads {4,8,16}, one run each")
    args = parser.parse_args()

    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "ingest_single",
        "measures": "req/s of POST /v1/ingest with one new meter reading per request, chargewatch vs "
                    "bare Flask under the same gunicorn options",
        "target": {"requests_per_s": TARGET_REQ_PER_S, "ratio_to_bare_flask": TARGET_RATIO},
        "config": {"duration_s": args.duration, "repeats": args.repeats, "warmup_s": args.warmup,
                   "connections": args.connections, "wrk_threads": args.wrk_threads,
                   "synchronous": args.synchronous},
        "machine": harness.machine_info(),
    }
    result.update(compare(args))
    cw = result["chargewatch"]
    result["meets_target"] = {
        "requests_per_s": cw["requests_per_s"] >= TARGET_REQ_PER_S,
        "ratio_to_bare_flask": result["ratio_to_bare_flask"] >= TARGET_RATIO,
        "no_errors": cw["error_count"] == 0 and result["bare_flask"]["error_count"] == 0,
    }
    if args.sweep:
        result["sweep"] = sweep(args)
    result["notes"] = [
        harness.CPU_SHARING_NOTE.format(cpus=result["machine"]["cpus_usable"]),
        "Latency is measured by wrk at the given connection count, so it includes queueing behind "
        "the other connections, not only service time.",
        "Every request inserts a new history row and a new current_state row (unique meterId), the "
        "most expensive case for the last-value cache.",
        "server_cpu_ms_per_request is the server's CPU time (all workers, user+system) over the "
        "requests answered; cores / this figure is the CPU-bound ceiling of req/s. "
        "cpu_ratio_to_bare_flask compares the two servers by it.",
    ]
    result["notes"] += harness.disturbance_notes(result)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    harness.emit(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
