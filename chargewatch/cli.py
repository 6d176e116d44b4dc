"""The ``chargewatch`` command: run the services and look after the embedded store.

Modules that import prometheus_client (the services) are imported only after ``serve`` has set
``PROMETHEUS_MULTIPROC_DIR``, which prometheus_client reads once at import.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargewatch import __version__
from chargewatch.locks import run_once_in_foreground
from chargewatch.settings import Settings, load_settings
from chargewatch.stores import StorageUnavailable

if TYPE_CHECKING:
    from chargewatch.stores.sqlite import SqliteReadingStore

logger = logging.getLogger("chargewatch")

SERVICES = {"ingest": "ingest:create_app()", "analytics": "analytics:create_app()"}


def _open_store(settings: Settings) -> SqliteReadingStore:
    from chargewatch.bootstrap import open_reading_store

    try:
        return open_reading_store(settings)
    except StorageUnavailable as err:
        raise SystemExit(f"chargewatch: {err}") from None


# -- serve / run ---------------------------------------------------------------------------------

def gunicorn_options(settings: Settings, service: str, host: str | None, port: int | None) -> dict[str, Any]:
    """gunicorn settings; the defaults were chosen by benchmarks/ (see README, Performance)."""
    from webapi.worker import worker_class

    svc = settings.ingest if service == "ingest" else settings.analytics
    return {
        "bind": f"{host or svc.host}:{port if port is not None else svc.port}",
        "workers": svc.workers,
        # gthread (threads let concurrent requests share one group commit), guarded against slow and
        # early-refused clients: see webapi/worker.py.
        "worker_class": worker_class(svc.request_timeout_seconds),
        "threads": svc.threads,
        # gunicorn's defaults, stated: longer request lines answer 414, more or longer header
        # fields 431, both in the JSON error shape (README, Responses).
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "keepalive": 75,  # devices and gateways reuse connections between posts
        "timeout": 60,
        "graceful_timeout": 20,
        "proc_name": f"chargewatch-{service}",
        "loglevel": settings.log_level.lower(),
        "accesslog": None,
        "child_exit": _mark_worker_dead,
        **({"post_worker_init": _start_store_writer} if service == "ingest" else {}),
    }


def _start_store_writer(worker: Any) -> None:
    # Connect to the SQLite store's shared writer (starting it) before the first request arrives.
    app = getattr(worker, "application", worker.wsgi)  # GuardedThreadWorker wraps the app it serves
    store = app.extensions.get("reading_store")
    if hasattr(store, "start_writer"):
        store.start_writer()


def _mark_worker_dead(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _prepare_metrics_dir(settings: Settings, service: str) -> None:
    directory = settings.data_dir / "metrics" / service
    shutil.rmtree(directory, ignore_errors=True)  # counters restart with the service
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _prepare_store(settings: Settings) -> None:
    """Once per start, before workers fork: schema, tokens file, pairing file."""
    from chargewatch.pairing import PairingConflict, read_pairing_file
    from chargewatch.tokens import load_tokens

    store = _open_store(settings)
    try:
        if settings.pairing.file:
            try:
                pairs = read_pairing_file(settings.pairing.file)
                store.save_pairings(pairs)
            except (ValueError, PairingConflict) as err:
                raise SystemExit(f"chargewatch: {err}") from None
            logger.info("loaded %d pairings from %s", len(pairs), settings.pairing.file)
    finally:
        store.close()
    if settings.auth.enabled:
        try:
            load_tokens(settings)
        except ValueError as err:
            raise SystemExit(f"chargewatch: {err}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    settings = load_settings()
    _prepare_metrics_dir(settings, args.service)
    _prepare_store(settings)
    options = gunicorn_options(settings, args.service, args.host, args.port)
    if args.workers:
        options["workers"] = args.workers
    if args.threads:
        options["threads"] = args.threads
    app_uri = SERVICES[args.service]

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)
            if "control_socket" in self.cfg.settings:
                # gunicorn >= 23 opens a control socket at one per-user path by default; give each
                # service its own, so ingest and analytics never take over each other's.
                self.cfg.set("control_socket", str(settings.data_dir / f"{args.service}.ctl"))

        def load(self) -> Any:
            from gunicorn.util import import_app

            return import_app(app_uri)

    Server().run()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Every service on the embedded store, in the foreground, until Ctrl-C."""
    from chargewatch.locks import AlreadyRunning, hold_instance_lock

    settings = load_settings()
    lock_path = settings.data_dir / "run.lock"

    def hold_run_lock() -> int:
        try:
            return hold_instance_lock(lock_path, AlreadyRunning())
        except AlreadyRunning:
            holder = lock_path.read_text().strip() or "?"
            raise AlreadyRunning(f"already running on {settings.data_dir} (pid {holder}); stop that one first "
                                 "(Ctrl-C in its terminal)") from None

    # Held while this command runs: a second `chargewatch run` stops here, before any banner.
    run_lock, stopping = run_once_in_foreground(hold_run_lock)
    _prepare_store(settings)
    command = [sys.executable, "-m", "chargewatch"]
    roles = [["serve", "ingest"], ["serve", "analytics"], ["tasks"]]
    if settings.store == "influx":  # the outbox only drains while a forwarder runs
        roles.append(["forward"])
    children = {" ".join(role): subprocess.Popen([*command, *role]) for role in roles}
    print(_banner(settings), flush=True)
    try:
        while not stopping.wait(0.5):
            for role, child in children.items():
                if child.poll() is not None:
                    print(f"chargewatch: {role} exited with status {child.returncode}; "
                          "stopping", file=sys.stderr)
                    stopping.set()
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    os.close(run_lock)
    failed = [c.returncode for c in children.values() if c.returncode and c.returncode > 0]
    return failed[0] if failed else 0


