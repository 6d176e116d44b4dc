"""Headless load test of a local chargewatch: one command, bounded in time, judging its own result.

    python -m loadtests.run --host http://127.0.0.1:8080 --run-time 10m --fleet-pairs 20000 \
        --report-dir reports/loadtest

Starts nothing but locust (``loadtests/locustfile.py``) against an ingest service that is already
running on this machine (only loopback hosts are accepted). It sizes the device users for
``--fleet-pairs`` pairs posting every 60 s, or for ``--rate`` device requests/s (the locustfile's
docstring has the arithmetic), stops after ``--run-time``, writes ``locust_stats.csv`` (and the
other locust CSVs), ``report.html`` and ``summary.json`` under ``--report-dir``, and exits non-zero
when any request failed, none was made, or p99 exceeded ``--p99-threshold-ms``. Tokens default to
``CHARGEWATCH_LOADTEST_WRITE_TOKEN`` / ``..._READ_TOKEN``, else to the tokens chargewatch itself
uses (``chargewatch tokens``).
"""

from __future__ import annotations

import argparse
import csv
import ipaddress
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MAX_RUN_SECONDS = 2 * 3600
SECONDS_PER_READING = 60.0


def is_loopback_url(url: str) -> bool:
    """True for http(s) URLs on this machine: localhost, 127.0.0.0/8 or ::1."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def device_users_for(rate: float, pairs_per_user: int) -> int:
    """DeviceUsers needed for ``rate`` requests/s when each stands for 2P devices posting every 60 s."""
    return max(1, math.ceil(rate * SECONDS_PER_READING / (2 * pairs_per_user) - 1e-9))


def _run_seconds(text: str) -> int:
    from simulator.cli import duration_seconds

    seconds = duration_seconds(text)
    if seconds > MAX_RUN_SECONDS:
        raise argparse.ArgumentTypeError(f"a run is at most {MAX_RUN_SECONDS // 3600} h")
    return max(1, round(seconds))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="http://127.0.0.1:8080", help="ingest base URL (loopback only)")
    parser.add_argument("--run-time", type=_run_seconds, default=60, help="how long to run, e.g. 60s, 10m (at most 2h)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--fleet-pairs", type=int, default=20_000,
                      help="size the device load as this many pairs posting every 60 s (default 20,000: "
                      "twice a 10,000-pair fleet, 666.7 req/s)")
    load.add_argument("--rate", type=float, help="or: device requests/s to offer")
    parser.add_argument("--pairs-per-user", type=int, default=50, help="pairs one DeviceUser stands for (default 50)")
    parser.add_argument("--gateway-users", type=int, default=1, help="gateways posting lists (default 1)")
    parser.add_argument("--gateway-pairs", type=int, default=100, help="pairs behind each gateway (default 100)")
    parser.add_argument("--dashboard-users", type=int, default=2, help="dashboards reading (default 2)")
    parser.add_argument("--dashboard-interval", type=float, default=1.0, help="seconds between a dashboard's reads")
    parser.add_argument("--analytics-url", default=os.environ.get("CHARGEWATCH_LOADTEST_ANALYTICS_URL", ""),
                        help="analytics base URL (loopback only); dashboards then read /v1/analytics too "
                        "(env CHARGEWATCH_LOADTEST_ANALYTICS_URL)")
    parser.add_argument("--p99-threshold-ms", type=float, default=500.0, help="fail above this p99 (default 500)")
    parser.add_argument("--report-dir", type=Path, default=Path("reports/loadtest"), help="where reports go")
    parser.add_argument("--write-token", help="ingest write token (default: see above)")
    parser.add_argument("--read-token", help="read token (default: see above)")
    parser.add_argument("--processes", type=int, default=1, help="locust processes generating load (default 1)")
    parser.add_argument("--ramp-seconds", type=float, default=5.0, help="seconds to start every user (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    return parser


def _tokens(args: argparse.Namespace) -> tuple[str, str]:
    write = args.write_token or os.environ.get("CHARGEWATCH_LOADTEST_WRITE_TOKEN")
    read = args.read_token or os.environ.get("CHARGEWATCH_LOADTEST_READ_TOKEN")
    if write and read:
        return write, read
    from chargewatch.settings import Settings
    from chargewatch.tokens import load_tokens

    tokens = load_tokens(Settings())
    return write or tokens.write[0], read or tokens.read[0]


def locust_command(args: argparse.Namespace, users: int, csv_prefix: Path, html: Path) -> list[str]:
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", args.host, "--users", str(users),
        "--spawn-rate", f"{max(1.0, users / max(args.ramp_seconds, 0.1)):.1f}",
        "--run-time", f"{args.run_time}s", "--stop-timeout", "10",
        "--csv", str(csv_prefix), "--html", str(html), "--exit-code-on-error", "1", "--only-summary",
        "--pairs-per-user", str(args.pairs_per_user),
        "--gateway-users", str(args.gateway_users), "--gateway-pairs", str(args.gateway_pairs),
        "--dashboard-users", str(args.dashboard_users), "--dashboard-interval", str(args.dashboard_interval),
        "--p99-threshold-ms", str(args.p99_threshold_ms), "--seed", str(args.seed),
    ]
    if args.processes > 1:
        command += ["--processes", str(args.processes)]
    return command


def read_stats(csv_prefix: Path) -> dict[str, dict[str, str]]:
    """Rows of locust's ``<prefix>_stats.csv`` by name ("Aggregated" is the total)."""
    with open(f"{csv_prefix}_stats.csv", newline="") as handle:
        return {f"{row['Type']} {row['Name']}".strip(): row for row in csv.DictReader(handle)}


