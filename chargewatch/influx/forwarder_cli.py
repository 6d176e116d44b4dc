"""``chargewatch forward`` (the forwarder in the foreground) and ``chargewatch outbox ...`` (look into
the outbox and its dead letters, requeue or purge them)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chargewatch.stores.influx import InfluxReadingStore

logger = logging.getLogger("chargewatch.forward")


def add_parser(subparsers: Any) -> None:
    """Register ``forward`` and ``outbox`` on the ``chargewatch`` command."""
    forward = subparsers.add_parser(
        "forward", help="ship the outbox to InfluxDB (influx mode; one per data directory)",
        description="Ship readings from the local outbox to InfluxDB (CHARGEWATCH_INFLUX__URL, __ORG, __TOKEN, "
        "__TELEMETRY_BUCKET) until stopped. Only what InfluxDB acknowledges is deleted.",
    )
    forward.set_defaults(func=cmd_forward)

    outbox = subparsers.add_parser("outbox", help="the InfluxDB outbox: status and dead letters",
                                   description="Inspect the local outbox of lines waiting for InfluxDB.")
    actions = outbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="queue depth, lag, dead letters, forwarder state",
                                description="Print the queue depth, its lag, dead letters and the forwarder's state.")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    dead = actions.add_parser("dead-letters", help="list lines InfluxDB refused; requeue or purge them",
                              description="List the lines InfluxDB refused (400/422); --requeue or --purge them.")
    dead.add_argument("--json", action="store_true", help="print a JSON list")
    dead.add_argument("--limit", type=int, default=None, help="list at most this many (oldest first)")
    repair = dead.add_mutually_exclusive_group()
    repair.add_argument("--requeue", metavar="IDS", type=_ids,
                        help="put dead letters back in the outbox: comma-separated ids, or 'all'")
    repair.add_argument("--purge", metavar="IDS", type=_ids, help="delete dead letters: comma-separated ids, or 'all'")
    outbox.set_defaults(func=cmd_outbox)


def _ids(text: str) -> list[int] | str:
    """'all', or a list of dead-letter ids."""
    if text.strip().lower() == "all":
        return "all"
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = []
    if not ids:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'all' or comma-separated dead-letter ids")
    return ids


def _open(settings: Any) -> InfluxReadingStore:
    from chargewatch.stores import StorageUnavailable
    from chargewatch.stores.influx import InfluxReadingStore

    try:
        return InfluxReadingStore.from_settings(settings)
    except StorageUnavailable as err:
        raise SystemExit(f"chargewatch: {err}") from None


def cmd_forward(args: argparse.Namespace) -> int:
    from chargewatch.cli import _settings, run_once_in_foreground
    from chargewatch.influx.forwarder import Forwarder, InfluxWriteClient, hold_forwarder_lock

    settings = _settings()
    if settings.store != "influx":
        raise SystemExit("chargewatch: the forwarder ships the outbox of influx mode; set CHARGEWATCH_STORE=influx")
    if not settings.influx.token.get_secret_value():
        raise SystemExit("chargewatch: CHARGEWATCH_INFLUX__TOKEN is not set (an InfluxDB API token with write "
                         "access to the telemetry bucket)")
    lock, stopping = run_once_in_foreground(lambda: hold_forwarder_lock(settings.sqlite_path))
    store = _open(settings)
    client = InfluxWriteClient.from_settings(settings.influx)
    forwarder = Forwarder.from_settings(store.outbox, client, settings.influx)
    logger.info("forwarding %s to %s (org %s, bucket %s), batches of up to %d lines", settings.sqlite_path,
                settings.influx.url, settings.influx.org, settings.influx.telemetry_bucket,
                settings.influx.batch_max_lines)
    try:
        forwarder.run(stopping.wait)
    finally:
        client.close()
        store.close()
        os.close(lock)
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from chargewatch.cli import _settings

    store = _open(_settings())
    try:
        if args.action == "status":
            _print_status(store.outbox.stats(exact=True), args.json)
        elif args.requeue is not None:
            count = store.outbox.requeue(None if args.requeue == "all" else args.requeue)
            print(f"requeued {count} dead letter(s): the forwarder ships them after the lines already waiting")
        elif args.purge is not None:
            count = store.outbox.purge(None if args.purge == "all" else args.purge)
            print(f"purged {count} dead letter(s)")
        else:
            _print_dead_letters(store.outbox.dead_letters(args.limit), args.json)
    finally:
        store.close()
    return 0


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")


def _print_status(stats: Any, as_json: bool) -> None:
    now_ms = int(time.time() * 1000)
    if as_json:
        shown = asdict(stats)
        shown["lag_seconds"] = stats.lag_seconds(now_ms)
        for key in ("oldest_created_ms", "last_success_ms", "heartbeat_ms"):
            shown[key.removesuffix("_ms") + "_at"] = _iso(shown.pop(key))
        print(json.dumps(shown))
        return
    print(f"outbox:       {stats.depth} readings waiting (bound {stats.max_rows})"
          + (f", oldest {stats.lag_seconds(now_ms):.1f} s old" if stats.depth else ""))
    print(f"dead letters: {stats.dead_letters}" + ("  (chargewatch outbox dead-letters)" if stats.dead_letters else ""))
    failures = ", ".join(f"{reason} {count}" for reason, count in stats.failures.items()) or "none"
    print(f"shipped:      {stats.shipped_total} lines; failed requests: {failures}")
    if stats.forwarder_state is None:
        print("forwarder:    has never run (chargewatch forward)")
    else:
        heartbeat = f", last seen {(now_ms - stats.heartbeat_ms) / 1000:.1f} s ago" if stats.heartbeat_ms else ""
        success = f", last write acknowledged {_iso(stats.last_success_ms)}" if stats.last_success_ms else ""
        print(f"forwarder:    {stats.forwarder_state}{heartbeat}{success}")
    if stats.last_error:
        print(f"last error:   {stats.last_error}")


def _print_dead_letters(letters: list[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps([
            {**asdict(letter), "created_at": _iso(letter.created_ms), "failed_at": _iso(letter.failed_ms)}
            for letter in letters
        ]))
        return
    if not letters:
        print("no dead letters")
        return
    for letter in letters:
        print(f"#{letter.id}  {_iso(letter.failed_ms)}  HTTP {letter.status}  {letter.error}")
        print(f"    {letter.line}")
    print(f"{len(letters)} dead letter(s); --requeue IDS|all once the cause is fixed, or --purge IDS|all")
