"""The analytics service: efficiency reports, fleet summary, series and alerts over the windows the
task runner computes (influx mode: the Flux task, read back from InfluxDB).
Production: ``gunicorn 'analytics:create_app()'`` (``chargewatch serve analytics``)."""

from __future__ import annotations

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from analytics.console import install_console
from analytics.openapi import openapi_document
from analytics.routes import bp
from analytics.status import RunnerCollector, runner_status
from chargewatch import bootstrap
from chargewatch.efficiency_ports import EfficiencyStores
from chargewatch.settings import Settings
from chargewatch.stores import ReadingStore
from chargewatch.stores.sqlite import SqliteReadingStore
from webapi.auth import install_tokens
from webapi.errors import register_error_handlers
from webapi.metrics import instrument
from webapi.ops import ops_blueprint


def create_app(settings: Settings | None = None, store: ReadingStore | None = None,
               efficiency: EfficiencyStores | None = None) -> Flask:
    """Build the analytics app; arguments left out are built from the environment
    (``chargewatch.bootstrap``), on the database of ``store`` when it is the SQLite one. ``store``
    gives the console the reading history; ``efficiency`` the windows, alerts, notifications and
    runner state every route reads."""
    settings = settings or Settings()
    store = store or bootstrap.open_reading_store(settings)
    database = store.database if isinstance(store, SqliteReadingStore) else None
    if efficiency is None:
        efficiency = bootstrap.open_efficiency_stores(settings, database or bootstrap.open_database(settings))
    checks = bootstrap.readiness_checks(settings, store, efficiency)
    app = Flask(__name__)
    app.json = DefaultJSONProvider(app)
    app.json.sort_keys = False  # responses keep the models' field order
    app.extensions["chargewatch_settings"] = settings
    app.extensions["efficiency_stores"] = efficiency
    app.extensions["alert_policy"] = bootstrap.alert_policy(settings)
    app.extensions["pairing_registry"] = bootstrap.pairing_registry(settings, store)
    install_tokens(app, settings)

    def health_details() -> dict:
        status = runner_status(efficiency.runner_state, settings.efficiency.window_seconds,
                               settings.efficiency.offset_seconds)
        return {"taskRunner": status.model_dump(mode="json")}

    register_error_handlers(app)
    instrument(app, "analytics")
    app.register_blueprint(bp)
    outbox = getattr(store, "outbox", None)  # influx mode: its state on the health page
    if outbox is None and settings.store == "influx" and database is not None:  # given without its outbox
        outbox = bootstrap.open_outbox(settings, database)
    install_console(app, store, outbox)
    app.register_blueprint(ops_blueprint("analytics", openapi_document, checks,
                                         health_details, [RunnerCollector(efficiency)]))
    return app
