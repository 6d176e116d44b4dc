"""One simulated fleet day, both engines: the embedded store against a real InfluxDB, window by window,
alert by alert and report by report.

The day: 50 pairs, 24 h, a fifth of the chargers turning faulty, device clocks within +-30 s and the
simulator's delivery faults (2 % lost, 1 % duplicated, 1 % up to 10 min late). It is replayed through
ingest's service function in influx mode (so every new reading is also queued in the outbox, exactly
as ingest queues it) with the embedded task runner on time; then

1. the real ``chargewatch forward`` ships the outbox to influxd, and every stored reading must be in
   InfluxDB once, with its pairing tags and millisecond time;
2. the real ``chargewatch influx backfill`` runs the efficiency task's Flux over the day (older than
   the task's trailing windows), and InfluxDB's windows must equal the embedded engine's: keys, AC/DC
   sums to 1e-9 relative, counts, mean temperatures and nulls;
3. the same alert rules, evaluated at every window stop on each engine's final windows, must record
   the same alerts;
4. the real analytics service, once on SQLite and once on InfluxDB, must answer the same performance
   reports, series, fleet summary and alert list, field by field.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from chargewatch import bootstrap
from chargewatch.efficiency import EfficiencyWindow
from chargewatch.settings import Settings
from chargewatch.stores.influx_windows import InfluxWindowSource
from simulator.devices import DeliveryFaults, FleetConfig
from simulator.replay import replay
from taskrunner.runner import TaskRunner
from tests.e2e.harness import READ_TOKEN, IngestServer, free_port
from tests.e2e.influx_mode import ForwarderProcess, wait_until
from tests.live.conftest import chargewatch_env, run_chargewatch

pytestmark = [pytest.mark.influx, pytest.mark.slow]

HOURS = 24
FLEET = FleetConfig(pairs=50, seed=11, healthy_efficiency=(0.75, 0.97), faulty_share=0.2,
                    faulty_efficiency=(0.75, 0.82), fault_onset_within=timedelta(hours=20))
REL = 1e-9
WINDOW_MS = 300_000


def day_start() -> datetime:
    """Two days ago at midnight UTC: inside every retention, and whole days of windows."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=2)


class FleetDay:
    """What the module fixture built; the tests read it."""

    def __init__(self, influx, org: str, root: Path) -> None:
        self.influx, self.org, self.root = influx, org, root
        self.start = day_start()
        self.end = self.start + timedelta(hours=HOURS)
        self.range_ms = (int((self.start - timedelta(hours=1)).timestamp() * 1000),
                         int((self.end + timedelta(hours=1)).timestamp() * 1000))
        self.embedded_dir = root / "embedded"  # the replay: readings, local windows, outbox
        self.influx_dir = root / "influx-local"  # influx mode's local file: alert state only
        self.rules_dir = root / "embedded-rules"  # the embedded windows with fresh alert state
        self.env = chargewatch_env(influx, org, CHARGEWATCH_INFLUX__TELEMETRY_RETENTION_DAYS="0",
                                   CHARGEWATCH_INFLUX__EFFICIENCY_RETENTION_DAYS="0")
        self.timings: dict[str, float] = {}
        self.backfill_output = ""

    def settings(self, data_dir: Path, store: str = "influx") -> Settings:
        return Settings(data_dir=data_dir, store=store, sqlite={"synchronous": "normal"},
                        influx={"url": self.influx.url, "token": self.influx.token, "org": self.org,
                                "telemetry_retention_days": 0, "efficiency_retention_days": 0})


@pytest.fixture(scope="module")
def day(_session_influx, tmp_path_factory) -> Iterator[FleetDay]:
    influx = _session_influx
    org = f"cw_fleet_{int(time.time())}"
    org_id = influx.api("POST", "/api/v2/orgs", json={"name": org})["id"]
    fleet_day = FleetDay(influx, org, tmp_path_factory.mktemp("fleet"))
    try:
        build(fleet_day)
        yield fleet_day
    finally:
        influx.api("DELETE", f"/api/v2/orgs/{org_id}")