def cli_command() -> str:
    """How to run this CLI again from any shell: its script's absolute path (a venv's bin/ is rarely
    on PATH), or ``python -m chargewatch`` when started that way."""
    script = Path(sys.argv[0])
    if script.name == "chargewatch":
        return str(script.absolute())
    return f"{sys.executable} -m chargewatch"


def _banner(settings: Settings) -> str:
    ingest = f"http://{settings.ingest.host}:{settings.ingest.port}"
    analytics = f"http://{settings.analytics.host}:{settings.analytics.port}"
    lines = [
        f"chargewatch {__version__} on the embedded store {settings.sqlite_path}" if settings.store == "sqlite"
        else f"chargewatch {__version__} on InfluxDB {settings.influx.url} (org {settings.influx.org}), "
             f"local outbox and current state in {settings.sqlite_path}",
        f"  devices and gateways: POST {ingest}/v1/ingest (JSON) or {ingest}/api/v2/write"
        f"?bucket={settings.telemetry_bucket} (line protocol)",
        f"  current state:        GET  {ingest}/v1/ingest/devices",
        f"  console (browser):    {analytics}/   (sign in with the read token)",
        f"  analytics API:        GET  {analytics}/v1/analytics/fleet/summary",
        f"  API descriptions:     {ingest}/openapi.json  {analytics}/openapi.json   (metrics at /metrics)",
        f"  task runner: {settings.efficiency.window_seconds} s efficiency windows, alerts below "
        f"{settings.alerts.threshold:.0%}" + (f", webhooks to {len(settings.alerts.webhook_urls)} receiver(s)"
                                           if settings.alerts.webhook_urls else "")
        + (f", alerts to Alertmanager {', '.join(settings.alerts.alertmanager_urls)}"
           if settings.alerts.alertmanager_urls else ""),
    ]
    if settings.auth.enabled:
        lines.append(f"  tokens: {cli_command()} tokens   (send 'Authorization: Token <token>')")
    else:
        lines.append("  token auth is OFF (CHARGEWATCH_AUTH__ENABLED=false)")
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


# -- tokens, pairings, retention -----------------------------------------------------------------

def cmd_tokens(args: argparse.Namespace) -> int:
    from chargewatch.tokens import load_tokens

    settings = load_settings()
    if not settings.auth.enabled:
        print("token auth is disabled (CHARGEWATCH_AUTH__ENABLED=false)")
        return 0
    try:
        tokens = load_tokens(settings)
    except ValueError as err:
        raise SystemExit(f"chargewatch: {err}") from None
    if args.json:
        print(json.dumps({"write": list(tokens.write), "read": list(tokens.read)}))
        return 0
    for token in tokens.write:
        print(f"write  {token}")
    for token in tokens.read:
        print(f"read   {token}")
    if tokens.generated_file:
        print(f"(generated tokens are kept in {tokens.generated_file})", file=sys.stderr)
    return 0


