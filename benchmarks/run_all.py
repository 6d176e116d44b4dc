"""Run every benchmark with its default settings and summarise the figures against the targets.

Runs ingest_single, ingest_lists (JSON lists, then line protocol bodies: ingest_lines),
current_state and worker_rss one after the other (each starts and stops its own servers on
127.0.0.1), writes benchmarks/results/<name>.json plus benchmarks/results/summary.json, and prints
a table. About 4 minutes with the defaults.

    .venv/bin/python benchmarks/run_all.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness

RESULTS_DIR = harness.BENCH_DIR / "results"
# result name -> (script, its arguments)
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "ingest_single": ("ingest_single", []),
    "ingest_lists": ("ingest_lists", []),
    "ingest_lines": ("ingest_lists", ["--format", "lines"]),
    "current_state": ("current_state", []),
    "worker_rss": ("worker_rss", []),
}


def run_benchmark(name: str, output: Path, duration: float | None) -> dict[str, Any]:
    script, script_args = BENCHMARKS[name]
    argv = [sys.executable, str(harness.BENCH_DIR / f"{script}.py"), *script_args, "--output", str(output)]
    if duration is not None:
        argv += ["--duration", str(duration)]
    output.unlink(missing_ok=True)
    print(f"== {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    process = harness.spawn(argv, show_stderr=True, grace_seconds=90)
    try:
        process.wait()
    finally:
        harness.stop(process)
    if process.returncode != 0 or not output.exists():
        raise RuntimeError(f"{name} failed with exit status {process.returncode}")
    print(f"== {name} done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return json.loads(output.read_text())


def _fmt(value: Any, unit: str = "") -> str:
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


Row = tuple[str, str, str, str]  # metric, value, target, verdict


def summary_rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []

    def add(metric: str, value: Any, unit: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        rows.append((metric, _fmt(value, unit), target, verdict))

    if "ingest_single" in results:
        r = results["ingest_single"]
        cw, bare = r["chargewatch"], r["bare_flask"]
        add("single POST /v1/ingest", cw["requests_per_s"], "req/s", ">= 2,500", r["meets_target"]["requests_per_s"])
        add("  bare Flask, same gunicorn", bare["requests_per_s"], "req/s")
        add("  ratio to bare Flask", r["ratio_to_bare_flask"], "", ">= 0.6", r["meets_target"]["ratio_to_bare_flask"])
        add("  CPU-time ratio to bare Flask", r["cpu_ratio_to_bare_flask"], "")
        add("  server CPU per request", f"{cw['server_cpu_ms_per_request']:.2f} vs bare "
            f"{bare['server_cpu_ms_per_request']:.2f}", "ms")
        add(f"  p50 / p99 (c{r['config']['connections']})",
            f"{cw['latency_ms']['p50']:.1f} / {cw['latency_ms']['p99']:.1f}", "ms")
        add("  errors (chargewatch + bare)", cw["error_count"] + bare["error_count"], "", "0",
            r["meets_target"]["no_errors"])
        for row in r.get("sweep", []):
            add(f"  sweep {row['workers']}w x {row['threads']}t", row["requests_per_s"], "req/s")
    for name, what in (("ingest_lists", "lists of 1,000 POST /v1/ingest"),
                       ("ingest_lines", "5,000 lines POST /api/v2/write")):
        if name not in results:
            continue
        r = results[name]
        cw = r["chargewatch"]
        add(what, cw["readings_per_s"], "readings/s", ">= 100,000", r["meets_target"]["readings_per_s"])
        add("  raw SQLite, same rows", r["raw_sqlite"]["readings_per_s"], "readings/s")
        add("  ratio to raw SQLite", r["ratio_to_raw_sqlite"], "", ">= 0.7", r["meets_target"]["ratio_to_raw_sqlite"])
        add("  CPU-time ratio to raw SQLite", r["cpu_ratio_to_raw_sqlite"], "")
        add("  CPU per reading", f"{cw['server_cpu_us_per_reading']:.1f} vs raw "
            f"{r['raw_sqlite']['cpu_us_per_reading']:.1f}", "us")
        add(f"  p50 / p99 per request (c{r['config']['connections']})",
            f"{cw['latency_ms']['p50']:.1f} / {cw['latency_ms']['p99']:.1f}", "ms")
        add("  errors", cw["error_count"], "", "0", r["meets_target"]["no_errors"])
    if "current_state" in results:
        r = results["current_state"]
        low, high = r["low_concurrency"], r["high_concurrency"]
        add(f"GET current, c{low['connections']} p99", low["latency_ms"]["p99"], "ms", "<= 2",
            r["meets_target"]["p99_ms_at_low_concurrency"])
        add(f"  c{low['connections']} p50 / req/s",
            f"{low['latency_ms']['p50']:.2f} ms / {low['requests_per_s']:,.0f}", "")
        if "bare_flask_low_concurrency" in r:
            bare = r["bare_flask_low_concurrency"]
            add(f"  bare Flask GET, c{bare['connections']} p50 / p99",
                f"{bare['latency_ms']['p50']:.2f} / {bare['latency_ms']['p99']:.2f}", "ms")
        add(f"  c{high['connections']} p50 / p99",
            f"{high['latency_ms']['p50']:.1f} / {high['latency_ms']['p99']:.1f}", "ms")
        add(f"  c{high['connections']} req/s", high["requests_per_s"], "req/s")
        if "serial" in r:
            serial = r["serial"]
            add(f"  c{serial['connections']} (service time) p50 / p99",
                f"{serial['latency_ms']['p50']:.2f} / {serial['latency_ms']['p99']:.2f}", "ms")
        add("  devices preloaded", r["preload"]["current_state_rows"], "")
    if "worker_rss" in results:
        r = results["worker_rss"]
        add("ingest worker peak RSS (max)", r["max_worker_peak_mb"], "MiB", "<= 150",
            r["meets_target"]["max_worker_mb"])
        add("  per worker RSS / peak",
            ", ".join(f"{w['rss_mb']:.0f}/{w['peak_rss_mb']:.0f}" for w in r["per_worker_mb"]), "MiB")
    return rows


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    headers = ("metric", "measured", "target", "")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out(line)
    out("-" * len(line))
    for row in rows:
        out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float,
                        help="seconds per wrk run, passed to every benchmark (default: each one's own, 10)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help="where <name>.json and summary.json go (default benchmarks/results/)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="before each benchmark, wait up to this long for other jobs on the "
                             "machine to go quiet (default: don't wait)")
    args = parser.parse_args()

    started = time.monotonic()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for name in args.only or BENCHMARKS:
        if args.wait_idle:
            busy = harness.wait_for_idle(args.wait_idle)
            print(f"== other jobs use {busy} cores", file=sys.stderr, flush=True)
        try:
            results[name] = run_benchmark(name, args.results_dir / f"{name}.json", args.duration)
        except RuntimeError as err:
            failures[name] = str(err)
            print(f"== {err}", file=sys.stderr)
    rows = summary_rows(results)
    notes = sorted({n for r in results.values() for n in r.get("notes", []) if n.startswith("WARNING")})
    summary = {
        "results": {name: str(args.results_dir / f"{name}.json") for name in results},
        "failures": failures,
        "table": [dict(zip(("metric", "measured", "target", "verdict"), row, strict=True)) for row in rows],
        "warnings": notes,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    (args.results_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print_table(rows)
    for note in notes:
        print(note)
    if results:
        machine = next(iter(results.values()))["machine"]
        print(f"\n{machine['cpus_usable']} cores ({machine['cpu_model']}) shared by wrk and the server; "
              f"details in {args.results_dir}/. Took {summary['elapsed_s']:.0f} s.")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
