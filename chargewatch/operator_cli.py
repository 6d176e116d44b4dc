"""Operator commands over the analytics data: ``chargewatch fleet``, ``chargewatch alerts``
(``list``, ``replay``). They read the stores directly (no token needed: the data directory is the
credential), on either store, built as ``chargewatch tasks`` builds them (``taskrunner.cli.open_runner``).

Part of the ``chargewatch`` command's entry, like ``chargewatch.cli``: the one place of the core
allowed to call into the service packages (the import contracts in pyproject.toml name it). They
are imported only inside the commands: importing analytics builds Flask and prometheus_client
state, and ``chargewatch serve`` must set ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is
first imported."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from chargewatch.settings import load_settings

_RELATIVE = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_moment(value: str, now: datetime) -> datetime:
    """``90m``, ``6h``, ``2d`` (that long before now) or RFC 3339 with an offset."""
    match = _RELATIVE.match(value.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give 90m, 6h, 2d or a time like 2026-11-23T06:00:00Z") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r}: give the offset too (Z or +02:00)")
    return moment


def _moment(value: str) -> datetime:
    return parse_moment(value, datetime.now(timezone.utc))


def _iso(ms: int | None) -> str:
    return "" if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _alert_json(alert: Any) -> dict[str, Any]:
    from analytics.schemas import AlertBody

    return AlertBody.of(alert).model_dump(mode="json")


def _print_table(headers: list[str], rows: list[list[str]], right: frozenset[int] = frozenset()) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))


def _print_alerts(alerts: list[Any]) -> None:
    if not alerts:
        print("no alerts")
        return
    _print_table(
        ["VEHICLE", "RULE", "STATE", "STARTED", "FIRED", "ENDED", "EFFICIENCY", "METER"],
        [[a.vehicle_id, a.rule, a.state + (" (replayed)" if a.replayed else ""), _iso(a.started_ms),
          _iso(a.fired_ms), _iso(a.resolved_ms), "" if a.value is None else f"{a.value * 100:.1f} %", a.meter_id or ""]
         for a in alerts], right=frozenset({6}))


def cmd_alerts(args: argparse.Namespace) -> int:
    if args.action == "replay":
        return _replay(args)
    from analytics import queries
    from taskrunner.cli import open_runner

    stores, _ = open_runner(load_settings())
    try:
        since_ms = int((time.time() - args.hours * 3600) * 1000)
        alerts = queries.list_alerts(stores.efficiency.alerts, since_ms, active_only=args.state == "active")
    finally:
        stores.close()
    if args.json:
        print(json.dumps({"alerts": [_alert_json(a) for a in alerts]}, indent=2))
    else:
        _print_alerts(alerts)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from taskrunner import replay
    from taskrunner.cli import open_runner
    from taskrunner.runner import RunnerBusy, hold_runner_lock

    settings = load_settings()
    now = datetime.now(timezone.utc)
    since_ms = int(args.since.timestamp() * 1000)
    stores, runner = open_runner(settings)
    efficiency = stores.efficiency
    try:
        last = efficiency.runner_state.load().get("last_stop_ms")
        if last is None:
            print("chargewatch: the task runner has not run on this data directory yet; start it "
                  "(`chargewatch run` or `chargewatch tasks`): its first run replays the last day itself",
                  file=sys.stderr)
            return 1
        until_ms = int(last) if args.until is None else min(int(last), int(args.until.timestamp() * 1000))
        if since_ms >= until_ms:
            print(f"chargewatch: --since must be before {_iso(until_ms)}, the last window stop judged",
                  file=sys.stderr)
            return 1
        now_ms = int(now.timestamp() * 1000)
        try:
            lock = hold_runner_lock(settings.data_dir)
        except RunnerBusy:
            lock = None
        if lock is not None:
            try:
                report = replay.replay(runner, since_ms, until_ms, now_ms, notify=args.notify)
            finally:
                os.close(lock)
        else:  # the running task runner owns alert state: it replays at its next run
            replay.queue_request(runner, since_ms, until_ms, args.notify, now_ms)
            print(f"queued for the running task runner; waiting for its next run, at "
                  f"{_iso(runner.next_run_ms(now_ms))} (it runs every {settings.efficiency.window_seconds} s) ...",
                  file=sys.stderr)
            deadline = time.monotonic() + args.wait
            while efficiency.runner_state.load().get(replay.DONE_AT, -1) < now_ms:
                if time.monotonic() > deadline:
                    print("chargewatch: the task runner has not done the replay yet; it will at its next run",
                          file=sys.stderr)
                    return 2
                time.sleep(1)
            report = None
        stored = efficiency.alerts.recent_alerts(since_ms, limit=1_000_000) + efficiency.alerts.open_alerts()
        alerts = [a for a in stored if since_ms < a.started_ms <= until_ms]
        alerts = sorted({(a.vehicle_id, a.rule, a.started_ms): a for a in alerts}.values(),
                        key=lambda a: (a.started_ms, a.vehicle_id))
    finally:
        stores.close()
    if args.json:
        print(json.dumps({"since": _iso(since_ms), "until": _iso(until_ms),
                          "notified": report.notifications if report else None,
                          "alerts": [_alert_json(a) for a in alerts]}, indent=2))
        return 0
    print(f"replayed {_iso(since_ms)} .. {_iso(until_ms)}"
          + (f": {report.stops} window stops in {report.duration_s:.1f} s, {report.removed} stored alerts replaced, "
             f"{report.notifications} notifications queued" if report else ""))
    _print_alerts(alerts)
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from analytics import queries
    from analytics.console.data import fleet_overview
    from taskrunner.cli import open_runner

    settings = load_settings()
    stores, runner = open_runner(settings)
    try:
        window_ms = settings.efficiency.window_seconds * 1000
        state = stores.efficiency.runner_state.load()
        now_ms = int(time.time() * 1000)
        stop_ms = min(now_ms, int(state["last_stop_ms"])) if "last_stop_ms" in state else now_ms
        period = queries.Period.aligned(stop_ms - args.hours * 3_600_000, stop_ms, window_ms)
        overview = fleet_overview(stores.efficiency, period, window_ms, runner.policy, status=args.status or "",
                                  per_page=args.limit)
    finally:
        stores.close()
    if args.json:
        print(json.dumps({
            "periodStart": _iso(period.start_ms), "periodEnd": _iso(period.end_ms), "vehicles": overview.vehicles,
            "belowThreshold": overview.below_threshold, "activeAlerts": overview.active_alerts,
            "efficiencyRatio": overview.efficiency,
            "rows": [{"vehicleId": r.vehicle_id, "efficiencyRatio": r.efficiency, "status": r.status,
                      "acKwh": r.ac_kwh, "dcKwh": r.dc_kwh, "lostKwh": r.lost_kwh,
                      "alert": _alert_json(r.alert) if r.alert else None} for r in overview.rows],
        }, indent=2))
        return 0
    efficiency_text = "n/a" if overview.efficiency is None else f"{overview.efficiency * 100:.1f} %"
    print(f"{_iso(period.start_ms)} .. {_iso(period.end_ms)}: {overview.vehicles} vehicles, "
          f"{overview.below_threshold} below {settings.alerts.threshold:.0%}, {overview.active_alerts} alerts firing, "
          f"fleet efficiency {efficiency_text}")
    if overview.rows:
        _print_table(
            ["VEHICLE", "EFFICIENCY", "STATUS", "AC KWH", "DC KWH", "LOST KWH", "ALERT"],
            [[r.vehicle_id, "n/a" if r.efficiency is None else f"{r.efficiency * 100:.1f} %", r.status,
              f"{r.ac_kwh:.2f}", f"{r.dc_kwh:.2f}", f"{r.lost_kwh:.2f}",
              f"{r.alert.state} since {_iso(r.alert.started_ms)}" if r.alert else ""] for r in overview.rows],
            right=frozenset({1, 3, 4, 5}))
    if overview.matching > len(overview.rows):
        print(f"... {overview.matching - len(overview.rows)} more (--limit)")
    return 0


def add_parsers(commands: Any) -> None:
    fleet = commands.add_parser(
        "fleet", help="the fleet's vehicles, worst efficiency first",
        description="Every vehicle with windows in the period: efficiency (DC/AC), status, AC and DC totals, "
                    "energy lost and open alert, worst first, as the console's overview shows them.")
    fleet.add_argument("--hours", type=int, default=24, help="period: the last HOURS up to the newest window "
                       "(default 24)")
    fleet.add_argument("--status", choices=["low", "above_one", "ok", "no_data"], help="only vehicles with this status")
    fleet.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")
    fleet.add_argument("--json", action="store_true", help="print one JSON object")
    fleet.set_defaults(func=cmd_fleet)

    alerts = commands.add_parser(
        "alerts", help="list alerts, or replay the alert rules over past hours",
        description="`chargewatch alerts` lists alerts (firing by default); `chargewatch alerts replay` evaluates "
                    "the alert rules over past window stops (history that arrived late, e.g. a backfill).")
    alerts.set_defaults(func=cmd_alerts, action="list", state="active", hours=24, json=False)
    actions = alerts.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="list alerts (the default action)",
                                 description="Alerts as GET /v1/analytics/alerts answers them.")
    listing.add_argument("--state", choices=["active", "recent"], default="active",
                         help="active: firing now (default); recent: firing, or resolved in the last --hours")
    listing.add_argument("--hours", type=int, default=24, help="with --state recent: how far back (default 24)")
    listing.add_argument("--json", action="store_true", help="print {\"alerts\": [...]} as the API does")
    replay = actions.add_parser(
        "replay", help="evaluate the alert rules over past hours and record what they find",
        description="Step the alert rules through every window stop since --since, as the runner would have "
                    "live, and store the alerts found there with their real times, marked replayed, in place "
                    "of the alerts that started in that range (replaying twice changes nothing). Webhooks "
                    "only with --notify. While a task runner runs, it does the replay at its next run.")
    replay.add_argument("--since", type=_moment, required=True, help="from: 90m, 6h, 2d (before now) or RFC 3339")
    replay.add_argument("--until", type=_moment, help="to (default: the last window stop the runner judged)")
    replay.add_argument("--notify", action="store_true",
                        help="queue webhooks for the replayed firings and resolutions (default: none)")
    replay.add_argument("--wait", type=float, default=400, help="seconds to wait for a running task runner "
                        "(default 400)")
    replay.add_argument("--json", action="store_true", help="print the range's alerts as JSON")