def build(day: FleetDay) -> None:
    setup = run_chargewatch(day.env, "influx", "setup")
    assert setup.returncode == 0, setup.stderr

    started = time.monotonic()
    _, stores, _ = replay(FLEET, DeliveryFaults(), day.start, HOURS, day.embedded_dir,
                          day.settings(day.embedded_dir))
    stores.close()
    day.timings["replay_s"] = time.monotonic() - started

    # 1. The real forwarder drains the outbox into influxd.
    shipper = IngestServer(day.embedded_dir, free_port(), extra_env=day.env)
    forwarder = ForwarderProcess(shipper).start()
    try:
        day.timings["forward_s"] = wait_until(
            lambda: shipper.query("SELECT count(*) FROM outbox")[0][0] == 0, 300, "the forwarder draining the day")
    finally:
        forwarder.stop()
    assert shipper.query("SELECT count(*) FROM dead_letters")[0][0] == 0

    # 2. The real backfill computes the day's windows inside InfluxDB.
    start, stop = (datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat() for ms in day.range_ms)
    started = time.monotonic()
    backfill = run_chargewatch(day.env, "influx", "backfill", "--start", start, "--stop", stop, timeout_seconds=600)
    day.timings["backfill_s"] = time.monotonic() - started
    assert backfill.returncode == 0, backfill.stderr
    day.backfill_output = backfill.stdout + backfill.stderr

    # 3. Alert rules over each engine's final windows, at every window stop, from fresh alert state.
    day.rules_dir.mkdir()
    shutil.copy(day.embedded_dir / "chargewatch.db", day.rules_dir / "chargewatch.db")
    with sqlite3.connect(day.rules_dir / "chargewatch.db") as conn:
        conn.execute("DELETE FROM alerts")
        conn.execute("DELETE FROM notifications")
        conn.execute("DELETE FROM runner_state")
    embedded_rules = day.settings(day.rules_dir, store="sqlite")
    stores = bootstrap.open_stores(embedded_rules)
    # the windows as the embedded engine left them, not recomputed
    evaluate_day(day, TaskRunner(replace(stores.efficiency, window_writer=None), embedded_rules))
    stores.close()

    influx_settings = day.settings(day.influx_dir)
    stores = bootstrap.open_stores(influx_settings)
    started = time.monotonic()
    evaluate_day(day, TaskRunner(stores.efficiency, influx_settings))
    day.timings["influx_alert_day_s"] = time.monotonic() - started
    stores.close()


def evaluate_day(day: FleetDay, runner: TaskRunner) -> None:
    now_ms = int(day.start.timestamp() * 1000) + runner.offset_ms
    final_ms = int((day.end + timedelta(minutes=15)).timestamp() * 1000)
    while now_ms <= final_ms:
        runner.run_once(now_ms)
        now_ms += runner.window_ms


def embedded_windows(day: FleetDay) -> list[EfficiencyWindow]:
    stores = bootstrap.open_stores(day.settings(day.embedded_dir, store="sqlite"))
    try:
        return stores.efficiency.windows.windows(WINDOW_MS, *day.range_ms)
    finally:
        stores.close()


def influx_windows(day: FleetDay) -> list[EfficiencyWindow]:
    store = InfluxWindowSource.from_settings(day.settings(day.influx_dir))
    try:
        return store.windows(WINDOW_MS, *day.range_ms)
    finally:
        store.close()


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def test_every_stored_reading_is_in_influxdb_once_with_its_pairing_and_millisecond_time(day):
    with sqlite3.connect(day.embedded_dir / "chargewatch.db") as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND "
                                                  "(name LIKE 'meter_%' OR name LIKE 'vehicle_%')")
                  if name[-8:].isdigit()]
        stored = set()
        for table in tables:
            kind = table.split("_", 1)[0]
            own = "meter_id" if kind == "meter" else "vehicle_id"
            other = "vehicle_id" if kind == "meter" else "meter_id"
            for device, partner, ts in conn.execute(f"SELECT {own}, {other}, time_ms FROM {table}"):
                stored.add((kind, device, partner, ts))
    rows = query_telemetry(day)
    in_influx = [(r["_measurement"], r[f"{r['_measurement']}_id"],
                  r.get("vehicle_id" if r["_measurement"] == "meter" else "meter_id") or None,
                  int(r["_time"].timestamp() * 1000)) for r in rows]
    assert len(stored) > 100_000
    assert len(in_influx) == len(set(in_influx)), "a reading is in InfluxDB twice"
    assert set(in_influx) == stored
    assert all(r["_time"].microsecond % 1000 == 0 for r in rows)


def query_telemetry(day: FleetDay) -> list[dict]:
    from influxdb_client import InfluxDBClient

    flux = ('from(bucket: "telemetry") |> range(start: 0) '
            '|> filter(fn: (r) => r._field == "kwh_consumed_ac" or r._field == "kwh_delivered_dc") '
            '|> group()')
    with InfluxDBClient(url=day.influx.url, token=day.influx.token, org=day.org, timeout=300_000) as client:
        return [record.values for record in client.query_api().query_stream(flux, org=day.org)]


