"""Where a single-reading ``POST /v1/ingest`` spends its server CPU: py-spy under wrk, by part.

Starts chargewatch (or ``--source``'s) as ingest_single.py does, warms it up, then runs wrk (one
new meter reading per request) while py-spy records both workers (``--gil``: only the thread that
holds the GIL, i.e. Python running; ``--nonblocking``, so the workers are never paused). Each
sample's stack is put in one part by its deepest frame that names one (a pydantic frame under
``validate_batch`` is validation, one under the route's response is the response). The parts'
shares of the samples are scaled to the user CPU per request the workers used meanwhile (from
/proc); the system CPU per request (sockets, futexes, context switches, fsync: the kernel, where
no Python frame runs) is given beside it.

    .venv/bin/python benchmarks/profile_ingest.py --output profile.json
    .venv/bin/python benchmarks/profile_ingest.py --source /tmp/before   # another checkout

Needs py-spy (``pip install py-spy``) and ptrace rights on the workers (same user; root in a
container). The profiler costs the workers some throughput; the figures are per request, so that
matters less than it seems, but compare runs of this script with each other only.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness

# (part, substrings of a frame "function (file:line)"), tried from the leaf frame up: the first
# frame that matches any part's substring decides the sample's part.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("storage: WAL sync", ("sync_wal",)),
    ("storage: SQLite statements and commit", ("_write_requests", "_insert_history", "_commit_requests")),
    ("storage: group commit (queue, lock, wake-ups)", ("_group_commit", "SqliteReadingStore.write ",
                                                        "stores/sqlite_database.py")),
    ("metrics", ("prometheus_client/", "webapi/metrics.py", "_count_accepted", "_count_rejections")),
    ("validation", ("validate_batch", "chargewatch/readings.py")),
    ("pairing and bookkeeping", ("ingest/service.py", "chargewatch/pairing.py", "PairedReading")),
    ("auth", ("webapi/auth.py", "chargewatch/tokens.py")),
    ("body and its limits", ("webapi/body.py",)),
    ("route and response", ("ingest/routes.py", "ingest/schemas.py", "webapi/")),
    ("Flask and werkzeug", ("flask/", "werkzeug/")),
    ("gunicorn: HTTP, event loop, thread pool", ("gunicorn/", "webapi/worker.py", "concurrent/futures/",
                                                  "selectors.py", "threading.py", "socket.py")),
)


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, needles in PARTS:
            if any(needle in frame for needle in needles):
                return part
    return "other"


def parse_raw(path: Path) -> collections.Counter[str]:
    """py-spy's raw (collapsed stack) output: ``frame;frame;... count`` per line."""
    samples: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            samples[part_of(stack.split(";"))] += int(count)
    return samples


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of these processes so far."""
    user = system = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / harness.CLOCK_TICKS, system / harness.CLOCK_TICKS


def profile(args) -> dict[str, Any]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    data_dir = harness.make_data_dir("profile")
    server = None
    try:
        server = harness.start_chargewatch(data_dir, source_dir=args.source)
        script = harness.lua_script("ingest_single", data_dir)
        wrk_args = [harness.run_tag(), server.write_token or "none"]
        harness.run_wrk(server.url + "/v1/ingest", script, duration_s=args.warmup, connections=args.connections,
                        args=wrk_args, server=server)
        workers = harness.child_pids(server.process.pid)
        raw = data_dir / "py-spy.txt"
        spy = subprocess.Popen([py_spy, "record", "--subprocesses", "--pid", str(server.process.pid), "--gil",
                                "--nonblocking", "--rate", str(args.rate), "--format", "raw", "--output", str(raw),
                                "--duration", str(int(args.duration) + 2)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1)  # py-spy attaches
        user0, system0 = cpu_split(workers)
        run = harness.run_wrk(server.url + "/v1/ingest", script, duration_s=args.duration,
                              connections=args.connections, args=wrk_args, server=server)
        user1, system1 = cpu_split(workers)
        _, err = spy.communicate(timeout=args.duration + 60)
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')}")
        samples = parse_raw(raw)
    finally:
        harness.stop(server.process if server else None)
        harness.remove_data_dir(data_dir, args.keep_data)
    requests = max(1, run.requests)
    user_us, system_us = 1e6 * (user1 - user0) / requests, 1e6 * (system1 - system0) / requests
    total = sum(samples.values()) or 1
    parts = [{"part": part, "share_pct": round(100 * n / total, 1),
              "user_us_per_request": round(user_us * n / total, 1)} for part, n in samples.most_common()]
    return {
        "requests_per_s_while_profiled": round(run.requests_per_s, 1),
        "user_cpu_us_per_request": round(user_us, 1),
        "system_cpu_us_per_request": round(system_us, 1),
        "samples": total,
        "parts": parts,
    }


def main() -> int:
    parser = harness.base_parser(__doc__)
    harness.add_source_argument(parser)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=3, help="unprofiled warm-up seconds (default %(default)s)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default %(default)s)")
    args = parser.parse_args()
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "profile_ingest",
        "measures": "where the ingest workers' CPU goes per single-reading POST /v1/ingest, by part",
        "source": str(args.source or harness.BENCH_DIR.parent),
        "config": {"duration_s": args.duration, "connections": args.connections, "rate": args.rate},
        "machine": harness.machine_info(),
    }
    result.update(profile(args))
    width = max(len(p["part"]) for p in result["parts"])
    for p in result["parts"]:
        print(f"{p['part']:<{width}}  {p['share_pct']:5.1f} %  {p['user_us_per_request']:6.1f} us", file=sys.stderr)
    print(f"{'(user CPU per request)':<{width}}           {result['user_cpu_us_per_request']:6.1f} us\n"
          f"{'(system CPU per request)':<{width}}           {result['system_cpu_us_per_request']:6.1f} us",
          file=sys.stderr)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    harness.emit(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
