"""The baseline for benchmarks/ingest_single.py and benchmarks/current_state.py: Flask with one POST
route, one GET route and nothing else.

The POST reads the body and answers a small JSON 200; the GET answers a device-state-shaped JSON
200 built from its path: no validation, auth, metrics or storage. Served by gunicorn with exactly
chargewatch's options, their req/s and latency are the ceiling of Flask + gunicorn gthread on this
machine, which chargewatch's ``POST /v1/ingest`` and ``GET /v1/ingest/<kind>/<id>/current`` are
compared with.

    python -m gunicorn --chdir benchmarks 'bare_flask:create_app()'
"""

from __future__ import annotations

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)

    @app.post("/v1/ingest")
    def ingest():
        body = request.get_data()
        return jsonify(accepted=1, bytes=len(body)), 200

    @app.get("/v1/ingest/<kind>/<device_id>/current")
    def current(kind: str, device_id: str):
        return jsonify(kind=kind, deviceId=device_id, vehicleId=None, meterId=None,
                       timestamp="2026-12-01T23:00:00Z", receivedAt="2026-12-01T23:00:01Z",
                       values={"kwhConsumedAc": 0.125, "voltage": 230.0}), 200

    return app
