"""``chargewatch simulate MODE``: an emulated fleet posting to a running ingest service.

- ``live``: real time; each device posts one reading every 60 s (per-pair phase, a little jitter).
- ``accelerated --speed X --duration D``: the last X*D seconds of simulated time, compressed into
  D seconds of real time, ending now (timestamps never reach the future).
- ``backfill --hours N``: N hours of history ending now, posted as lists as fast as ingest takes them.

Faulty chargers (``--faulty-share``) degrade at a random moment in the first half of the simulated
span (the first 30 min of an open-ended live run). Always seeded (``--seed``), so the same command
describes the same fleet; ``--ground-truth FILE`` writes what really happened (true efficiency and
fault onset per vehicle, exact kWh totals of what was generated, lost and delivered). Exit status:
0 when every reading sent was accepted, 1 when any was rejected or could not be delivered, 2 when
ingest refused the token.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from chargewatch.settings import load_settings

MAX_LIVE_SECONDS = 100 * 365 * 86_400  # "until stopped"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration_seconds(text: str) -> float:
    """'90', '90s', '10m', '2h' or '1d' as seconds (argparse type)."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration such as 90s, 10m or 2h")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction from 0 to 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``simulate`` on the ``chargewatch`` command's subparsers."""
    parser = subparsers.add_parser(
        "simulate", help="emulate a fleet of meters and vehicles posting to ingest",
        description=__doc__.split("\n\n", 1)[1].replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(parser)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the modes and their options to ``parser``.

    Shared by ``chargewatch simulate`` and ``python -m simulator``."""
    common = argparse.ArgumentParser(add_help=False)
    target = common.add_argument_group("where to send")
    target.add_argument("--url", help="ingest base URL (default http://CHARGEWATCH_INGEST__HOST:PORT, "
                        "i.e. http://127.0.0.1:8080)")
    target.add_argument("--token", help="write token (default: CHARGEWATCH_AUTH__WRITE_TOKENS, else the data "
                        "directory's tokens file, as `chargewatch tokens` shows)")
    target.add_argument("--concurrency", type=_positive_int,
                        help="requests in flight at once (default 8 live/accelerated, 4 backfill)")
    fleet = common.add_argument_group("the fleet")
    fleet.add_argument("--pairs", type=_positive_int, default=10, help="vehicle+meter pairs (default 10)")
    fleet.add_argument("--seed", type=int, default=0,
                       help="random seed; the same seed gives the same fleet (default 0)")
    fleet.add_argument("--faulty-share", type=_fraction, default=0.1,
                       help="share of chargers that degrade below 85%% efficiency at a random onset (default 0.1)")
    fleet.add_argument("--loss-rate", type=_fraction, default=0.02, help="share of readings lost (default 0.02)")
    fleet.add_argument("--duplicate-rate", type=_fraction, default=0.01,
                       help="share of readings sent twice (default 0.01)")
    fleet.add_argument("--late-rate", type=_fraction, default=0.01,
                       help="share of readings sent 1-10 min late, out of order (default 0.01)")
    output = common.add_argument_group("output")
    output.add_argument("--ground-truth", type=Path, metavar="FILE",
                        help="write the ground truth (per vehicle true efficiency, fault onset, kWh totals) as JSON")
    output.add_argument("--json", action="store_true", help="print the final summary as JSON")
    output.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")

    modes = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    live = modes.add_parser("live", parents=[common], help="real time: every device posts every 60 s",
                            description="Post in real time: every device every 60 s, until --duration or "
                                        "Ctrl-C/SIGTERM, then print a summary.")
    live.add_argument("--duration", type=duration_seconds, help="stop after this long (default: until Ctrl-C)")
    accelerated = modes.add_parser("accelerated", parents=[common],
                                   help="simulated time runs --speed times as fast, ending now",
                                   description="Simulate speed x duration of history ending now, compressed into "
                                               "--duration of real time.")
    accelerated.add_argument("--speed", type=float, default=60.0, help="time factor (default 60: an hour a minute)")
    accelerated.add_argument("--duration", type=duration_seconds, default=60.0,
                             help="real time to run (default 60s); simulates speed*duration ending now")
    backfill = modes.add_parser("backfill", parents=[common], help="N hours of history ending now, as lists",
                                description="Post --hours of history ending now as fast as ingest takes it, "
                                            "in lists of --batch-size readings.")
    backfill.add_argument("--hours", type=float, default=24.0, help="hours of history (default 24)")
    backfill.add_argument("--batch-size", type=_positive_int, default=500, help="readings per request (default 500)")
    parser.set_defaults(func=run_simulate)


# -- running -------------------------------------------------------------------------------------

def default_url(settings: Any) -> str:
    host = settings.ingest.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.ingest.port}"


def default_token(settings: Any) -> str | None:
    from chargewatch.tokens import load_tokens

    if not settings.auth.enabled:
        return None
    try:
        return load_tokens(settings).write[0]
    except ValueError as err:
        raise SystemExit(f"chargewatch: {err}") from None


def simulated_span(args: argparse.Namespace, now: datetime, retention_days: int) -> tuple[datetime, datetime, float]:
    """(simulated start, simulated end, speed) for the mode, from the wall-clock time ``now``."""
    from simulator.devices import INTERVAL

    now = now.replace(microsecond=0)
    # A reading's timestamp can be up to one interval (phase) plus 30 s (clock drift) past its step.
    latest_step_end = now - INTERVAL - timedelta(seconds=30)
    longest = timedelta(days=retention_days) - timedelta(hours=1)  # margin for the run itself
    if args.mode == "live":
        seconds = args.duration or MAX_LIVE_SECONDS
        return now, now + timedelta(seconds=seconds), 1.0
    if args.mode == "accelerated":
        if args.speed <= 0:
            raise SystemExit("chargewatch simulate: --speed must be positive")
        span = timedelta(seconds=args.speed * args.duration)
        speed = args.speed
    else:
        span = timedelta(hours=args.hours)
        speed = float("inf")
        if args.hours <= 0:
            raise SystemExit("chargewatch simulate: --hours must be positive")
    if span > longest:
        raise SystemExit(f"chargewatch simulate: {span} of history does not fit ingest's retention of "
                         f"{retention_days} days (at most {longest})")
    return latest_step_end - span, latest_step_end, speed


def run_simulate(args: argparse.Namespace) -> int:
    try:
        from simulator.sender import Sender, SendRefused
    except ImportError as err:  # requests is in the loadtest and dev extras
        raise SystemExit(f"chargewatch simulate needs {err.name}: pip install 'chargewatch[loadtest]'") from None
    from simulator.devices import Courier, DeliveryFaults, Fleet, FleetConfig, GroundTruth, stream_deliveries
    from simulator.modes import run_backfill, run_realtime
    from simulator.progress import ProgressBar

    settings = load_settings()
    url = args.url or default_url(settings)
    token = args.token if args.token is not None else default_token(settings)
    start, end, speed = simulated_span(args, datetime.now(timezone.utc), settings.retention_days)
    span = min(end - start, timedelta(hours=1)) if args.mode == "live" and not args.duration else end - start
    try:
        config = FleetConfig(pairs=args.pairs, seed=args.seed, faulty_share=args.faulty_share,
                             fault_onset_within=span / 2)
        faults = DeliveryFaults(loss_rate=args.loss_rate, duplicate_rate=args.duplicate_rate, late_rate=args.late_rate)
    except ValueError as err:
        raise SystemExit(f"chargewatch simulate: {err}") from None
    fleet = Fleet(config, start)
    truth = GroundTruth(fleet)
    deliveries = stream_deliveries(fleet, Courier(faults, args.seed), end, truth)
    sender = Sender(url, token)
    backfill = args.mode == "backfill"
    steps = -(-(end - fleet.start) // config.interval)
    progress = ProgressBar(args.mode, total=steps * args.pairs * 2 if backfill else None, enabled=args.progress)
    until = "until stopped (Ctrl-C)" if args.mode == "live" and not args.duration else f"to {end:%Y-%m-%d %H:%M:%S} UTC"
    print(f"chargewatch simulate {args.mode}: {args.pairs} pairs, seed {args.seed}, simulated "
          f"{fleet.start:%Y-%m-%d %H:%M:%S} UTC {until} -> {url}", file=sys.stderr)
    status, interrupted, timing = 0, False, None
    started = time.monotonic()

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM (a service manager, kill) ends the run like Ctrl-C: with the summary

    signal.signal(signal.SIGTERM, _terminate)
    try:
        if backfill:
            timing = run_backfill(deliveries, sender.send_many, truth, batch_size=args.batch_size,
                                  concurrency=args.concurrency or 4, progress=progress)
        else:
            timing = run_realtime(deliveries, sender.send_one, truth, simulated_start=fleet.start,
                                  simulated_end=end, speed=speed, concurrency=args.concurrency or 8,
                                  progress=progress)
    except KeyboardInterrupt:
        interrupted = True
    except SendRefused as err:
        print(f"chargewatch simulate: {err}", file=sys.stderr)
        status = 2
    finally:
        progress.close()
        sender.close()
    stats = sender.stats
    elapsed = time.monotonic() - started
    summary = {
        "mode": args.mode, "url": url, "pairs": args.pairs, "seed": args.seed,
        "simulatedStart": fleet.start.isoformat(), "simulatedEnd": (truth.end or fleet.start).isoformat(),
        "interrupted": interrupted, "elapsedSeconds": round(elapsed, 3),
        "readingsPerSecond": round(stats.sent / elapsed, 1) if elapsed > 0 else None,
        "maxLagSeconds": round(timing.max_lag_seconds, 3) if timing else None,
        **stats.to_json(),
    }
    if args.ground_truth:
        args.ground_truth.write_text(json.dumps(truth.to_json(), indent=2) + "\n")
    print(json.dumps(summary, indent=2) if args.json else _describe(summary))
    if status == 0 and (stats.rejected or stats.failed):
        status = 1
    return status


def _describe(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['mode']}: {summary['sent']:,} readings sent in {summary['requests']:,} requests over "
        f"{summary['elapsedSeconds']:.1f} s ({summary['readingsPerSecond'] or 0:,.0f} readings/s)"
        + (" [interrupted]" if summary["interrupted"] else ""),
        f"  accepted {summary['accepted']:,} (stored {summary['stored']:,}, duplicates {summary['duplicates']:,}), "
        f"rejected {summary['rejected']:,}, retried {summary['retried']:,}, failed {summary['failed']:,}",
    ]
    lines.extend(f"  ! {error}" for error in summary["errors"][:5])
    return "\n".join(lines)
