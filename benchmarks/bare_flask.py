"""The baseline for benchmarks/ingest_single.py: Flask with one POST route and nothing else.

It reads the body and answers a small JSON 200: no validation, auth, metrics or storage. Served by
gunicorn with exactly chargewatch's options, its req/s is the ceiling of Flask + gunicorn gthread on
this machine, which chargewatch's ``POST /v1/ingest`` is compared with.

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

    return app
