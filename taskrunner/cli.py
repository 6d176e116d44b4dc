"""``chargewatch tasks``: the task runner in the foreground (``chargewatch run`` starts it).

prometheus_client is never imported here: the runner serves no metrics (analytics reads its state).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from datetime import datetime, timezone
from typing import Any

from chargewatch import bootstrap
from chargewatch.locks import StopRequest, run_once_in_foreground
from chargewatch.settings import Settings, load_settings
from chargewatch.stores import ReadingStore, StorageUnavailable
from taskrunner.notify import Notifier
from taskrunner.runner import TaskRunner, hold_runner_lock, run_forever

logger = logging.getLogger(__name__)

RETENTION_SWEEP_SECONDS = 3600


def open_runner(settings: Settings) -> tuple[bootstrap.Stores, TaskRunner]:
    """The stores and the runner of ``settings``, as ``chargewatch tasks`` runs them; exits with the
    reason when the stores cannot be opened."""
    try:
        stores = bootstrap.open_stores(settings)
    except StorageUnavailable as err:
        raise SystemExit(f"chargewatch: {err}") from None
    return stores, TaskRunner(stores.efficiency, settings, external_url=bootstrap.analytics_url(settings))


def cmd_tasks(args: argparse.Namespace) -> int:
    """The task runner (efficiency windows, alerts, webhooks, Alertmanager, hourly retention) in the
    foreground; in influx mode the Flux task computes the windows and this runner evaluates alerts over them."""
    settings = load_settings()
    lock, stopping = run_once_in_foreground(lambda: hold_runner_lock(settings.data_dir))
    stores, runner = open_runner(settings)
    efficiency = stores.efficiency
    notifier = Notifier(efficiency.alerts, efficiency.notifications, settings.alerts, runner.policy,
                        runner.external_url)
    delivery = threading.Thread(target=notifier.run, args=(stopping.wait,), name="notifications", daemon=True)
    delivery.start()
    sweeper = threading.Thread(target=sweep_retention, args=(stores.readings, settings, stopping),
                               name="retention", daemon=True)
    sweeper.start()
    logger.info("task runner: %d s windows, run %d s after each closes", settings.efficiency.window_seconds,
                settings.efficiency.offset_seconds)
    try:
        run_forever(runner, stopping.wait)
    finally:
        delivery.join(timeout=10)
        stores.close()
        os.close(lock)
    return 0


def sweep_retention(store: ReadingStore, settings: Settings, stopping: StopRequest) -> None:
    """Drop expired days every hour until ``stopping`` is set."""
    while not stopping.is_set():
        try:
            store.drop_expired(datetime.now(timezone.utc), settings.retention_days)
        except StorageUnavailable as err:
            logger.warning("retention sweep failed, will retry: %s", err)
        stopping.wait(RETENTION_SWEEP_SECONDS)


def add_parser(commands: Any) -> None:
    """``chargewatch tasks``."""
    tasks = commands.add_parser(
        "tasks", help="run the task runner (efficiency windows, alerts and their delivery)",
        description="Run the task runner alone in the foreground: it computes efficiency windows after each "
                    "window closes, evaluates (and replays) the alert rules, delivers webhooks and alerts to "
                    "Alertmanager, and drops expired days. One per data directory (`chargewatch run` starts it).")
    tasks.set_defaults(func=cmd_tasks)