def test_influxdb_windows_equal_the_embedded_engines_window_by_window(day):
    embedded, influx = embedded_windows(day), influx_windows(day)
    key = lambda w: (w.stop_ms, w.vehicle_id, w.meter_id or "")  # noqa: E731
    assert len(embedded) > 10_000
    assert [key(w) for w in influx] == [key(w) for w in embedded]
    print(f"\n{len(embedded)} windows equal on both engines; timings {day.timings}")
    for got, want in zip(influx, embedded, strict=True):
        assert (got.ac_readings, got.dc_readings) == (want.ac_readings, want.dc_readings), (got, want)
        for name in ("ac_kwh", "dc_kwh", "avg_battery_temp", "efficiency"):
            assert close(getattr(got, name), getattr(want, name)), (name, got, want)


def test_the_backfill_reports_its_progress_and_what_it_wrote(day):
    assert "backfilling 312 windows of 0:05:00" in day.backfill_output
    assert "(312/312 windows, 100 %)" in day.backfill_output
    written = int(day.backfill_output.split(" vehicle windows written\n")[-2].rsplit("\n", 1)[-1])
    assert written == len(embedded_windows(day))


def alerts_of(data_dir: Path, settings: Settings) -> list[dict]:
    stores = bootstrap.open_stores(settings)
    try:
        records = stores.efficiency.alerts.recent_alerts(0, limit=100_000)
    finally:
        stores.close()
    return sorted((asdict(r) for r in records), key=lambda a: (a["vehicle_id"], a["rule"], a["started_ms"]))


def test_the_alert_rules_record_the_same_alerts_on_both_engines(day):
    embedded = alerts_of(day.rules_dir, day.settings(day.rules_dir, store="sqlite"))
    influx = alerts_of(day.influx_dir, day.settings(day.influx_dir))
    fired = [a for a in embedded if a["fired_ms"]]
    assert len(fired) >= 5, "the day has faulty chargers to alert on"
    assert len(influx) == len(embedded)
    for got, want in zip(influx, embedded, strict=True):
        assert {k: v for k, v in got.items() if k not in ("id", "value")} == \
            {k: v for k, v in want.items() if k not in ("id", "value")}
        assert close(got["value"], want["value"])


@pytest.fixture(scope="module")
def services(day):
    """The real analytics service on each engine: SQLite (embedded windows) and InfluxDB."""
    embedded = IngestServer(day.rules_dir, free_port(), service="analytics",
                            extra_env={"CHARGEWATCH_STORE": "sqlite", "CHARGEWATCH_SQLITE__SYNCHRONOUS": "normal"})
    influx = IngestServer(day.influx_dir, free_port(), service="analytics",
                          extra_env={**{k: v for k, v in day.env.items() if k.startswith("CHARGEWATCH_")}})
    embedded.start()
    try:
        influx.start()
        try:
            yield embedded, influx
        finally:
            influx.stop()
    finally:
        embedded.stop()


def get(server: IngestServer, path: str, **params: str) -> dict:
    response = requests.get(server.url + path, params=params, headers={"Authorization": f"Token {READ_TOKEN}"},
                            timeout=60)
    assert response.status_code == 200, (path, response.text)
    return response.json()


def assert_same(got, want, where: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), (where, got, want)
        for name in want:
            assert_same(got[name], want[name], f"{where}.{name}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, (int, float)) and close(float(got), want), (where, got, want)
    else:
        assert got == want, (where, got, want)


def period(day: FleetDay) -> dict[str, str]:
    return {"start": day.start.isoformat(), "stop": day.end.isoformat()}


def test_the_analytics_api_answers_the_same_reports_on_both_engines(day, services):
    embedded, influx = services
    vehicles = [f"VEHICLE_{n:03d}" for n in range(1, FLEET.pairs + 1)]
    statuses = set()
    for vehicle_id in vehicles:
        want = get(embedded, f"/v1/analytics/performance/{vehicle_id}", **period(day))
        assert_same(get(influx, f"/v1/analytics/performance/{vehicle_id}", **period(day)), want, vehicle_id)
        statuses.add(want["status"])
        assert_same(get(influx, f"/v1/analytics/efficiency/{vehicle_id}", **period(day)),
                    get(embedded, f"/v1/analytics/efficiency/{vehicle_id}", **period(day)), f"series {vehicle_id}")
    assert {"ok", "low"} <= statuses
    assert_same(get(influx, "/v1/analytics/fleet/summary", worst="50", **period(day)),
                get(embedded, "/v1/analytics/fleet/summary", worst="50", **period(day)), "fleet")
    want_alerts = get(embedded, "/v1/analytics/alerts", state="recent", hours="96")
    assert want_alerts["alerts"], "the day has alerts to list"
    assert_same(get(influx, "/v1/analytics/alerts", state="recent", hours="96"), want_alerts, "alerts")
