"""``setup_influx`` against a real InfluxDB, the cases beside the CLI runs of
test_influx_setup_live.py: a bucket kept forever, a bucket that exists already left as it is, a
changed offset updating the task in place, and two tasks of the same name (InfluxDB does not keep
task names unique) both updated.

(A bucket created by another setup between our lookup and our create cannot be timed against a real
engine; it stays with the stand-in in tests/integration/test_influx_setup.py.)
"""

from __future__ import annotations

import pytest

from chargewatch.influx import flux
from chargewatch.influx.setup import setup_influx
from chargewatch.settings import Settings

pytestmark = pytest.mark.influx

DAY_SECONDS = 86_400


def settings_for(server, org: str, **overrides) -> Settings:
    settings = {"url": server.url, "token": server.token, "org": org, **overrides.pop("influx", {})}
    return Settings(influx=settings, **overrides)


def org_id_of(influx, org: str) -> str:
    return influx.api("GET", "/api/v2/orgs", params={"org": org})["orgs"][0]["id"]


def buckets_of(influx, org: str) -> dict[str, list[dict]]:
    found = influx.api("GET", "/api/v2/buckets", params={"org": org, "limit": 100})["buckets"]
    return {b["name"]: b["retentionRules"] for b in found if not b["name"].startswith("_")}


def tasks_of(influx, org: str) -> list[dict]:
    return influx.api("GET", "/api/v2/tasks", params={"org": org})["tasks"]


def outcomes(steps) -> list[tuple[str, str, str]]:
    return [(s.kind, s.name, s.outcome) for s in steps]


def test_an_efficiency_retention_of_0_keeps_the_windows_forever(influx, scratch_org):
    steps = setup_influx(settings_for(influx, scratch_org, retention_days=30, influx={"efficiency_retention_days": 0}))

    assert [str(s) for s in steps[:2]] == ["bucket telemetry: created (retention 30 d)",
                                          "bucket efficiency: created (retention forever)"]
    buckets = buckets_of(influx, scratch_org)
    assert [r["everySeconds"] for r in buckets["telemetry"]] == [30 * DAY_SECONDS]
    assert [r["everySeconds"] for r in buckets["efficiency"] if r["everySeconds"]] == []  # no expiry


def test_an_existing_bucket_is_left_as_it_is(influx, scratch_org):
    influx.api("POST", "/api/v2/buckets", json={
        "orgID": org_id_of(influx, scratch_org), "name": "telemetry",
        "retentionRules": [{"type": "expire", "everySeconds": 7 * DAY_SECONDS}]})

    steps = setup_influx(settings_for(influx, scratch_org, retention_days=30))

    assert [str(s) for s in steps[:2]] == ["bucket telemetry: exists (retention 7 d)",
                                          "bucket efficiency: created (retention 400 d)"]
    assert [r["everySeconds"] for r in buckets_of(influx, scratch_org)["telemetry"]] == [7 * DAY_SECONDS]


def test_a_changed_offset_updates_the_task_in_place(influx, scratch_org):
    setup_influx(settings_for(influx, scratch_org))
    [before] = tasks_of(influx, scratch_org)
    changed = settings_for(influx, scratch_org, efficiency={"window_seconds": 600, "offset_seconds": 45})

    steps = setup_influx(changed)

    assert ("task", "efficiency", "updated") in outcomes(steps)
    [after] = tasks_of(influx, scratch_org)
    assert after["id"] == before["id"]
    assert (after["every"], after["offset"], after["status"]) == ("10m", "45s", "active")
    assert after["flux"] == flux.efficiency_task(changed)


def test_every_task_of_the_name_is_updated_when_names_are_duplicated(influx, scratch_org):
    settings = settings_for(influx, scratch_org)
    setup_influx(settings)  # the buckets the task writes to
    old = flux.efficiency_task(settings_for(influx, scratch_org, efficiency={"window_seconds": 900}))
    for task in tasks_of(influx, scratch_org):
        influx.api("PATCH", f"/api/v2/tasks/{task['id']}", json={"flux": old})
    # A second task of the same name, made through the API (an older setup, or the UI): InfluxDB takes it.
    influx.api("POST", "/api/v2/tasks", json={"orgID": org_id_of(influx, scratch_org), "flux": old})
    assert [t["name"] for t in tasks_of(influx, scratch_org)] == ["efficiency", "efficiency"]

    steps = setup_influx(settings)

    assert [s.outcome for s in steps if s.kind == "task"] == ["updated", "updated"]
    tasks = tasks_of(influx, scratch_org)
    assert len(tasks) == 2 and all(t["flux"] == flux.efficiency_task(settings) for t in tasks)
    assert [s.outcome for s in setup_influx(settings) if s.kind == "task"] == ["unchanged", "unchanged"]
