"""Ingest worker memory: RSS of each gunicorn worker after sustained load.

Starts ``chargewatch serve ingest`` (default gunicorn options), then runs wrk phases one after
the other: single-reading posts (-c32), lists of 1,000 readings (-c8) and lists of 10,000
readings (-c4, the largest list chargewatch accepts by default). After each phase it reads
VmRSS (resident now) and VmHWM (peak resident since start) from /proc/<pid>/status of every
worker, found as the children of the gunicorn master.

Target: <= 150 MB per worker (judged on the peak, VmHWM, after all phases).

    .venv/bin/python benchmarks/worker_rss.py --duration 10 --output rss.json
"""

from __future__ import annotations

import time
from typing import Any

import harness

TARGET_MB = 150.0


def main() -> int:
    parser = harness.base_parser(__doc__)
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: chargewatch's default)")
    parser.add_argument("--threads", type=int, help="threads per worker (default: chargewatch's default)")
    parser.add_argument("--big-list", type=int, default=10_000,
                        help="readings per request in the last phase; 0 skips it (default %(default)s)")
    parser.add_argument("--server-env", action="append", default=[], metavar="CHARGEWATCH_X=VALUE",
                        help="extra setting for the service, e.g. CHARGEWATCH_SQLITE__CACHE_SIZE_MIB=8 "
                             "(repeatable)")
    harness.add_source_argument(parser)
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.server_env)

    phases = [("single_reading", "ingest_single", 32, None),
              ("list_1000", "ingest_list", 8, 1000)]
    if args.big_list:
        phases.append((f"list_{args.big_list}", "ingest_list", 4, args.big_list))

    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "worker_rss",
        "measures": "VmRSS / VmHWM of each ingest gunicorn worker after single-reading and list load",
        "target": {"max_worker_mb": TARGET_MB},
        "config": {"duration_s": args.duration, "phases": [p[0] for p in phases], "server_env": extra_env},
        "machine": harness.machine_info(),
    }
    data_dir = harness.make_data_dir("rss")
    server = None
    try:
        server = harness.start_chargewatch(data_dir, workers=args.workers, threads=args.threads,
                                           extra_env=extra_env, source_dir=args.source)
        result["gunicorn_options"] = server.gunicorn_options

        def snapshot(label: str, run: harness.WrkResult | None = None) -> dict[str, Any]:
            workers = server.workers()
            entry: dict[str, Any] = {
                "after": label,
                "master": {"pid": server.process.pid, **harness.memory_status(server.process.pid)},
                "workers": [{"pid": pid, **harness.memory_status(pid)} for pid in workers],
            }
            if run is not None:
                entry["load"] = {"requests_per_s": round(run.requests_per_s, 1),
                                 "p99_ms": round(run.latency_us["p99"] / 1000, 2),
                                 "error_count": run.error_count, "runs": [run.as_dict()]}
            return entry

        snapshots = [snapshot("start")]
        worker_pids = {w["pid"] for w in snapshots[0]["workers"]}
        for label, scenario, connections, size in phases:
            script = harness.lua_script(scenario, data_dir)
            lua_args = [harness.run_tag(), server.write_token] + ([str(size)] if size else [])
            run = harness.run_wrk(server.url + "/v1/ingest", script, duration_s=args.duration,
                                  connections=connections, threads=2, timeout_s=30, args=lua_args, server=server)
            snapshots.append(snapshot(label, run))
        result["snapshots"] = snapshots
        final = snapshots[-1]["workers"]
        result["workers_restarted"] = {w["pid"] for w in final} != worker_pids
    finally:
        harness.stop(server.process if server else None)
        harness.remove_data_dir(data_dir, args.keep_data)

    result["per_worker_mb"] = [{"pid": w["pid"], "rss_mb": w["VmRSS"], "peak_rss_mb": w["VmHWM"]} for w in final]
    peak = max(w["VmHWM"] for w in final)
    result["max_worker_peak_mb"] = peak
    result["max_worker_rss_mb"] = max(w["VmRSS"] for w in final)
    result["meets_target"] = {
        "max_worker_mb": peak <= TARGET_MB,
        "no_errors": all(s.get("load", {}).get("error_count", 0) == 0 for s in snapshots),
        "workers_not_restarted": not result["workers_restarted"],
    }
    from chargewatch.settings import SqliteSettings

    cache_mib = extra_env.get("CHARGEWATCH_SQLITE__CACHE_SIZE_MIB", SqliteSettings().cache_size_mib)
    result["notes"] = [
        f"Each SQLite connection may cache up to CHARGEWATCH_SQLITE__CACHE_SIZE_MIB ({cache_mib} MiB) of "
        "pages: the writer's cache fills as the database grows, so RSS keeps rising with longer "
        "runs until that cache is full (and every request thread's reader connection has its own).",
        "MB here are MiB (/proc reports kB). RSS counts pages shared with the master after fork "
        "(copy-on-write) in every worker, so the sum over workers overstates the machine's total.",
        "VmHWM is the peak RSS since the worker started; the big-list phase is the worst case for "
        "per-request memory (the body, the parsed list and the validated models live at once, "
        "times the number of threads serving such requests).",
        *harness.disturbance_notes(result),
    ]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    harness.emit(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
