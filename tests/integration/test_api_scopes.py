"""The token scope each route needs, as both services' served OpenAPI documents state it, held to the
routes themselves (their ``@require(scope)``) and to what a request with each kind of token gets."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask

import analytics
import ingest
from chargewatch import bootstrap
from chargewatch.settings import Settings
from chargewatch.stores.memory import InMemoryReadingStore

TOKENS = {"write": "w-token", "read": "r-token"}
SAMPLE_PARAMS = {"deviceId": "METER_001", "vehicleId": "VEHICLE_001"}


def _settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, auth={"write_tokens": [TOKENS["write"]], "read_tokens": [TOKENS["read"]]})


@pytest.fixture(params=["ingest", "analytics"])
def app(request, tmp_path) -> Flask:
    settings = _settings(tmp_path)
    if request.param == "ingest":
        return ingest.create_app(settings, InMemoryReadingStore())
    store = bootstrap.open_reading_store(settings)
    request.addfinalizer(store.close)
    return analytics.create_app(settings, store)


def documented_operations(app: Flask) -> list[tuple[str, str, str | None]]:
    """(method, concrete path, scope or None) of every operation the served document lists."""
    document = app.test_client().get("/openapi.json").get_json()
    operations = []
    for template, methods in document["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PARAMS[m.group(1)], template)
        for method, entry in methods.items():
            scopes = [scope for requirement in entry.get("security", []) for scope in requirement["token"]]
            assert len(scopes) <= 1, (method, template)
            operations.append((method.upper(), path, scopes[0] if scopes else None))
    return operations


def route_scope(app: Flask, method: str, path: str) -> str | None:
    endpoint, _ = app.url_map.bind("localhost").match(path, method=method)
    view: Any = app.view_functions[endpoint]
    return getattr(view, "required_scope", None)


def test_every_documented_operation_states_the_scope_its_route_requires(app) -> None:
    operations = documented_operations(app)
    assert operations
    assert [(m, p, s) for m, p, s in operations if route_scope(app, m, p) != s] == []


def test_every_route_that_requires_a_token_is_documented(app) -> None:
    documented = {(method, path) for method, path, _ in documented_operations(app)}
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        if getattr(app.view_functions[rule.endpoint], "required_scope", None) is None:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            assert any(adapter.match(path, method=method)[0] == rule.endpoint
                       for m, path in documented if m == method), (method, rule.rule)


def test_each_scoped_route_answers_401_without_a_token_and_403_with_the_other_scope(app) -> None:
    client = app.test_client()
    for method, path, scope in documented_operations(app):
        if scope is None:
            continue
        other = "read" if scope == "write" else "write"
        assert client.open(path, method=method).status_code == 401, (method, path)
        wrong = client.open(path, method=method, headers={"Authorization": f"Token {TOKENS[other]}"})
        assert (wrong.status_code, wrong.get_json()["error"]) == (403, "forbidden"), (method, path)
        right = client.open(path, method=method, headers={"Authorization": f"Token {TOKENS[scope]}"})
        assert right.status_code not in (401, 403), (method, path, right.get_json())
