"""The web console for fleet operators: fleet overview, vehicle detail, alerts, ingest health.

Server-rendered pages on the analytics service (``/`` and ``/console/...``), read-only, signed in
with a read token (see :mod:`analytics.console.session`); charts by plotly.js, served from the
installed ``plotly`` package. The pages read the same stores and ``analytics.queries`` functions as
the API, on either store.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from analytics.console.session import configure_sessions
from analytics.console.views import bp
from chargewatch.stores import ReadingStore


def install_console(app: Flask, store: ReadingStore, outbox: Any | None = None) -> None:
    """Register the console on the analytics app (after ``install_tokens``). ``store`` gives the
    reading history (state of charge, readings per minute); ``outbox`` its status in influx mode."""
    configure_sessions(app)
    app.extensions["console_reading_store"] = store
    app.extensions["console_outbox"] = outbox
    app.register_blueprint(bp)