def summarize(rows: dict[str, dict[str, str]]) -> dict[str, object]:
    total = rows["Aggregated"]
    return {
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "requestsPerSecond": float(total["Requests/s"]),
        "p50Ms": float(total["50%"]),
        "p99Ms": float(total["99%"]),
        "maxMs": float(total["Max Response Time"]),
        "byRequest": {
            name: {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                   "requestsPerSecond": float(row["Requests/s"]), "p50Ms": float(row["50%"]),
                   "p99Ms": float(row["99%"])}
            for name, row in rows.items() if name != "Aggregated"
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for url in filter(None, (args.host, args.analytics_url)):
        if not is_loopback_url(url):
            print(f"loadtests.run: refusing {url}: load tests run only against this machine "
                  "(localhost, 127.0.0.0/8, ::1)", file=sys.stderr)
            return 2
    write, read = _tokens(args)
    rate = args.rate if args.rate is not None else 2 * args.fleet_pairs / SECONDS_PER_READING
    device_users = device_users_for(rate, args.pairs_per_user)
    users = device_users + max(0, args.gateway_users) + max(0, args.dashboard_users)
    args.report_dir.mkdir(parents=True, exist_ok=True)
    csv_prefix, html = args.report_dir / "locust", args.report_dir / "report.html"
    offered = device_users * 2 * args.pairs_per_user / SECONDS_PER_READING
    print(f"loadtests.run: {device_users} device users x {2 * args.pairs_per_user} devices = {offered:.1f} req/s, "
          f"{args.gateway_users} gateways x {2 * args.gateway_pairs} readings/min, {args.dashboard_users} dashboards; "
          f"{args.run_time} s against {args.host}", file=sys.stderr)
    env = {**os.environ, "CHARGEWATCH_LOADTEST_WRITE_TOKEN": write, "CHARGEWATCH_LOADTEST_READ_TOKEN": read,
           "CHARGEWATCH_LOADTEST_ANALYTICS_URL": args.analytics_url}
    process = subprocess.Popen(locust_command(args, users, csv_prefix, html), env=env, start_new_session=True)
    try:
        locust_status = process.wait(timeout=args.run_time + args.ramp_seconds + 120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        print("loadtests.run: locust did not stop by itself; killed", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGINT)
        process.wait()
        return 130
    try:
        summary = summarize(read_stats(csv_prefix))
    except (OSError, KeyError, ValueError) as err:
        print(f"loadtests.run: no usable stats in {csv_prefix}_stats.csv ({err})", file=sys.stderr)
        return locust_status or 1
    problems = []
    if summary["requests"] == 0:
        problems.append("no request was made")
    if summary["failures"]:
        problems.append(f"{summary['failures']} requests failed")
    if summary["p99Ms"] > args.p99_threshold_ms:
        problems.append(f"p99 {summary['p99Ms']:.0f} ms > {args.p99_threshold_ms:.0f} ms")
    summary.update({"host": args.host, "runSeconds": args.run_time, "offeredDeviceRequestsPerSecond": offered,
                    "users": users, "p99ThresholdMs": args.p99_threshold_ms,
                    "passed": not problems and locust_status == 0,
                    "problems": problems, "locustExitCode": locust_status})
    (args.report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"loadtests.run: {summary['requests']:,} requests, {summary['failures']} failures, "
          f"{summary['requestsPerSecond']:.1f} req/s, p50 {summary['p50Ms']:.0f} ms, p99 {summary['p99Ms']:.0f} ms "
          f"-> {'PASSED' if summary['passed'] else 'FAILED: ' + '; '.join(problems or ['locust exit code'])}; "
          f"reports in {args.report_dir}")
    return 0 if summary["passed"] else (locust_status or 1)


if __name__ == "__main__":
    sys.exit(main())
