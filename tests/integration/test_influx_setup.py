"""`chargewatch influx setup` against a stand-in InfluxDB answering as OSS 2.7 does: idempotent
bucket and task creation, updates by name, and errors that say what to fix."""

from __future__ import annotations

import socket

import pytest

from chargewatch import cli
from chargewatch.influx import flux
from chargewatch.influx.setup import SetupError, setup_influx
from chargewatch.settings import Settings
from tests.influx_management_standin import InfluxManagementApi
from tests.influx_standin import InfluxStandin, StandinResponse

pytest.importorskip("influxdb_client")


@pytest.fixture
def standin():
    with InfluxStandin(buckets=()) as server:
        yield server


@pytest.fixture
def api(standin):
    return InfluxManagementApi(standin)


def settings_for(standin: InfluxStandin, **overrides) -> Settings:
    influx = {"url": standin.url, "token": standin.token, "org": standin.org, **overrides.pop("influx", {})}
    return Settings(influx=influx, **overrides)


def outcomes(steps) -> list[tuple[str, str, str]]:
    return [(s.kind, s.name, s.outcome) for s in steps]


def test_setup_creates_buckets_with_retention_and_an_active_task(standin, api):
    settings = settings_for(standin, retention_days=30, influx={"efficiency_retention_days": 0})
    steps = setup_influx(settings)
    assert outcomes(steps) == [("bucket", "telemetry", "created"), ("bucket", "efficiency", "created"),
                               ("task", "efficiency", "created")]
    posted = {r.body["name"]: r.body for r in api.requests_of("POST") if r.path == "/api/v2/buckets"}
    assert posted["telemetry"]["retentionRules"] == [{"type": "expire", "everySeconds": 30 * 86_400}]
    assert posted["efficiency"]["retentionRules"] == []  # 0 = keep forever
    assert all(b["orgID"] == standin.org_id for b in posted.values())
    [task] = api.tasks.values()
    assert task["status"] == "active" and task["name"] == "efficiency"
    assert task["flux"] == flux.efficiency_task(settings)


def test_a_second_setup_creates_and_updates_nothing(standin, api):
    settings = settings_for(standin)
    setup_influx(settings)
    writes_before = len(api.requests_of("POST")) + len(api.requests_of("PATCH"))
    steps = setup_influx(settings)
    assert outcomes(steps) == [("bucket", "telemetry", "exists"), ("bucket", "efficiency", "exists"),
                               ("task", "efficiency", "unchanged")]
    assert len(api.requests_of("POST")) + len(api.requests_of("PATCH")) == writes_before
    assert len(api.tasks) == 1


def test_changed_settings_update_the_task_in_place(standin, api):
    setup_influx(settings_for(standin))
    [task_id] = api.tasks
    changed = settings_for(standin, efficiency={"window_seconds": 600, "offset_seconds": 45})
    steps = setup_influx(changed)
    assert ("task", "efficiency", "updated") in outcomes(steps)
    [patch] = api.requests_of("PATCH")
    assert patch.path == f"/api/v2/tasks/{task_id}" and patch.body == {"flux": flux.efficiency_task(changed)}
    assert list(api.tasks) == [task_id]
    assert (api.tasks[task_id]["every"], api.tasks[task_id]["offset"]) == ("10m", "45s")


def test_existing_buckets_are_left_as_they_are(standin, api):
    standin.buckets["telemetry"] = {"id": "00000000000000aa", "name": "telemetry", "orgID": standin.org_id,
                                    "retentionRules": [{"type": "expire", "everySeconds": 7 * 86_400}]}
    steps = setup_influx(settings_for(standin, retention_days=30))
    assert steps[0].outcome == "exists" and steps[0].detail == "retention 7 d"
    assert [r.body["name"] for r in api.requests_of("POST") if r.path == "/api/v2/buckets"] == ["efficiency"]


def test_a_bucket_created_concurrently_counts_as_existing(standin, api):
    standin.buckets["telemetry"] = {"id": "00000000000000aa", "name": "telemetry", "orgID": standin.org_id}
    # Another setup creates the bucket between our lookup and our create: the lookup misses it.
    standin.add_route("GET", "/api/v2/buckets", lambda request: StandinResponse.error(
        404, "not found", f'bucket "{request.query.get("name")}" not found'))
    steps = setup_influx(settings_for(standin))
    assert steps[0] == type(steps[0])("bucket", "telemetry", "exists", "created concurrently")


def test_every_task_of_the_name_is_updated_when_names_are_duplicated(standin, api):
    settings = settings_for(standin)
    old = flux.efficiency_task(settings_for(standin, efficiency={"window_seconds": 900}))
    api.add_task(old)
    api.add_task(old)
    steps = setup_influx(settings)
    assert [s.outcome for s in steps if s.kind == "task"] == ["updated", "updated"]
    assert all(t["flux"] == flux.efficiency_task(settings) for t in api.tasks.values())


def test_a_wrong_token_is_reported_as_such(standin, api):
    with pytest.raises(SetupError, match="refused the token.*CHARGEWATCH_INFLUX__TOKEN"):
        setup_influx(settings_for(standin, influx={"token": "wrong"}))
    assert not api.tasks and not standin.buckets


def test_an_unknown_organization_is_reported_as_such(standin, api):
    with pytest.raises(SetupError, match="no organization 'elsewhere'.*CHARGEWATCH_INFLUX__ORG"):
        setup_influx(settings_for(standin, influx={"org": "elsewhere"}))


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


def test_the_cli_prints_what_setup_did(standin, api, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CHARGEWATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHARGEWATCH_INFLUX__URL", standin.url)
    monkeypatch.setenv("CHARGEWATCH_INFLUX__TOKEN", standin.token)
    assert cli.main(["influx", "setup"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "bucket telemetry: created (retention 30 d)", "bucket efficiency: created (retention 400 d)",
        "task efficiency: created"]
    assert cli.main(["influx", "setup"]) == 0
    assert "task efficiency: unchanged" in capsys.readouterr().out


def test_the_cli_reports_failures_on_stderr_with_status_1(standin, api, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CHARGEWATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHARGEWATCH_INFLUX__URL", standin.url)
    monkeypatch.setenv("CHARGEWATCH_INFLUX__TOKEN", "wrong")
    assert cli.main(["influx", "setup"]) == 1
    assert "refused the token" in capsys.readouterr().err


def test_the_dry_run_prints_the_flux_it_would_install_without_calling_influxdb(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CHARGEWATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHARGEWATCH_INFLUX__URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CHARGEWATCH_EFFICIENCY__WINDOW_SECONDS", "600")
    assert cli.main(["influx", "setup", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "bucket telemetry: create if missing, retention 30 d" in out
    assert 'option task = {name: "efficiency", every: 10m, offset: 30s}' in out
    assert "option window_length = 10m" in out
