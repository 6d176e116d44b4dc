"""``chargewatch influx ...``: prepare an InfluxDB 2.x for chargewatch (``influx setup``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``influx`` and its subcommands on the top-level ``chargewatch`` parser."""
    influx = subparsers.add_parser("influx", help="prepare an InfluxDB 2.x (buckets, Flux tasks)",
                                   description="Prepare the InfluxDB 2.x that CHARGEWATCH_INFLUX__* names.")
    actions = influx.add_subparsers(dest="influx_action", required=True, metavar="ACTION")
    setup = actions.add_parser(
        "setup", help="create missing buckets, create or update the Flux tasks (idempotent: run it on every deploy)",
        description="Create the telemetry and efficiency buckets if missing (with retention), and create or "
        "update the Flux tasks of influxdb/tasks by name, from CHARGEWATCH_INFLUX__* and "
        "CHARGEWATCH_EFFICIENCY__* settings. Prints one line per bucket and task: created, updated, unchanged "
        "or exists.",
    )
    setup.add_argument("--dry-run", action="store_true", help="print the buckets and the Flux it would install")
    setup.set_defaults(func=cmd_setup)
    return influx


def cmd_setup(args: argparse.Namespace) -> int:
    from chargewatch.cli import _settings
    from chargewatch.influx.setup import SetupError, describe_plan, setup_influx

    settings = _settings()
    if args.dry_run:
        print(describe_plan(settings))
        return 0
    try:
        steps = setup_influx(settings)
    except SetupError as err:
        print(f"chargewatch: {err}", file=sys.stderr)
        return 1
    for step in steps:
        print(step)
    return 0
