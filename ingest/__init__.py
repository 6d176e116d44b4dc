"""The ingest service: devices post readings, operators read current state and pairings.

Production: ``gunicorn 'ingest:create_app()'`` (``chargewatch serve ingest`` does this).
"""

from __future__ import annotations

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from chargewatch import bootstrap
from chargewatch.settings import Settings
from chargewatch.stores import ReadingStore
from ingest.openapi import openapi_document
from ingest.routes import bp
from ingest.status import OutboxCollector
from webapi.auth import install_tokens
from webapi.errors import register_error_handlers
from webapi.metrics import instrument
from webapi.ops import ops_blueprint


def create_app(settings: Settings | None = None, store: ReadingStore | None = None) -> Flask:
    """Build the ingest app; arguments left out are built from the environment
    (``chargewatch.bootstrap``)."""
    settings = settings or Settings()
    store = store or bootstrap.open_reading_store(settings)
    app = Flask(__name__)
    app.json = DefaultJSONProvider(app)
    app.json.sort_keys = False  # responses keep the models' field order
    app.extensions["chargewatch_settings"] = settings
    app.extensions["reading_store"] = store
    app.extensions["pairing_registry"] = bootstrap.pairing_registry(settings, store)
    install_tokens(app, settings)

    register_error_handlers(app)
    instrument(app, "ingest")
    app.register_blueprint(bp)
    outbox = getattr(store, "outbox", None)  # influx mode: queue depth, lag and dead letters in /metrics
    collectors = [OutboxCollector(outbox)] if outbox is not None else []
    app.register_blueprint(ops_blueprint("ingest", openapi_document, {"store": store.ping}, collectors=collectors))
    return app
