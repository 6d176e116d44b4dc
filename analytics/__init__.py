"""The analytics service: efficiency reports, fleet summary, series and alerts over the windows the
task runner computes (influx mode: the Flux task, read back from InfluxDB).
Production: ``gunicorn 'analytics:create_app()'`` (``chargewatch serve analytics``)."""

from __future__ import annotations

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from analytics.console import install_console
from analytics.openapi import openapi_document
from analytics.routes import bp
from analytics.runner import policy_from
from analytics.status import RunnerCollector, runner_status
from chargewatch.pairing import PairingRegistry, PairingRule
from chargewatch.settings import Settings
from chargewatch.stores.sqlite import SqliteReadingStore
from chargewatch.stores.sqlite_efficiency import SqliteEfficiencyStore
from webapi.auth import install_tokens
from webapi.errors import register_error_handlers
from webapi.metrics import instrument
from webapi.ops import ops_blueprint


def create_app(settings: Settings | None = None, store: SqliteReadingStore | None = None) -> Flask:
    """Build the analytics app; arguments left out are built from the environment."""
    settings = settings or Settings()
    store = store or SqliteReadingStore.from_settings(settings)
    efficiency = SqliteEfficiencyStore(store)
    checks = {"store": store.ping}
    outbox = None
    if settings.store == "influx":  # windows come from the bucket the Flux task fills; alerts stay local
        from chargewatch.stores.influx_efficiency import InfluxEfficiencyStore
        from chargewatch.stores.outbox import Outbox

        windows = InfluxEfficiencyStore.from_settings(settings, efficiency)
        checks["influxdb"] = windows.ping
        # InfluxEfficiencyStore duck-types SqliteEfficiencyStore: there is no analytics port yet.
        efficiency = windows  # type: ignore[assignment]
        outbox = Outbox(store, settings.influx.outbox_max_rows)
    app = Flask(__name__)
    app.json = DefaultJSONProvider(app)
    app.json.sort_keys = False  # responses keep the models' field order
    app.extensions["chargewatch_settings"] = settings
    app.extensions["efficiency_store"] = efficiency
    app.extensions["alert_policy"] = policy_from(settings)
    app.extensions["pairing_registry"] = PairingRegistry(store, PairingRule.from_strings(settings.pairing.prefixes))
    install_tokens(app, settings)

    def health_details() -> dict:
        status = runner_status(efficiency, settings.efficiency.window_seconds, settings.efficiency.offset_seconds)
        return {"taskRunner": status.model_dump(mode="json")}

    register_error_handlers(app)
    instrument(app, "analytics")
    app.register_blueprint(bp)
    install_console(app, store, outbox)
    app.register_blueprint(ops_blueprint("analytics", openapi_document, checks,
                                         health_details, [RunnerCollector(efficiency)]))
    return app