def cmd_pairing(args: argparse.Namespace) -> int:
    from chargewatch.pairing import PairingConflict, dump_pairing_file, read_pairing_file

    store = _open_store(load_settings())
    try:
        if args.action == "list":
            sys.stdout.write(dump_pairing_file(store.load_pairings()))
        elif args.action == "set":
            store.save_pairings({args.vehicle_id: args.meter_id})
            print(f"{args.vehicle_id} -> {args.meter_id}")
        elif args.action == "delete":
            if not store.delete_pairing(args.vehicle_id):
                print(f"{args.vehicle_id} has no registry pairing", file=sys.stderr)
                return 1
            from chargewatch.pairing import PairingRule, Pairings

            now = Pairings(store.load_pairings(), PairingRule.from_strings(load_settings().pairing.prefixes))
            meter = now.meter_for(args.vehicle_id)
            print(f"deleted the registry pairing of {args.vehicle_id}; "
                  + (f"the default rule pairs it with {meter}" if meter else "it is unpaired now"))
        elif args.action == "import":
            pairs = read_pairing_file(Path(args.file))
            store.save_pairings(pairs, replace=args.replace)
            print(f"imported {len(pairs)} pairings from {args.file}")
    except (ValueError, PairingConflict) as err:
        print(f"chargewatch: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = _open_store(settings)
    try:
        dropped = store.drop_expired(datetime.now(timezone.utc), settings.retention_days)
    finally:
        store.close()
    print(f"dropped {len(dropped)} day tables older than {settings.retention_days} days"
          + (f": {', '.join(dropped)}" if dropped else ""))
    return 0


def _running_here(settings: Settings) -> list[str]:
    """What runs on this data directory now: the one-instance locks held, the services answering
    on their control sockets."""
    import socket

    from chargewatch.locks import AlreadyRunning, hold_instance_lock

    running = []
    locks = {"chargewatch run": settings.data_dir / "run.lock",
             "the task runner": settings.data_dir / "task-runner.lock",
             "the forwarder": settings.sqlite_path.with_name(settings.sqlite_path.name + ".forwarder.lock")}
    for what, path in locks.items():
        if path.exists():
            try:
                os.close(hold_instance_lock(path, AlreadyRunning()))
            except AlreadyRunning:
                running.append(what)
    for service in SERVICES:
        control = settings.data_dir / f"{service}.ctl"
        if control.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(control))
                    running.append(f"the {service} service")
                except OSError:
                    pass
    return running


