"""The analytics service: efficiency reports, fleet summary, series and alerts over the windows the
task runner computes. Production: ``gunicorn 'analytics:create_app()'`` (``chargewatch serve analytics``)."""

from __future__ import annotations

import logging

from flask import Flask

from analytics.openapi import openapi_document
from analytics.routes import bp
from analytics.runner import policy_from
from analytics.status import RunnerCollector, runner_status
from chargewatch.pairing import PairingRegistry, PairingRule
from chargewatch.settings import Settings
from chargewatch.stores.sqlite import SqliteReadingStore
from chargewatch.stores.sqlite_efficiency import SqliteEfficiencyStore
from chargewatch.tokens import load_tokens
from webapi.auth import TOKENS_EXTENSION
from webapi.errors import register_error_handlers
from webapi.metrics import instrument
from webapi.ops import ops_blueprint

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, store: SqliteReadingStore | None = None) -> Flask:
    """Build the analytics app; arguments left out are built from the environment."""
    settings = settings or Settings()
    store = store or SqliteReadingStore.from_settings(settings)
    efficiency = SqliteEfficiencyStore(store)
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["chargewatch_settings"] = settings
    app.extensions["efficiency_store"] = efficiency
    app.extensions["alert_policy"] = policy_from(settings)
    app.extensions["pairing_registry"] = PairingRegistry(store, PairingRule.from_strings(settings.pairing.prefixes))
    if settings.auth.enabled:
        app.extensions[TOKENS_EXTENSION] = load_tokens(settings)
    else:
        logger.warning("token auth is disabled (CHARGEWATCH_AUTH__ENABLED=false): anyone can read")
        app.extensions[TOKENS_EXTENSION] = None

    def health_details() -> dict:
        status = runner_status(efficiency, settings.efficiency.window_seconds, settings.efficiency.offset_seconds)
        return {"taskRunner": status.model_dump(mode="json")}

    register_error_handlers(app)
    instrument(app, "analytics")
    app.register_blueprint(bp)
    app.register_blueprint(ops_blueprint("analytics", openapi_document, {"store": store.ping},
                                         health_details, [RunnerCollector(efficiency)]))
    return app
