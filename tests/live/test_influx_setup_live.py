"""``chargewatch influx setup`` as a real process against a real InfluxDB: the buckets with their
retention, the efficiency task as the settings render it, a second run that changes nothing, an
update when a setting changes, and clear errors for a wrong token, organization or URL."""

from __future__ import annotations

import pytest

from chargewatch.influx import flux
from chargewatch.settings import Settings
from tests.e2e.harness import free_port
from tests.live.conftest import chargewatch_env, run_chargewatch

pytestmark = pytest.mark.influx

DAY_SECONDS = 86_400


def buckets_of(influx, org: str) -> dict[str, list[dict]]:
    found = influx.api("GET", "/api/v2/buckets", params={"org": org, "limit": 100})["buckets"]
    return {b["name"]: b["retentionRules"] for b in found if not b["name"].startswith("_")}


def tasks_of(influx, org: str) -> list[dict]:
    return influx.api("GET", "/api/v2/tasks", params={"org": org})["tasks"]


def test_setup_creates_buckets_and_task_then_a_rerun_changes_nothing(influx, scratch_org):
    env = chargewatch_env(influx, scratch_org, CHARGEWATCH_RETENTION_DAYS="14")

    first = run_chargewatch(env, "influx", "setup")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "bucket telemetry: created (retention 14 d)",
        "bucket efficiency: created (retention 400 d)",
        "task efficiency: created",
    ]
    buckets = buckets_of(influx, scratch_org)
    assert buckets["telemetry"][0]["everySeconds"] == 14 * DAY_SECONDS
    assert buckets["efficiency"][0]["everySeconds"] == 400 * DAY_SECONDS
    [task] = tasks_of(influx, scratch_org)
    expected_settings = Settings(retention_days=14, influx={"org": scratch_org})
    assert (task["name"], task["status"], task["every"], task["offset"]) == ("efficiency", "active", "5m", "30s")
    assert task["flux"] == flux.efficiency_task(expected_settings)

    second = run_chargewatch(env, "influx", "setup")
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert lines[0] == "bucket telemetry: exists (retention 14 d)"
    assert lines[1] == "bucket efficiency: exists (retention 400 d)"
    assert lines[2].startswith("task efficiency: unchanged (id ")
    [again] = tasks_of(influx, scratch_org)
    assert (again["id"], again["flux"], again.get("updatedAt")) == (task["id"], task["flux"], task.get("updatedAt"))


def test_a_changed_window_setting_updates_the_installed_task(influx, scratch_org):
    env = chargewatch_env(influx, scratch_org)
    assert run_chargewatch(env, "influx", "setup").returncode == 0

    changed = run_chargewatch({**env, "CHARGEWATCH_EFFICIENCY__WINDOW_SECONDS": "600"}, "influx", "setup")

    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines()[2].startswith("task efficiency: updated (id ")
    [task] = tasks_of(influx, scratch_org)
    assert task["every"] == "10m"
    assert "option window_length = 10m" in task["flux"]


def test_a_wrong_token_is_named_as_the_setting_to_fix(influx, scratch_org):
    result = run_chargewatch(chargewatch_env(influx, scratch_org, CHARGEWATCH_INFLUX__TOKEN="not-a-token"),
                             "influx", "setup")

    assert result.returncode == 1
    assert "refused the token (401)" in result.stderr
    assert "CHARGEWATCH_INFLUX__TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_organization_is_named_as_the_setting_to_fix(influx, scratch_org):
    result = run_chargewatch(chargewatch_env(influx, scratch_org + "-missing"), "influx", "setup")

    assert result.returncode == 1
    assert f"InfluxDB has no organization '{scratch_org}-missing'" in result.stderr
    assert "CHARGEWATCH_INFLUX__ORG" in result.stderr
    assert buckets_of(influx, scratch_org) == {}


def test_an_unreachable_url_is_named_as_the_setting_to_fix(influx, scratch_org):
    env = chargewatch_env(influx, scratch_org, CHARGEWATCH_INFLUX__URL=f"http://127.0.0.1:{free_port()}",
                          CHARGEWATCH_INFLUX__REQUEST_TIMEOUT_SECONDS="2")
    result = run_chargewatch(env, "influx", "setup")

    assert result.returncode == 1
    assert "cannot reach InfluxDB at http://127.0.0.1:" in result.stderr
    assert "CHARGEWATCH_INFLUX__URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_token_without_rights_in_the_org_is_told_it_needs_an_operator_token(influx, scratch_org):
    org_id = influx.api("GET", "/api/v2/orgs", params={"org": scratch_org})["orgs"][0]["id"]
    read_only = influx.api("POST", "/api/v2/authorizations", json={
        "orgID": org_id, "description": "read orgs only",
        "permissions": [{"action": "read", "resource": {"type": "orgs", "id": org_id}}]})["token"]

    result = run_chargewatch(chargewatch_env(influx, scratch_org, CHARGEWATCH_INFLUX__TOKEN=read_only),
                             "influx", "setup")

    assert result.returncode == 1
    assert "all-access or operator token" in result.stderr, result.stderr
    assert buckets_of(influx, scratch_org) == {}