def cmd_reset(args: argparse.Namespace) -> int:
    """Delete the stored data of the data directory (readings, windows, alerts, pairings, outbox)."""
    settings = load_settings()
    db = settings.sqlite_path
    doomed = [path for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")) if path.exists()]
    if args.tokens and settings.tokens_path.exists():
        doomed.append(settings.tokens_path)
    if not doomed:
        print(f"nothing stored in {settings.data_dir}")
        return 0
    running = _running_here(settings)
    if running:
        print(f"chargewatch: {', '.join(running)} still running on {settings.data_dir}; stop it first",
              file=sys.stderr)
        return 1
    if not args.yes:
        print("would delete " + ", ".join(map(str, doomed)) + " (every reading, window, alert and pairing"
              + (", and the tokens" if args.tokens else "; the tokens stay") + "); add --yes to do it",
              file=sys.stderr)
        return 1
    for path in doomed:
        path.unlink()
    print(f"deleted {', '.join(path.name for path in doomed)} from {settings.data_dir}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = load_settings()
    shown = settings.model_dump(mode="json")
    shown["auth"]["write_tokens"] = ["***"] * len(settings.auth.write_tokens)
    shown["auth"]["read_tokens"] = ["***"] * len(settings.auth.read_tokens)
    shown["sqlite"]["path"] = str(settings.sqlite_path)
    print(json.dumps(shown, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chargewatch",
        description="Watch EV fleet charging efficiency. Configuration comes from CHARGEWATCH_* "
        "environment variables (see `chargewatch config`).",
    )
    parser.add_argument("--version", action="version", version=f"chargewatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run ingest, analytics and the task runner (the main job)",
        description="Start the ingest service, the analytics service (API and console) and the task runner "
                    "(and, in influx mode, the forwarder) in the foreground, print where they listen, and stop "
                    "them all on Ctrl-C or SIGTERM. One per data directory.")
    run.set_defaults(func=cmd_run)

    from taskrunner.cli import add_parser as add_tasks_parser  # the task runner owns its command
    add_tasks_parser(commands)

    serve = commands.add_parser(
        "serve", help="run one service under gunicorn",
        description="Run one HTTP service under gunicorn in the foreground, with the settings' host, port, "
                    "workers and threads unless given here.")
    serve.add_argument("service", choices=sorted(SERVICES),
                       help="ingest (devices post readings) or analytics (reports, alerts, the console)")
    serve.add_argument("--host", help="bind address (default CHARGEWATCH_<SERVICE>__HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default CHARGEWATCH_<SERVICE>__PORT: ingest 8080, "
                       "analytics 8081)")
    serve.add_argument("--workers", type=int, help="worker processes (default CHARGEWATCH_<SERVICE>__WORKERS)")
    serve.add_argument("--threads", type=int, help="threads per worker (default CHARGEWATCH_<SERVICE>__THREADS)")
    serve.set_defaults(func=cmd_serve)

    tokens = commands.add_parser(
        "tokens", help="show the API tokens (generated on first use)",
        description="Print the write token (devices) and the read token (queries, the console): from "
                    "CHARGEWATCH_AUTH__*_TOKENS, else the data directory's tokens.json, generated on first use.")
    tokens.add_argument("--json", action="store_true", help="print {'write': [...], 'read': [...]}")
    tokens.set_defaults(func=cmd_tokens)

    pairing = commands.add_parser(
        "pairing", help="list and edit the vehicle<->meter registry",
        description="Explicit vehicle-meter pairings, which win over the default prefix rule; readings "
                    "arriving a second after a change use it.")
    actions = pairing.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="print explicit pairings as JSON {vehicleId: meterId}",
                       description="Print the registry's pairings as JSON {vehicleId: meterId}.")
    set_ = actions.add_parser("set", help="pair a vehicle with a meter",
                              description="Pair a vehicle with a meter (a meter pairs with one vehicle at a time).")
    set_.add_argument("vehicle_id", help="the vehicle, e.g. VEHICLE_901")
    set_.add_argument("meter_id", help="the meter of its charger, e.g. METER_917")
    delete = actions.add_parser("delete", help="remove a vehicle's registry pairing",
                                description="Remove a vehicle's registry pairing; it says what the vehicle "
                                            "pairs with afterwards (the default rule, or nothing).")
    delete.add_argument("vehicle_id", help="the vehicle whose pairing goes")
    load = actions.add_parser("import", help="load pairings from a JSON file {vehicleId: meterId}",
                              description="Load pairings from a JSON file {vehicleId: meterId}, all or none.")
    load.add_argument("file", help="the JSON file")
    load.add_argument("--replace", action="store_true", help="remove pairings that are not in the file")
    pairing.set_defaults(func=cmd_pairing)

    retention = commands.add_parser(
        "retention", help="drop stored days older than CHARGEWATCH_RETENTION_DAYS now",
        description="Drop the whole stored days older than CHARGEWATCH_RETENTION_DAYS now (the task runner "
                    "does this every hour).")
    retention.set_defaults(func=cmd_retention)

    reset = commands.add_parser(
        "reset", help="delete every stored reading, window, alert and pairing (e.g. demo data)",
        description="Delete the data directory's database: every reading, window, alert, pairing and the "
                    "outbox. Refused while anything runs on the data directory. The tokens stay unless --tokens.")
    reset.add_argument("--yes", action="store_true", help="really delete (without it: say what would go)")
    reset.add_argument("--tokens", action="store_true", help="also delete the generated tokens (devices need new ones)")
    reset.set_defaults(func=cmd_reset)

    config = commands.add_parser(
        "config", help="print the effective configuration (tokens masked)",
        description="Print the configuration as the CHARGEWATCH_* environment makes it, as JSON, tokens masked.")
    config.set_defaults(func=cmd_config)

    from chargewatch.operator_cli import add_parsers as add_operator_parsers  # fleet, alerts
    add_operator_parsers(commands)
    from simulator.cli import add_parser as add_simulate_parser  # the simulator owns its options
    add_simulate_parser(commands)
    from chargewatch.influx.cli import add_parser as add_influx_parser  # influx setup
    add_influx_parser(commands)
    from chargewatch.influx.forwarder_cli import add_parser as add_forwarder_parsers  # forward, outbox
    add_forwarder_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("CHARGEWATCH_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
