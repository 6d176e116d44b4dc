"""`chargewatch influx setup` without a real InfluxDB: what needs none (no token, nothing listening on
the URL, the dry run), and the one case a real engine cannot be made to produce: a bucket created by
another setup between our lookup and our create (the stand-in answers the lookup 404, the create
422 "already exists", as InfluxDB OSS 2.7 does for a name taken meanwhile).

Everything else (buckets with retention, the task, reruns, updates, duplicated task names, wrong
token or organization, the CLI's output) runs against a real influxd in
tests/live/test_influx_setup_live.py and tests/live/test_influx_setup_cases_live.py."""

from __future__ import annotations

import socket

import pytest

from chargewatch import cli
from chargewatch.influx.setup import SetupError, setup_influx
from chargewatch.settings import Settings
from tests.influx_standin import InfluxStandin, StandinResponse

pytest.importorskip("influxdb_client")


def test_a_bucket_created_concurrently_counts_as_existing():
    """Another setup creates ``telemetry`` between our lookup and our create: the lookup misses it
    (404) and the create is refused as a taken name (422 conflict)."""
    org = {"id": "0000000000000001", "name": "chargewatch"}
    created: list[str] = []

    def create_bucket(request):
        name = request.json()["name"]
        if name == "telemetry":
            return StandinResponse.error(422, "conflict", f"bucket with name {name} already exists")
        created.append(name)
        return StandinResponse.json(201, {"id": "00000000000000bb", "orgID": org["id"], "name": name,
                                          "type": "user", "retentionRules": []})

    def create_task(request):
        body = request.json()
        return StandinResponse.json(201, {"id": "00000000000000cc", "orgID": org["id"], "name": "efficiency",
                                          "flux": body["flux"], "status": "active"})

    with InfluxStandin(org=org["name"], buckets=()) as standin:
        standin.add_route("GET", "/api/v2/orgs", lambda request: StandinResponse.json(200, {"orgs": [org]}))
        standin.add_route("GET", "/api/v2/buckets", lambda request: StandinResponse.error(
            404, "not found", f'bucket "{request.query.get("name")}" not found'))
        standin.add_route("POST", "/api/v2/buckets", create_bucket)
        standin.add_route("GET", "/api/v2/tasks", lambda request: StandinResponse.json(200, {"tasks": []}))
        standin.add_route("POST", "/api/v2/tasks", create_task)
        steps = setup_influx(Settings(influx={"url": standin.url, "token": standin.token, "org": org["name"]}))

    assert [str(step) for step in steps] == ["bucket telemetry: exists (created concurrently)",
                                             "bucket efficiency: created (retention 400 d)",
                                             "task efficiency: created"]
    assert created == ["efficiency"]


def test_an_unreachable_influxdb_is_reported_with_its_url():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    settings = Settings(influx={"url": url, "token": "t", "request_timeout_seconds": 2})
    with pytest.raises(SetupError, match=f"cannot reach InfluxDB at {url}"):
        setup_influx(settings)


def test_setup_needs_a_token():
    with pytest.raises(SetupError, match="CHARGEWATCH_INFLUX__TOKEN"):
        setup_influx(Settings())


def test_the_dry_run_prints_the_flux_it_would_install_without_calling_influxdb(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CHARGEWATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHARGEWATCH_INFLUX__URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CHARGEWATCH_EFFICIENCY__WINDOW_SECONDS", "600")
    assert cli.main(["influx", "setup", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "bucket telemetry: create if missing, retention 30 d" in out
    assert 'option task = {name: "efficiency", every: 10m, offset: 30s}' in out
    assert "option window_length = 10m" in out
