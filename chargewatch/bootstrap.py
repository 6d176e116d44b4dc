"""The composition root: settings in, the adapters and shared objects of one installation out.

Every entry point builds what it runs from here: both app factories (``ingest.create_app``,
``analytics.create_app``), the task runner (``taskrunner``), the forwarder
(``chargewatch forward``), the operator commands, the simulator's replay and the benchmarks.
``CHARGEWATCH_STORE`` (``sqlite`` | ``influx``) is looked at here and nowhere else to choose
adapters; the InfluxDB adapter (and influxdb-client) is imported only when it is chosen.

One :class:`SqliteDatabase` per installation object: the reading store, the outbox, the windows,
alerts, notifications and runner state all work on it (in influx mode too: alert state,
deliveries, the outbox and the dedupe index stay local).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from chargewatch.alerts import AlertPolicy
from chargewatch.efficiency_ports import EfficiencyStores
from chargewatch.pairing import PairingRegistry, PairingRule
from chargewatch.settings import Settings
from chargewatch.stores import ReadingStore
from chargewatch.stores.outbox import Outbox
from chargewatch.stores.sqlite import SqliteReadingStore
from chargewatch.stores.sqlite_alerts import SqliteAlertStore, SqliteNotificationOutbox
from chargewatch.stores.sqlite_database import SqliteDatabase
from chargewatch.stores.sqlite_runner_state import SqliteRunnerState
from chargewatch.stores.sqlite_windows import SqliteWindowStore

if TYPE_CHECKING:
    from collections.abc import Callable


def open_database(settings: Settings) -> SqliteDatabase:
    """The installation's SQLite file (``CHARGEWATCH_SQLITE__*``, in ``CHARGEWATCH_DATA_DIR``)."""
    return SqliteDatabase.from_settings(settings)


def open_reading_store(settings: Settings, database: SqliteDatabase | None = None) -> SqliteReadingStore:
    """The reading store of ``CHARGEWATCH_STORE``: the embedded store, plus the outbox in influx mode."""
    return SqliteReadingStore(
        database or open_database(settings), writer=settings.sqlite.writer,
        outbox_max_rows=settings.influx.outbox_max_rows if settings.store == "influx" else None)


def open_outbox(settings: Settings, database: SqliteDatabase | None = None) -> Outbox:
    """Influx mode's outbox alone (the forwarder and ``chargewatch outbox``)."""
    return Outbox(database or open_database(settings), settings.influx.outbox_max_rows)


def sqlite_efficiency_stores(database: SqliteDatabase) -> EfficiencyStores:
    """Every efficiency port on the SQLite database; the embedded engine writes the windows."""
    windows = SqliteWindowStore(database)
    return EfficiencyStores(windows=windows, alerts=SqliteAlertStore(database),
                            notifications=SqliteNotificationOutbox(database),
                            runner_state=SqliteRunnerState(database), window_writer=windows)


def open_efficiency_stores(settings: Settings, database: SqliteDatabase) -> EfficiencyStores:
    """The efficiency ports of ``CHARGEWATCH_STORE``: all on SQLite, or (influx mode) windows from
    the efficiency bucket and the rest on SQLite. Raises StorageUnavailable when InfluxDB's client
    cannot be built (no token, influxdb-client missing)."""
    stores = sqlite_efficiency_stores(database)
    if settings.store == "influx":
        from chargewatch.stores.influx_windows import InfluxWindowSource

        stores.windows = InfluxWindowSource.from_settings(settings)
        stores.window_writer = None  # the Flux task computes the windows inside InfluxDB
    return stores


def readiness_checks(settings: Settings, readings: ReadingStore, efficiency: EfficiencyStores
                     ) -> dict[str, Callable[[], None]]:
    """Named checks for analytics' ``/ready``: the store, and InfluxDB's windows in influx mode."""
    checks = {"store": readings.ping}
    if settings.store == "influx":
        checks["influxdb"] = efficiency.windows.ping
    return checks


@dataclass
class Stores:
    """What one process of an installation works on."""

    database: SqliteDatabase
    readings: SqliteReadingStore
    efficiency: EfficiencyStores

    def close(self) -> None:
        self.efficiency.close()
        self.readings.close()


def open_stores(settings: Settings) -> Stores:
    """The reading store and the efficiency ports of one installation, on one database."""
    database = open_database(settings)
    readings = open_reading_store(settings, database)
    return Stores(database, readings, open_efficiency_stores(settings, database))


def alert_policy(settings: Settings) -> AlertPolicy:
    """The alert rules' parameters (``CHARGEWATCH_ALERTS__*``), in milliseconds."""
    a = settings.alerts
    return AlertPolicy(
        threshold=a.threshold, above_one_threshold=a.above_one_threshold, span_ms=a.span_minutes * 60_000,
        pending_ms=a.pending_minutes * 60_000, hysteresis=a.hysteresis, min_span_energy_kwh=a.min_span_energy_kwh,
        max_session_ms=int(a.max_session_hours * 3_600_000), fast_span_ms=a.fast_span_minutes * 60_000,
    )


def pairing_registry(settings: Settings, store: ReadingStore) -> PairingRegistry:
    """The pairing registry over ``store`` with the default rule of ``CHARGEWATCH_PAIRING__PREFIXES``."""
    return PairingRegistry(store, PairingRule.from_strings(settings.pairing.prefixes))


def analytics_url(settings: Settings) -> str:
    """Where the analytics service answers (the link in webhooks and Alertmanager alerts)."""
    return f"http://{settings.analytics.host}:{settings.analytics.port}"
